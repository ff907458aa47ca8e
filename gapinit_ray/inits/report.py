"""The init report: what :func:`~gapinit_ray.inits.apply.apply_lora` built, and the adapter it saves."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gapinit_ray.errors import GapinitError
from gapinit_ray.inits.adapters import lora_weights
from gapinit_ray.inits.gap import gap_space
from gapinit_ray.inits.targets import vision_layers

REPORT_FILE = "gapinit_init_report.json"


@dataclass
class InitReport:
    """What :func:`apply_lora` built, JSON-ready via :meth:`to_dict`.

    ``alignment[module]`` = cos(B[:, 0], g) (paper Fig. 2) against the module's reference gap (the
    un-noised g of ``init_options``); ``None`` where B[:, 0] = 0 (peft's random/gaussian/DoRA init: the
    cosine is undefined), where no gap exists (vision tower) or no artifact was given.
    """

    method: str
    seed: int
    rank: int
    alpha: float
    dropout: float
    init_options: dict[str, Any]
    selection: str
    top_k: int
    layers: list[int]
    vision_layers: list[int]
    modules: list[str]
    trainable_params: int
    alignment: dict[str, float | None]
    alignment_summary: dict[str, float | None]
    alignment_note: str
    # per adapted LM module: which gap its B[:, 0] is (or would be) aligned with, "layer" or "module"
    gap_spaces: dict[str, str]
    norm_A: float
    norm_B: float
    notes: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    # base-rewriting inits (PiSSA, OLoRA, CorDA, LoRA-GA): max |W_res + s·B₀A₀ − W₀| over the LM
    # modules (0 up to rounding: the output is unchanged) and max |W₀| for its tolerance; None otherwise
    base_reconstruction_error: float | None = None
    base_max_abs: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_report(backbone, lora, method, seed, layers, vis_names, peft_model, adapted, alignment, artifact):
    opts = lora.init_options
    notes: list[str] = []
    gap_spaces = {}
    for name, layer in adapted.items():
        if name.startswith(backbone.lm_layers_path + "."):
            with contextlib.suppress(GapinitError):
                gap_spaces[name] = gap_space(backbone, name, lora_weights(layer)[1].shape[0], opts)
    fallback = sorted(n for n, sp in gap_spaces.items() if sp == "module")
    if opts.space == "layer" and fallback:
        kinds = sorted({n.rsplit(".", 1)[-1] for n in fallback})
        notes.append(
            f"space 'layer': {', '.join(kinds)} ({len(fallback)} module(s)) write outside the hidden space "
            "(d_out != d_model); they got their own output gap (see gap_spaces)"
        )
    if lora.layers.top_k > backbone.num_lm_layers:
        notes.append(f"top_k {lora.layers.top_k} > {backbone.num_lm_layers} LM layers: every layer adapted")
    if vis_names:
        notes.append("vision modules keep peft's default init (B = 0): the gap is defined in the LM only")
    if method.direction != "gap" and opts.noise_eps > 0:
        notes.append(f"init_options.noise_eps ignored: it perturbs the gap, and init is {method.name!r}")
    if method.direction is None and opts.norm is not None:
        notes.append(f"init_options.norm ignored: {method.name!r} keeps peft's init scale")
    if method.name in ("pissa", "olora"):
        notes.append(f"{method.name} rewrote W₀ as W₀ − B₀A₀; from_pretrained on a fresh base recomputes it")
    elif method.mutates_base:
        notes.append(
            f"{method.name} rewrote W₀ as W₀ − s·B₀A₀ from calibration statistics: a fresh base cannot "
            "recompute it, so use `gapinit export` (converts to a plain LoRA adapter, as peft documents)"
        )
    extra = {
        "mica": "MiCA: B is frozen (peft's MiCA variant), only A trains",
        "orthogonal": "orthogonal: A and B both non-zero, so ΔW ≠ 0 at step 0 (max_abs_logit_diff records it)",
        "eva": f"EVA: A from the caption-token input PCA of D_cal, eva_rho={opts.eva_rho}",
        "corda": f"CorDA ({opts.corda_method}) from D_cal's input covariance",
        "lora_ga": (
            f"LoRA-GA ({opts.loraga_direction}, {opts.loraga_scale}) from the caption-loss gradient over "
            "D_cal (not the train split's first batches), model in eval mode"
        ),
    }.get(method.name)
    if extra:
        notes.append(extra)
    values = [v for v in alignment.values() if v is not None]
    if values:
        summary = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
        note = f"cos(B[:,0], g) over {len(values)} module(s), g = {opts.gap_source} gap, {opts.space} space"
    else:
        summary = {"mean": None, "min": None, "max": None}
        note = (
            "no GapArtifact given: alignment not computed"
            if artifact is None
            else "B = 0 at init (peft default): cos(B[:,0], g) is undefined, recorded as None"
        )
    sq_a = sum(float(lora_weights(m)[0].detach().double().pow(2).sum()) for m in adapted.values())
    sq_b = sum(float(lora_weights(m)[1].detach().double().pow(2).sum()) for m in adapted.values())
    return InitReport(
        method=method.name,
        seed=seed,
        rank=lora.rank,
        alpha=float(lora.effective_alpha),
        dropout=lora.dropout,
        init_options=opts.model_dump(),
        selection=lora.layers.selection,
        top_k=lora.layers.top_k,
        layers=layers,
        vision_layers=vision_layers(backbone)[1] if lora.adapt_vision else [],
        modules=list(alignment),
        trainable_params=sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        alignment=alignment,
        alignment_summary=summary,
        alignment_note=note,
        gap_spaces=gap_spaces,
        norm_A=math.sqrt(sq_a),
        norm_B=math.sqrt(sq_b),
        notes=notes,
    )


def save_adapter(peft_model: Any, path: str | Path, report: InitReport | None = None) -> Path:
    """peft's ``save_pretrained`` into ``path`` (+ the init report as JSON when given).

    ``PeftModel.from_pretrained(fresh_base, path)`` reloads it on a fresh base of the same weights; for
    PiSSA/OLoRA peft re-runs the (deterministic) SVD/QR of the fresh W₀ there, so the residual matches.
    """
    path = Path(path)
    peft_model.save_pretrained(str(path))
    if report is not None:
        (path / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n")
    return path
