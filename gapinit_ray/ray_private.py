"""Every use of a private Ray API, in one place, each for want of a public one (Ray 2.60).

A Ray upgrade checks this module first: each function names what it reaches into and why.
"""

from __future__ import annotations


def set_cluster_switch(enabled: bool) -> bool:
    """Set Ray's parsed single-machine switch (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``) and
    return its previous value.

    Ray 2.60 reads the environment switch ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import, into
    this constant; an embedded Ray started after ``ray`` was imported only sees a change of the
    variable through it. No public API sets the address Ray's servers listen on for a local node."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = enabled
    return saved


def lean_torch_trainer():
    """A ``TorchTrainer`` subclass that starts no Ray Data dataset-manager actor for a run without
    datasets.

    Ray Train 2.60 starts one per run whatever the run reads (``DatasetsCallback``, added by the private
    ``_create_default_callbacks``; no public switch); trials read their own files, so it would be a
    process (and its start-up) per Train run -- per rung segment with seed groups -- for nothing."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return LeanTorchTrainer
