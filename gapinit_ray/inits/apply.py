"""LoRA adapters on a backbone's LM layers, initialized by Gap-Init or one of its baselines.

Gap-Init (paper §4.3, Alg. 1) sets, for every adapted linear module W₀ ``(d_out, d_in)``::

    B[:, 0] = g / ‖g‖        B = lora_B.weight, (d_out, r)      g = the module's modality gap (d_out,)
    A       = 0              A = lora_A.weight, (r, d_in)

so ΔW = B·A = 0 (the model's output is unchanged, exactly) while ∂L/∂A = Bᵀ(∂L/∂h)xᵀ projects the
gradient onto the gap direction from the first step. The gap lives in the output space of that very
module (DESIGN.md: B's columns are d_out vectors), taken from a :class:`~gapinit_ray.gap.GapArtifact`.

Choices where the paper is silent (each documented again where it is made):

- **r > 1**: the other columns of B ~ N(0, c²/d_out) (kaiming-normal, fan = d_out, linear gain): expected
  norm c = ‖B[:, 0]‖, so the gap column gets no magnitude advantage, only its direction.
- **noise (App. E)**: g' = normalize(g + ε·η), η ~ N(0, I_d), on the *raw* g as written: the effect
  depends on ‖g‖ and d, E[cos(g', g)] ≈ ‖g‖ / sqrt(‖g‖² + ε²d) for large d.
- **seeding**: peft's draws run under ``torch.manual_seed(seed)`` (caller's RNG restored); ours use a CPU
  generator per (seed, module, purpose), independent of which other modules are adapted.
- **vision tower** (``adapt_vision``): the bottom ⌊n/2⌋ encoder layers are excluded (§4.4 safety), the
  upper half adapted where a target leaf matches, with peft's default init (no gap there: no caption
  tokens; B = 0 keeps ΔW = 0). Q-Former and projector are never adapted.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch

from gapinit_ray.errors import GapinitError
from gapinit_ray.gap import GapArtifact, layer_scores
from gapinit_ray.inits.adapters import (
    cosine,
    effective_weight,
    lora_modules,
    lora_weights,
    seeded,
    standard_strides,
)
from gapinit_ray.inits.direction import overwrite_direction
from gapinit_ray.inits.gap import check_artifact, gap_vector
from gapinit_ray.inits.registry import LoraInitError, get_init_method
from gapinit_ray.inits.report import InitReport, build_report
from gapinit_ray.inits.targets import resolve_targets, select_layers


def apply_lora(
    backbone: Any,
    lora: Any,
    artifact: GapArtifact | None,
    seed: int,
    stats: dict[str, torch.Tensor] | None = None,
) -> tuple[Any, InitReport]:
    """Freeze ``backbone.model``, wrap it with peft LoRA on the selected layers, initialize per ``lora.init``.

    peft injects the adapters into ``backbone.model`` in place (the returned ``PeftModel`` wraps it), so
    use a fresh backbone per trial; a backbone already carrying adapters is refused. Same ``seed`` ⇒
    bit-identical initial adapters. ``gap`` and ``random-direction`` start from peft's default init and
    overwrite each LM module: A = 0, B[:, 0] = c·u (u = g/‖g‖, optionally noised, or a random unit
    vector; c = 1, an explicit ``init_options.norm``, or ``"match-default"`` = ‖A‖_F of peft's default A
    for that module with this seed), B[:, 1:] ~ N(0, c²/d_out).

    Raises:
        LoraInitError: unknown method/selection, targets matching nothing, bad norm, residual-space dims.
        ArtifactMismatch: artifact of another backbone / target set, or missing an adapted module.
    """
    from peft import LoraConfig, get_peft_model

    from gapinit_ray.inits.data_driven import data_driven_peft, eva_apply, peft_extra_config

    method = get_init_method(lora.init)
    opts = lora.init_options
    if lora_modules(backbone.model):
        raise LoraInitError(
            f"backbone {backbone.name} already carries LoRA adapters (apply_lora wraps backbone.model in "
            "place); load a fresh backbone for each trial"
        )
    if method.direction == "gap" and artifact is None:
        raise LoraInitError("init 'gap' needs a GapArtifact (run calibration), or pick another lora.init")
    if method.name == "orthogonal" and lora.rank % 2:
        raise LoraInitError(f"lora.init 'orthogonal' needs an even lora.rank (peft's rule); got {lora.rank}")
    if method.stats is not None and lora.adapt_vision:
        raise LoraInitError(
            f"lora.init {method.name!r} reads calibration statistics of the LM's modules only; "
            "set lora.adapt_vision: false or pick another init"
        )
    norm = opts.norm
    if norm is not None and norm != "match-default" and not (math.isfinite(norm) and norm > 0):
        raise LoraInitError(f"init_options.norm must be > 0, 'match-default' or null (unit); got {norm!r}")
    sel = lora.layers
    scores = layer_scores(artifact.gaps) if artifact is not None and sel.selection == "gg-safe" else None
    layers = select_layers(backbone.num_lm_layers, sel.selection, sel.top_k, scores)
    leaves = list(dict.fromkeys(lora.target_modules or backbone.default_target_modules))
    lm_names, vis_names, lm_leaves = resolve_targets(backbone, leaves, layers, lora.adapt_vision)
    if artifact is not None:
        check_artifact(artifact, backbone, lm_leaves)
    # every reference gap is looked up before peft touches the model, so a bad artifact leaves it intact
    gaps: dict[str, torch.Tensor | None] = dict.fromkeys(lm_names)
    for name in lm_names if artifact is not None else []:
        try:
            gaps[name] = gap_vector(
                artifact, backbone, name, backbone.model.get_submodule(name).out_features, opts
            )
        except GapinitError:
            if method.direction == "gap":  # other methods only report alignment, where a gap exists
                raise

    if method.stats is not None:
        from gapinit_ray.init_stats import load_stats, require

        where = "given"
        if stats is None:
            if artifact is None or artifact.path is None:
                raise LoraInitError(
                    f"init {method.name!r} needs the calibration statistics cached with its GapArtifact "
                    "(run the sweep, or gapinit calibrate, which computes them), or pick another lora.init"
                )
            stats = load_stats(artifact.path, [method.stats])
            where = f"of {artifact.path}"
        require(stats, lm_names, "grad" if method.stats == "grads" else "xtx", where)

    backbone.model.requires_grad_(False)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.effective_alpha,
        lora_dropout=lora.dropout,
        target_modules=lm_names + vis_names,
        init_lora_weights=method.peft_init,
        use_dora=method.use_dora,
        bias="none",
        **peft_extra_config(method, opts),
    )
    w0 = (
        {n: backbone.model.get_submodule(n).weight.detach().clone() for n in lm_names}
        if method.mutates_base
        else {}
    )
    with seeded(seed, backbone.model), contextlib.ExitStack() as stack:
        if method.stats is not None:
            data_driven_peft(method, backbone, config, lm_names, stats, stack)
        with warnings.catch_warnings():  # EVA's weights are set from the cached statistics just below
            warnings.filterwarnings("ignore", message=".*eva initialization used with low_cpu_mem_usage")
            peft_model = get_peft_model(backbone.model, config)
        adapted = lora_modules(peft_model)
        if set(adapted) != set(lm_names + vis_names):  # our bug or a peft matching change, never user input
            raise RuntimeError(f"peft adapted {sorted(adapted)}, expected {lm_names + vis_names}")
        if method.name == "eva":
            eva_apply(peft_model, lm_names, stats, lora.rank, opts.eva_rho)
            adapted = lora_modules(peft_model)
            lm_names = [n for n in lm_names if n in adapted]  # rho > 1 may give a module rank 0

    alignment: dict[str, float | None] = {}
    with torch.no_grad():
        for layer in adapted.values():
            standard_strides(layer)
        for name in lm_names:
            a, b = lora_weights(adapted[name])
            if method.direction is not None:
                overwrite_direction(a, b, method.direction, gaps[name], opts, seed, name)
            b0 = b[:, 0]
            alignment[name] = None if gaps[name] is None or not b0.any() else cosine(b0, gaps[name])
        alignment.update(dict.fromkeys(vis_names))
    report = build_report(
        backbone, lora, method, seed, layers, vis_names, peft_model, adapted, alignment, artifact
    )
    if w0:  # W_res + s·B₀A₀ must give back W₀: the residual peft stored, checked in init_checks
        report.base_reconstruction_error = max(
            float((effective_weight(adapted[n]) - w.double()).abs().max()) for n, w in w0.items()
        )
        report.base_max_abs = max(float(w.abs().max()) for w in w0.values())
    return peft_model, report
