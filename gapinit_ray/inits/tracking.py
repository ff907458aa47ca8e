"""The adapters' geometry during training: alignment of B[:, 0] with the gap, and the A / B norms."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch

from gapinit_ray.errors import GapinitError
from gapinit_ray.gap import GapArtifact
from gapinit_ray.inits.adapters import cosine, lora_modules, lora_weights
from gapinit_ray.inits.gap import gap_vector


def reference_gaps(
    backbone: Any, lora: Any, artifact: GapArtifact | None, peft_model: Any
) -> dict[str, torch.Tensor]:
    """The reference gap g ``(d_out,)`` of every adapted LM module that has one in ``artifact``: the same
    un-noised g as :attr:`InitReport.alignment` uses (``init_options`` gap source and space). Modules
    without a usable gap (vision tower, a residual-space dim mismatch) are left out; no artifact ⇒ ``{}``.

    Call before the DeepSpeed engine is built: under ZeRO-3 the shapes are partitioned afterwards."""
    if artifact is None:
        return {}
    out = {}
    for name, layer in lora_modules(peft_model).items():
        if not name.startswith(backbone.lm_layers_path + "."):
            continue
        try:
            g = gap_vector(artifact, backbone, name, lora_weights(layer)[1].shape[0], lora.init_options)
        except GapinitError:
            continue
        out[name] = g.detach().double().cpu()
    return out


def _gathered(params: list[torch.Tensor]):
    """ZeRO-3 partitions parameters across ranks: gather them for reading (a collective, so every rank
    must enter it). A no-op for ordinary parameters (ZeRO 0-2, no DeepSpeed)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return nullcontext()


def adapter_stats(peft_model: Any, gaps: dict[str, torch.Tensor]) -> dict[str, float]:
    """The adapters' geometry now, for every report (cheap: one d_out dot product per module).

    ``align_cos_mean`` / ``_min`` / ``_max``: cos(B[:, 0], g) (signed) over the modules of ``gaps``
    (:func:`reference_gaps`) whose B[:, 0] ≠ 0 (NaN when none: peft's default B = 0 before the first
    step, or no artifact); ``lora_A_norm`` / ``lora_B_norm``: mean Frobenius norm ‖A‖_F, ‖B‖_F over all
    adapters. Tracks whether the first B column stays on the gap axis (Gap-Init), drifts towards it
    (random inits) or not at all (the random-direction control). Under ZeRO-3 every rank must call it."""
    adapted = lora_modules(peft_model)
    params = [p for layer in adapted.values() for p in lora_weights(layer)]
    cos: list[float] = []
    norm_a: list[float] = []
    norm_b: list[float] = []
    with torch.no_grad(), _gathered(params):
        for name, layer in adapted.items():
            a, b = lora_weights(layer)
            norm_a.append(float(a.detach().double().norm()))
            norm_b.append(float(b.detach().double().norm()))
            b0 = b[:, 0]
            if name in gaps and b0.any():
                cos.append(cosine(b0, gaps[name]))
    nan = math.nan
    return {
        "align_cos_mean": sum(cos) / len(cos) if cos else nan,
        "align_cos_min": min(cos) if cos else nan,
        "align_cos_max": max(cos) if cos else nan,
        "lora_A_norm": sum(norm_a) / len(norm_a) if norm_a else nan,
        "lora_B_norm": sum(norm_b) / len(norm_b) if norm_b else nan,
    }
