"""The gap g each adapted module's B[:, 0] is aligned with (paper §4.2-4.3), taken from a GapArtifact."""

from __future__ import annotations

from typing import Any

import torch

from gapinit_ray.calibrate import layer_index
from gapinit_ray.gap import ArtifactMismatch, GapArtifact
from gapinit_ray.inits.registry import LoraInitError


def gap_space(backbone: Any, name: str, d_out: int, opts: Any) -> str:
    """Which gap module ``name`` gets under ``init_options.space``: ``"layer"`` (its decoder layer's
    hidden-state gap, the paper's g^(ℓ), §4.2 / Alg. 1 line 16) or ``"module"`` (the gap at its own
    output).

    ``space="layer"`` (the paper's recipe, the default): the layer's gap where the module's output lives
    in the hidden space (d_out = d_model: q, k, v, o, fc2 on OPT); elsewhere (OPT's fc1, d_out = ffn dim;
    grouped-query k/v on Qwen2-VL / Gemma 3) the paper does not say, and the module's own output gap is
    used. ``space="module"``: every module its own output gap (an ablation). ``space="residual"``: the
    layer gap only, refusing modules whose d_out differs (no fallback)."""
    if opts.space == "module":
        return "module"
    hidden = backbone.lm_hidden_size
    if d_out == hidden:
        return "layer"
    if opts.space == "residual":
        raise LoraInitError(
            f"init_options.space='residual': module {name} has d_out={d_out} but the layer's hidden state "
            f"has d={hidden}; use space='layer' (the layer gap where dims match, the module's own gap "
            "elsewhere) or 'module', or target only modules that write the hidden space"
        )
    return "module"


def gap_vector(artifact: GapArtifact, backbone: Any, name: str, d_out: int, opts: Any) -> torch.Tensor:
    """The gap g ``(d_out,)`` that B[:, 0] of module ``name`` is aligned with (see :func:`gap_space`)."""
    if gap_space(backbone, name, d_out, opts) == "layer":
        layer = layer_index(name, backbone.lm_layers_path)
        name = f"{backbone.lm_layers_path}.{layer}"
        if name not in artifact.gaps:
            raise ArtifactMismatch(
                f"GapArtifact {artifact.key} has no hidden-state gap of layer {layer} ({name}); "
                "calibrate with calibration.residual_stream: true, or use init_options.space: module"
            )
    g = artifact.vector(name, opts.gap_source)
    if g.numel() != d_out:
        raise ArtifactMismatch(
            f"GapArtifact {artifact.key}: gap of {name} has d={g.numel()}, module d_out={d_out}"
        )
    if not torch.isfinite(g).all() or float(g.norm()) == 0.0:
        raise ArtifactMismatch(
            f"GapArtifact {artifact.key}: gap of {name} is zero or non-finite; recalibrate"
        )
    return g


def check_artifact(artifact: GapArtifact, backbone: Any, leaves: list[str]) -> None:
    """Refuse an artifact of another backbone, or one whose hooked modules miss a LoRA target leaf."""
    if "backbone" in artifact.meta:
        artifact.check_compatible(backbone=backbone.source_id)
    have = artifact.meta.get("target_modules")
    if have is not None:
        missing = [leaf for leaf in leaves if leaf not in have]
        if missing:
            raise ArtifactMismatch(
                f"GapArtifact {artifact.key} was computed for target_modules={list(have)!r}, but this trial "
                f"adapts {', '.join(missing)} too; recalibrate with those modules"
            )
