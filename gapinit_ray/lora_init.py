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
import hashlib
import json
import math
import re
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gapinit_ray.calibrate import layer_index
from gapinit_ray.errors import GapinitError
from gapinit_ray.gap import ArtifactMismatch, GapArtifact, layer_scores
from gapinit_ray.spec import InitOptions

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"
SELECTIONS = ("naive", "gg-safe", "all")
REPORT_FILE = "gapinit_init_report.json"


class LoraInitError(GapinitError):
    """Unknown init method / layer selection, bad init options, or targets that match nothing."""


class InitCheckError(GapinitError):
    """An init invariant (ΔW = 0, cos(B[:,0], g) = 1, non-zero A gradient) failed: a bug or a wrong artifact."""


@dataclass(frozen=True)
class InitMethod:
    """How one init method maps onto peft, and what we overwrite after peft's own init.

    ``direction``: ``"gap"`` / ``"random"`` = overwrite B[:, 0] with that unit direction and zero A;
    ``None`` = keep peft's init. ``mutates_base``: peft rewrites W₀ (PiSSA/OLoRA/CorDA/LoRA-GA store
    W₀ − s·B₀A₀). ``zero_delta``: the method promises ΔW = 0 at step 0 (A = 0 or B = 0), checked like
    Gap-Init's. ``stats``: the calibration statistic it reads (:mod:`gapinit_ray.init_stats`).
    """

    name: str
    peft_init: bool | str
    use_dora: bool = False
    direction: str | None = None
    mutates_base: bool = False
    summary: str = ""
    zero_delta: bool = False
    stats: str | None = None


INIT_METHODS: dict[str, InitMethod] = {
    m.name: m
    for m in (
        InitMethod("gap", True, direction="gap", summary="B[:,0] = g/‖g‖, A = 0 (paper Alg. 1)"),
        InitMethod("random", True, summary="peft default: A kaiming-uniform, B = 0"),
        InitMethod("gaussian", "gaussian", summary="peft: A ~ N(0, 1/r²), B = 0"),
        # exact SVD: deterministic, so PeftModel.from_pretrained recomputes the same residual W₀ − B₀A₀
        InitMethod("pissa", "pissa", mutates_base=True, summary="peft PiSSA: top-r SVD of W₀ (exact)"),
        InitMethod("olora", "olora", mutates_base=True, summary="peft OLoRA: QR of W₀"),
        InitMethod("dora", True, use_dora=True, summary="peft DoRA with the default LoRA init"),
        InitMethod("random-direction", True, direction="random", summary="control: B[:,0] random, A = 0"),
        # B frozen by peft's MiCA variant: only A trains
        InitMethod(
            "mica",
            "mica",
            zero_delta=True,
            summary="peft MiCA: B = r smallest left sing. vectors of W₀, A = 0",
        ),
        InitMethod("orthogonal", "orthogonal", summary="peft: A, B from one r×r orthogonal matrix (ΔW ≠ 0)"),
        InitMethod(
            "eva", "eva", zero_delta=True, stats="moments", summary="peft EVA: A = top PCs of inputs, B = 0"
        ),
        InitMethod(
            "corda",
            "corda",
            mutates_base=True,
            stats="moments",
            summary="peft CorDA: SVD of W₀·C (input cov.)",
        ),
        InitMethod(
            "lora_ga", "lora_ga", mutates_base=True, stats="grads", summary="peft LoRA-GA: SVD of ∂L/∂W₀"
        ),
    )
}


def get_init_method(name: str) -> InitMethod:
    """The registry entry of ``name``; an unknown name is an error listing the known ones."""
    try:
        return INIT_METHODS[name]
    except KeyError:
        raise LoraInitError(f"unknown init method {name!r}; known: {', '.join(INIT_METHODS)}") from None


# ------------------------------------------------------------------------------------ layer selection


def select_layers(
    num_layers: int, selection: str, top_k: int, scores: dict[int, float] | None = None
) -> list[int]:
    """LM layer indices to adapt, ascending.

    ``naive``: the top-k layers, i.e. the last k (paper G.5). ``gg-safe``: the k layers with the highest
    SPOT-Gap score S_gap (paper §4.4; ``scores`` from :func:`gapinit_ray.gap.layer_scores`), ties broken
    by the lower layer index. ``all``: every layer. ``top_k > num_layers`` means every layer (the tiny
    presets have 2 LM layers, the paper's default is top-6 of 32).
    """
    if selection not in SELECTIONS:
        raise LoraInitError(f"unknown layer selection {selection!r}; allowed: {', '.join(SELECTIONS)}")
    if num_layers < 1 or top_k < 1:
        raise LoraInitError(f"layer selection needs num_layers ≥ 1 and top_k ≥ 1 (got {num_layers}, {top_k})")
    k = min(top_k, num_layers)
    if selection == "all":
        return list(range(num_layers))
    if selection == "naive":
        return list(range(num_layers - k, num_layers))
    if scores is None:
        raise LoraInitError(
            "layer selection 'gg-safe' ranks layers by SPOT-Gap score and needs a GapArtifact "
            "(run calibration first), or use selection naive or all"
        )
    missing = [i for i in range(num_layers) if i not in scores]
    extra = sorted(i for i in scores if not 0 <= i < num_layers)
    bad = [i for i in range(num_layers) if i in scores and not math.isfinite(scores[i])]
    if missing or extra or bad:
        raise LoraInitError(
            f"gg-safe: layer scores must cover layers 0..{num_layers - 1} with finite values; missing "
            f"{missing}, out of range {extra}, non-finite {bad} (is the artifact from this backbone?)"
        )
    ranked = sorted(range(num_layers), key=lambda i: (-scores[i], i))
    return sorted(ranked[:k])


def vision_layers(backbone: Any) -> tuple[str, list[int]]:
    """The vision encoder's layer list and the layers ``adapt_vision`` may touch: the upper half.

    The encoder layers are the first ``ModuleList`` under the first vision prefix (the tower itself, never
    the Q-Former or projector). The bottom ⌊n/2⌋ are excluded, paper §4.4's safety constraint.
    """
    prefix = backbone.vision_module_prefixes[0] + "."
    for name, mod in backbone.model.named_modules():
        if name.startswith(prefix) and isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            return name, list(range(len(mod) // 2, len(mod)))
    raise LoraInitError(f"adapt_vision: found no vision encoder layers under {prefix}* in {backbone.name}")


def _match(
    model: torch.nn.Module, path: str, layers: list[int], leaves: list[str]
) -> tuple[list[str], list[str]]:
    """nn.Linear modules ``<path>.<i>.….<leaf>`` with i in ``layers`` and leaf in ``leaves`` (model
    order), and every linear leaf name under ``path`` (for error messages)."""
    pattern = re.compile(rf"^{re.escape(path)}\.(\d+)\.")
    names, seen = [], set()
    for name, mod in model.named_modules():
        m = pattern.match(name)
        if m and isinstance(mod, torch.nn.Linear):
            leaf = name.rsplit(".", 1)[-1]
            seen.add(leaf)
            if int(m.group(1)) in layers and leaf in leaves:
                names.append(name)
    return names, sorted(seen)


def resolve_targets(
    backbone: Any, leaves: list[str], layers: list[int], adapt_vision: bool
) -> tuple[list[str], list[str], list[str]]:
    """Full module names to adapt: ``(LM names, vision names, leaves found in the LM)``.

    Leaf names (``q_proj``, ``fc1``) are matched as calibration matches them (last name component,
    ``nn.Linear`` only), inside the selected LM layers, plus the upper vision layers with
    ``adapt_vision``. Returning exact full names (peft matches a list by equality) is what keeps the
    vision tower and Q-Former out: their ``fc1``/``fc2`` share names with OPT's.
    """
    lm, lm_avail = _match(backbone.model, backbone.lm_layers_path, layers, leaves)
    vis: list[str] = []
    if adapt_vision:
        path, vlayers = vision_layers(backbone)
        vis, vis_avail = _match(backbone.model, path, vlayers, leaves)
        if not vis:
            raise LoraInitError(
                f"adapt_vision: target modules {', '.join(leaves)} match nothing in the vision layers of "
                f"{backbone.name} ({path}); its linear modules are: {', '.join(vis_avail)}"
            )
    found = {n.rsplit(".", 1)[-1] for n in lm + vis}
    missing = [leaf for leaf in leaves if leaf not in found]
    if missing or not lm:
        raise LoraInitError(
            f"lora.target_modules {', '.join(missing or leaves)} match nothing in the selected LM layers of "
            f"{backbone.name} ({backbone.lm_layers_path}.*); its linear modules are: {', '.join(lm_avail)}"
        )
    return lm, vis, [leaf for leaf in leaves if any(n.endswith("." + leaf) for n in lm)]


# ------------------------------------------------------------------------------ direction helpers


def module_generator(seed: int, name: str, purpose: str) -> torch.Generator:
    """CPU generator for one (seed, module, purpose): stable across runs, processes and module sets."""
    digest = hashlib.sha256(f"{seed}|{name}|{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def perturb(g: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """Unit vector normalize(g + ε·η), η ~ N(0, I_d) (paper App. E), float64 ``(d,)``.

    The noise is added to the raw g, as App. E writes it, so its effect depends on ‖g‖ and d:
    E[cos(g', g)] ≈ ‖g‖ / sqrt(‖g‖² + ε²d) for large d. ``eps = 0`` draws nothing.
    """
    g = g.detach().double().cpu()
    if eps > 0:
        g = g + eps * torch.randn(g.shape, generator=generator, dtype=torch.float64)
    return g / g.norm()


def random_unit(d: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform random unit vector in R^d (float64): the random-direction control's B[:, 0]."""
    v = torch.randn(d, generator=generator, dtype=torch.float64)
    return v / v.norm()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float(a @ b / (a.norm() * b.norm()))


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


def _gap_vector(artifact: GapArtifact, backbone: Any, name: str, d_out: int, opts: Any) -> torch.Tensor:
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


# ------------------------------------------------------------------------------------------ report


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


def lora_modules(peft_model: torch.nn.Module) -> dict[str, Any]:
    """Base-model module name -> peft ``LoraLayer`` (peft prefixes names with ``base_model.model.``)."""
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix(PEFT_PREFIX): m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


def _weights(layer: Any) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """(A ``(r, d_in)``, B ``(d_out, r)``) of a LoraLayer."""
    return layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight


@contextmanager
def _seeded(seed: int, model: torch.nn.Module):
    """``torch.manual_seed(seed)`` for peft's draws, restoring the caller's CPU/CUDA RNG afterwards."""
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------------------------- apply


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

    from gapinit_ray.data_inits import data_driven_peft, eva_apply, peft_extra_config

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
            gaps[name] = _gap_vector(
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
    with _seeded(seed, backbone.model), contextlib.ExitStack() as stack:
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
            _standard_strides(layer)
        for name in lm_names:
            a, b = _weights(adapted[name])
            if method.direction is not None:
                _overwrite(a, b, method.direction, gaps[name], opts, seed, name)
            b0 = b[:, 0]
            alignment[name] = None if gaps[name] is None or not b0.any() else _cos(b0, gaps[name])
        alignment.update(dict.fromkeys(vis_names))
    report = _report(
        backbone, lora, method, seed, layers, vis_names, peft_model, adapted, alignment, artifact
    )
    if w0:  # W_res + s·B₀A₀ must give back W₀: the residual peft stored, checked in init_checks
        report.base_reconstruction_error = max(
            float((_effective_weight(adapted[n]) - w.double()).abs().max()) for n, w in w0.items()
        )
        report.base_max_abs = max(float(w.abs().max()) for w in w0.values())
    return peft_model, report


def _standard_strides(layer: Any) -> None:
    """Give A and B row-major strides. peft's MiCA slices B = U[:, -r:] from a column-major SVD factor:
    at r = 1 that (d_out, 1) view counts as contiguous but keeps stride (1, d_out), and DeepSpeed's
    parameter broadcast (``p.data.view(torch.uint8)``) refuses it."""
    for p in _weights(layer):
        if p.stride() != torch.empty(p.shape, device="meta").stride():
            p.data = torch.empty(p.shape, dtype=p.dtype, device=p.device).copy_(p.data)


def _effective_weight(layer: Any) -> torch.Tensor:
    """W_res + s·B·A ``(d_out, d_in)`` float64 of a (non-DoRA) LoraLayer: the weight its forward applies."""
    a, b = _weights(layer)
    s = layer.scaling[ADAPTER]
    return layer.base_layer.weight.detach().double() + s * (b.detach().double() @ a.detach().double())


def _overwrite(
    a: torch.Tensor, b: torch.Tensor, direction: str, g: torch.Tensor | None, opts: Any, seed: int, name: str
) -> None:
    """A = 0; B[:, 0] = c·u; B[:, 1:] ~ N(0, c²/d_out) (expected column norm c, like column 0)."""
    d_out, r = b.shape
    c = float(a.double().norm()) if opts.norm == "match-default" else float(opts.norm or 1.0)
    if direction == "gap":
        u = perturb(g, opts.noise_eps, module_generator(seed, name, "noise"))
    else:
        u = random_unit(d_out, module_generator(seed, name, "direction"))
    new_b = torch.empty(d_out, r, dtype=torch.float64)
    new_b[:, 0] = c * u
    if r > 1:
        gen = module_generator(seed, name, "columns")
        new_b[:, 1:] = torch.randn(d_out, r - 1, generator=gen, dtype=torch.float64) * (c / math.sqrt(d_out))
    b.copy_(new_b.to(device=b.device, dtype=b.dtype))
    a.zero_()


def _report(backbone, lora, method, seed, layers, vis_names, peft_model, adapted, alignment, artifact):
    opts = lora.init_options
    notes: list[str] = []
    gap_spaces = {}
    for name, layer in adapted.items():
        if name.startswith(backbone.lm_layers_path + "."):
            with contextlib.suppress(GapinitError):
                gap_spaces[name] = gap_space(backbone, name, _weights(layer)[1].shape[0], opts)
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
    sq_a = sum(float(_weights(m)[0].detach().double().pow(2).sum()) for m in adapted.values())
    sq_b = sum(float(_weights(m)[1].detach().double().pow(2).sum()) for m in adapted.values())
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


# ------------------------------------------------------------------------------------------ checks


def init_checks(
    backbone: Any, peft_model: Any, report: InitReport, batch: Any, artifact: GapArtifact | None
) -> dict[str, Any]:
    """Verify the init on a calibration ``batch`` (built with ``with_labels=True``); store in ``report.checks``.

    Run in eval mode (LoRA dropout off, so the checks are deterministic), gradients cleared afterwards:

    1. gap / random-direction: max |logits(peft) − logits(adapters disabled)| == 0 (A = 0 ⇒ ΔW = 0), and
       for gap without noise cos(B[:, 0], g) ≥ 1 − tol (tol 1e-6 for fp32 adapters, 1e-3 for half).
    2. every method: one backward of the caption LM loss; ‖∇A‖ and ‖∇B‖ over all adapters. Gap-Init must
       give A a non-zero gradient (∂L/∂A = Bᵀ(∂L/∂h)xᵀ) and B exactly zero (∂L/∂B ∝ A x = 0).

    Raises:
        InitCheckError: an enforced check failed (a bug, or an artifact that does not fit the model).
    """
    method = get_init_method(report.method)
    if batch.labels is None:
        raise LoraInitError("init_checks needs a labelled batch: build_batch(..., with_labels=True)")
    if method.direction == "gap" and artifact is None:
        raise LoraInitError("init_checks of a gap init needs the GapArtifact it was built from")
    adapted = lora_modules(peft_model)
    lm = [n for n in report.modules if n.startswith(backbone.lm_layers_path + ".")]
    failures: list[str] = []
    checks: dict[str, Any] = {"max_abs_logit_diff": None}  # None for PiSSA/OLoRA: adapters off ≠ W₀
    was_training = peft_model.training
    peft_model.eval()
    try:
        with torch.no_grad():
            if not method.mutates_base:
                out = peft_model(**backbone.forward_inputs(batch)).logits.float()
                with peft_model.disable_adapter():
                    diff = (out - peft_model(**backbone.forward_inputs(batch)).logits.float()).abs().max()
                checks["max_abs_logit_diff"] = float(diff)
        with torch.enable_grad():
            peft_model.zero_grad(set_to_none=True)
            loss = peft_model(**backbone.forward_inputs(batch), labels=batch.labels).loss
            loss.backward()
        grads = {}
        for name, layer in adapted.items():
            grads[name] = [0.0 if p.grad is None else float(p.grad.double().norm()) for p in _weights(layer)]
        peft_model.zero_grad(set_to_none=True)
    finally:
        peft_model.train(was_training)
    checks["loss"] = loss.item()
    checks["grad_norm_A"] = math.sqrt(sum(ga**2 for ga, _ in grads.values()))
    checks["grad_norm_B"] = math.sqrt(sum(gb**2 for _, gb in grads.values()))
    if not math.isfinite(checks["loss"]):
        failures.append(f"the caption loss is {checks['loss']}")
    promised = method.direction is not None or method.zero_delta  # A = 0 (gap, control, MiCA), B = 0 (EVA)
    if promised and checks["max_abs_logit_diff"] != 0.0:
        failures.append(f"ΔW ≠ 0: logits differ by {checks['max_abs_logit_diff']:.3g}")
    if report.base_reconstruction_error is not None:  # W_res + s·B₀A₀ = W₀ up to rounding
        err = report.base_reconstruction_error
        checks["max_abs_weight_error"] = err
        half = any(p.dtype in (torch.float16, torch.bfloat16) for p in peft_model.parameters())
        tol = (1e-2 if half else 1e-4) * max(1.0, report.base_max_abs or 0.0)
        if not err <= tol:
            failures.append(f"W_res + s·B₀A₀ differs from W₀ by {err:.3g} > {tol:.3g}")
    if method.direction is not None:  # gap / random-direction: A = 0 on every LM module
        checks["zero_A_grad_modules"] = [n for n in lm if grads[n][0] == 0.0]
        lm_ga = math.sqrt(sum(grads[n][0] ** 2 for n in lm))
        if not (lm_ga > 0 and math.isfinite(lm_ga)):
            failures.append(f"‖∇A‖ over the LM adapters is {lm_ga} (must be finite and > 0)")
        nonzero_b = [n for n in lm if grads[n][1] != 0.0]
        if nonzero_b:
            failures.append(f"∇B ≠ 0 with A = 0 at {nonzero_b[0]}")
    if method.direction == "gap" and report.init_options["noise_eps"] == 0.0:
        opts = InitOptions.model_validate(report.init_options)
        cos = {}
        for name in lm:
            b = _weights(adapted[name])[1]
            cos[name] = _cos(b[:, 0], _gap_vector(artifact, backbone, name, b.shape[0], opts))
        tol = 1e-6 if b.dtype in (torch.float32, torch.float64) else 1e-3
        worst = min(cos, key=cos.__getitem__)
        checks["min_alignment"] = cos[worst]
        if cos[worst] < 1 - tol:
            failures.append(f"cos(B[:,0], g) of {worst} is {cos[worst]:.8f} < 1 − {tol:g}")
    checks["passed"] = not failures
    report.checks = checks
    if failures:
        raise InitCheckError(f"init check failed for {method.name} on {backbone.name}: {'; '.join(failures)}")
    return checks


# ------------------------------------------------------------------------- tracking during training


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
            g = _gap_vector(artifact, backbone, name, _weights(layer)[1].shape[0], lora.init_options)
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
    params = [p for layer in adapted.values() for p in _weights(layer)]
    cos: list[float] = []
    norm_a: list[float] = []
    norm_b: list[float] = []
    with torch.no_grad(), _gathered(params):
        for name, layer in adapted.items():
            a, b = _weights(layer)
            norm_a.append(float(a.detach().double().norm()))
            norm_b.append(float(b.detach().double().norm()))
            b0 = b[:, 0]
            if name in gaps and b0.any():
                cos.append(_cos(b0, gaps[name]))
    nan = math.nan
    return {
        "align_cos_mean": sum(cos) / len(cos) if cos else nan,
        "align_cos_min": min(cos) if cos else nan,
        "align_cos_max": max(cos) if cos else nan,
        "lora_A_norm": sum(norm_a) / len(norm_a) if norm_a else nan,
        "lora_B_norm": sum(norm_b) / len(norm_b) if norm_b else nan,
    }


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
