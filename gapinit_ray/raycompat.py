"""Ray, where the code runs without it: the pure stages (calibration's shard function, the trial's worker
loop) also run in a plain process on a machine with no Ray installed (``benchmarks/gpu_check.py``)."""

from __future__ import annotations


def ray_initialized() -> bool:
    """``ray.is_initialized()``, or False when Ray is not installed."""
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()
