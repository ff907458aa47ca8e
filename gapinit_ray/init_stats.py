"""Calibration statistics of peft's data-driven LoRA inits (EVA, CorDA, LoRA-GA), computed once per sweep.

The data-driven inits need more than the gap: each needs a statistic of the layers' *inputs* or of the
loss gradient over a calibration set. They are computed over the GapArtifact's own D_cal (the same
pairs, prompt and hooked modules, so the artifact key covers them), sharded over the calibration
workers exactly as the gap is (:mod:`gapinit_ray.sharding`: one frozen backbone per worker, a lost
worker's shard retried), reduced by summation, and cached *inside* the artifact directory::

    <storage>/_cache/gaps/<key>/init_stats/moments.safetensors   EVA + CorDA (one forward pass)
    <storage>/_cache/gaps/<key>/init_stats/grads.safetensors     LoRA-GA (one forward + backward)

A later trial, or sweep, with the same artifact reuses them (no second pass). Per hooked LM module
(``nn.Linear`` W₀ ``(d_out, d_in)``), over the joint image+caption batches a trial trains on:

- ``<m>::xtx``, ``<m>::xsum``, ``<m>::n`` (EVA, arXiv 2410.07170): Σ x xᵀ ``(d_in, d_in)``, Σ x
  ``(d_in,)`` and the count over the **caption-token** inputs (peft's ``EvaConfig.use_label_mask=True``
  default: positions with a label). EVA's A = the top principal directions of these inputs: the
  eigenvectors of their covariance, what peft's incremental PCA converges to (exact here, no early stop).
- ``<m>::cov``, ``<m>::samples`` (CorDA, arXiv 2406.05223): Σ_i X_iᵀX_i / max(X_i)² over samples i,
  X_i = the module's inputs at every attended position of sample i: what peft's ``calib_cov_distribution``
  hook accumulates (it runs one sample per forward and scales by the sample's max entry, as written).
- ``<m>::grad``, ``<m>::batches`` (LoRA-GA, arXiv 2407.05000): Σ over batches of ∂L/∂W₀ ``(d_out, d_in)``
  of the caption loss, as peft's ``estimate_gradients`` accumulates it. Two documented deviations: the
  batches are D_cal's pairs, not the train split's first batches, and the model runs in eval mode
  (dropout off) so the cached statistic is deterministic whatever the sharding.

Cost (fp32): ``moments`` holds 2·d_in² + d_in floats per module (OPT-2.7B's fc2, d_in = 10240: 0.8 GB;
q/k/v share their input but are stored per module), one no-grad forward per pair; ``grads`` holds
d_out·d_in floats per module (a copy of the adapted weights) and one forward + backward per batch.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gapinit_ray.errors import GapinitError

STATS_DIR = "init_stats"
#: which statistic each data-driven init reads
KIND_OF_INIT = {"eva": "moments", "corda": "moments", "lora_ga": "grads"}
KINDS = ("moments", "grads")


class InitStatsError(GapinitError):
    """Init statistics missing, corrupt or not covering a module the trial adapts."""


def kinds_for(inits: Iterable[str]) -> list[str]:
    """The statistics kinds the given init methods need, in :data:`KINDS` order."""
    needed = {KIND_OF_INIT[i] for i in inits if i in KIND_OF_INIT}
    return [k for k in KINDS if k in needed]


# ------------------------------------------------------------------------- pure computation


def _linear_points(backbone, targets: Sequence[str]) -> dict[str, torch.nn.Module]:
    from gapinit_ray.calibrate import hook_points

    return hook_points(backbone, targets, residual_stream=False)


def compute_stats(
    backbone,
    pairs: Sequence[tuple[str, object, str]],
    targets: Sequence[str],
    kinds: Sequence[str],
    *,
    batch_size: int = 16,
    prompt: str | None = None,
) -> dict[str, torch.Tensor]:
    """Sums of the statistics ``kinds`` over ``pairs`` (sample id, PIL image, caption), one tensor per
    ``<module>::<stat>`` (float64 sums, so shards add up exactly as one process would, to rounding).

    Pure (no Ray): the shards of :func:`ensure_init_stats` call it, tests call it directly."""
    points = _linear_points(backbone, targets)
    want_m, want_g = "moments" in kinds, "grads" in kinds
    out: dict[str, torch.Tensor] = {}
    model = backbone.model
    was_training = model.training
    model.eval()
    grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    if want_g:
        model.requires_grad_(False)
        for m in points.values():
            m.weight.requires_grad_(True)
            m.weight.grad = None
    batches = 0
    try:
        for lo in range(0, len(pairs), batch_size):
            part = pairs[lo : lo + batch_size]
            batch = backbone.build_batch(
                [p[1] for p in part], [p[2] for p in part], prompt=prompt, with_labels=True
            )
            device = next(model.parameters()).device
            batch = batch.to(device)
            attn = batch.inputs["attention_mask"].bool()
            cap = batch.caption_mask.bool()
            handles = []
            if want_m:
                handles = [
                    m.register_forward_hook(_moment_hook(n, attn, cap, out)) for n, m in points.items()
                ]
            try:
                with torch.enable_grad() if want_g else torch.no_grad():
                    result = model(**backbone.forward_inputs(batch), labels=batch.labels if want_g else None)
                    if want_g:
                        result.loss.backward()
            finally:
                for h in handles:
                    h.remove()
            batches += 1
        if want_g:
            for n, m in points.items():
                out[f"{n}::grad"] = m.weight.grad.detach().double().cpu()
                out[f"{n}::batches"] = torch.tensor([float(batches)], dtype=torch.float64)
                m.weight.grad = None
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(grad_flags[n])
        model.train(was_training)
    return out


def _moment_hook(name: str, attn: torch.Tensor, cap: torch.Tensor, out: dict[str, torch.Tensor]):
    def hook(_module, inputs, _output):
        x = inputs[0].detach()
        if x.dim() == 2:  # OPT's fc1/fc2 run on the flattened (B·L, d) sequence
            x = x.view(*attn.shape, x.shape[-1])
        x = x.double()
        xc = x[cap]  # caption-token inputs (EVA)
        d = x.shape[-1]
        acc = {
            "xtx": xc.T @ xc,
            "xsum": xc.sum(0),
            "n": torch.tensor([float(xc.shape[0])], dtype=torch.float64),
            "cov": torch.zeros(d, d, dtype=torch.float64),
            "samples": torch.tensor([float(x.shape[0])], dtype=torch.float64),
        }
        for i in range(x.shape[0]):  # CorDA: per sample, scaled by its max entry (peft's hook)
            xi = x[i][attn[i]]
            acc["cov"] += xi.T @ xi / xi.max().abs().clamp_min(1e-12) ** 2
        for k, v in acc.items():
            key = f"{name}::{k}"
            out[key] = out[key] + v.cpu() if key in out else v.cpu()

    return hook


def reduce_stats(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Sum the shards' statistics (every statistic is a sum, counts included)."""
    total: dict[str, torch.Tensor] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total[k] + v if k in total else v.clone()
    return total


# ------------------------------------------------------------------------------- derived values


def eva_components(
    stats: dict[str, torch.Tensor], name: str, n_components: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(top principal directions ``(n_components, d_in)``, their explained-variance ratios) of the
    caption-token inputs of module ``name``: the eigenvectors of the (n−1)-normalized covariance, as
    ``IncrementalPCA.components_`` / ``explained_variance_ratio_`` (sign: largest entry positive)."""
    xtx, xsum, n = stats[f"{name}::xtx"], stats[f"{name}::xsum"], float(stats[f"{name}::n"][0])
    if n < 2:
        raise InitStatsError(f"EVA: module {name} saw {n:g} caption tokens in D_cal; need at least 2")
    mean = xsum / n
    cov = (xtx - n * torch.outer(mean, mean)) / (n - 1)
    evals, evecs = torch.linalg.eigh(cov)
    order = evals.argsort(descending=True)[:n_components]
    comps = evecs[:, order].T.contiguous()
    flip = comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()
    comps = comps * torch.where(flip == 0, torch.ones_like(flip), flip)
    ratio = evals[order].clamp_min(0) / evals.clamp_min(0).sum().clamp_min(1e-300)
    return comps.float(), ratio


def corda_covariance(stats: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """CorDA's covariance ``(d_in, d_in)`` of module ``name``: the per-sample sum / number of samples."""
    return (stats[f"{name}::cov"] / stats[f"{name}::samples"][0]).float()


def loraga_gradient(stats: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """LoRA-GA's mean gradient ``(d_out, d_in)`` of module ``name`` (sum over batches / batches)."""
    return (stats[f"{name}::grad"] / stats[f"{name}::batches"][0]).float()


def require(stats: dict[str, torch.Tensor], names: Iterable[str], stat: str, where: str) -> None:
    missing = [n for n in names if f"{n}::{stat}" not in stats]
    if missing:
        raise InitStatsError(
            f"init statistics {where} have no {stat!r} for {missing[0]} ({len(missing)} module(s) missing): "
            "they were computed for other target modules; recalibrate with the trial's lora.target_modules"
        )


# ------------------------------------------------------------------------------ cache (artifact dir)


def stats_path(artifact_dir: str | os.PathLike, kind: str) -> Path:
    return Path(artifact_dir) / STATS_DIR / f"{kind}.safetensors"


def load_stats(artifact_dir: str | os.PathLike, kinds: Sequence[str]) -> dict[str, torch.Tensor]:
    """The cached statistics ``kinds`` of an artifact; a missing or corrupt file is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for kind in kinds:
        path = stats_path(artifact_dir, kind)
        try:
            out.update(load_file(str(path)))
        except FileNotFoundError:
            raise InitStatsError(
                f"{path}: missing; the sweep computes it before the trials start (gapinit run / "
                "gapinit calibrate with a data-driven lora.init)"
            ) from None
        except (SafetensorError, OSError) as e:
            raise InitStatsError(f"{path} is corrupt ({type(e).__name__}); delete it and run again") from None
    return out


def _save(artifact_dir: Path, kind: str, stats: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    final = stats_path(artifact_dir, kind)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    save_file({k: v.contiguous() for k, v in stats.items()}, str(tmp))
    os.replace(tmp, final)  # same content by key: a concurrent writer's copy is as good
    return final


@dataclass
class StatsPayload:
    items: list[tuple[str, str, str]]  # (sample id, image path, caption)
    targets: list[str]
    kinds: list[str]
    batch_size: int
    prompt: str | None


def _run_stats_shard(backbone, payload: StatsPayload) -> dict[str, torch.Tensor]:
    from gapinit_ray.data import load_image

    pairs = [(sid, load_image(path, sid), cap) for sid, path, cap in payload.items]
    if not pairs:
        return {}
    return compute_stats(
        backbone, pairs, payload.targets, payload.kinds, batch_size=payload.batch_size, prompt=payload.prompt
    )


def ensure_init_stats(
    spec,
    bspec,
    backbone_path: str | None,
    artifact_dir: str | os.PathLike,
    inits: Iterable[str],
    *,
    use_ray: bool | None = None,
    progress: bool = True,
) -> tuple[list[str], list[str]]:
    """Compute the statistics the ``inits`` need for the artifact in ``artifact_dir``, unless cached.

    Returns ``(kinds computed now, kinds found cached)``. Runs on Ray actors when Ray is up (``use_ray``
    None), with the calibration's workers and batch size, else in this process."""
    from gapinit_ray.calibration_job import run_backbone_shards, shard_sizes
    from gapinit_ray.data.resolve import calibration_pairs
    from gapinit_ray.gap import GapArtifact
    from gapinit_ray.raycompat import ray_initialized

    kinds = kinds_for(inits)
    todo = [k for k in kinds if not stats_path(artifact_dir, k).exists()]
    cached = [k for k in kinds if k not in todo]
    if not todo:
        return [], cached
    artifact = GapArtifact.load(artifact_dir)
    started = time.perf_counter()
    cal = spec.calibration
    pairs = calibration_pairs(spec)
    items = [(str(r.image_id), r.image_path, cap) for r, cap in pairs]
    targets = list(artifact.meta.get("target_modules") or [])
    prompt = artifact.meta.get("prompt", spec.train.prompt)
    use_ray = ray_initialized() if use_ray is None else use_ray
    n_workers = cal.workers if use_ray else 1
    payloads, lo = [], 0
    for s in shard_sizes(len(items), n_workers):
        payloads.append(StatsPayload(items[lo : lo + s], targets, todo, cal.batch_size, prompt))
        lo += s
    stream = run_backbone_shards(
        bspec,
        backbone_path,
        _run_stats_shard,
        payloads,
        use_ray=use_ray,
        num_workers=n_workers,
        num_cpus=spec.resources.cpus_per_worker,
        num_gpus=spec.resources.gpus_per_worker,
        describe=lambda i: f"init-statistics shard {i}",
    )
    total = reduce_stats([part for _, part in stream])
    for kind in todo:
        keys = ("grad", "batches") if kind == "grads" else ("xtx", "xsum", "n", "cov", "samples")
        _save(Path(artifact_dir), kind, {k: v for k, v in total.items() if k.rsplit("::", 1)[1] in keys})
    if progress:
        print(
            f"init statistics {', '.join(todo)} for {bspec.key} over {len(items)} D_cal pairs in "
            f"{time.perf_counter() - started:.1f}s (cached in {Path(artifact_dir) / STATS_DIR})",
            file=sys.stderr,
        )
    return todo, cached
