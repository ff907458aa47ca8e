"""Calibration forward passes (pure, Ray-free): pooled per-sample vision and caption vectors.

For a batch of (image, caption) pairs, forward passes of the frozen model with forward hooks on every
target module of every LM decoder layer, plus the decoder layer itself (its output is the hidden state
h^(ℓ), the residual stream after that layer). For each hooked module and each sample i the hook pools the
module's **output** (the space LoRA's B lives in: ``lora_B.weight`` is ``(d_out, r)``):

    z_v[i] = mean of the output over the sample's image-token positions    (paper §4.2, h_v)
    z_t[i] = mean of the output over the sample's caption-token positions  (h_t)

``passes="separate"`` (the paper's, §4.2 and Alg. 1 lines 5-6: z_v = h_v(x_img), z_t = h_t(x_txt)):
z_v from an image-only pass and z_t from a text-only pass, in which the caption never sees the image
(:meth:`~gapinit_ray.backbones.base.Backbone.build_image_batch` / ``build_text_batch`` say what each
family's passes hold). ``passes="joint"``: both from one image+caption pass, where the caption tokens
attend to the image (an option; the gaps differ, see the README).

Padding, BOS/EOS, prompt and image-delimiter tokens are in neither mask, so they never leak into the
pools. The per-sample gap is g_i = z_t[i] − z_v[i]; the reduction to a mean gap, SPOT-Gap and the
spectrum lives in :mod:`gapinit_ray.gap`, so the same code runs in one process or sharded on Ray.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from gapinit_ray.errors import GapinitError

RESIDUAL = "residual"
#: how z_v and z_t are taken: from separate image-only and text-only passes (the paper's), or one joint pass
PASSES = ("separate", "joint")


class CalibrationError(GapinitError):
    """Calibration could not produce valid gap statistics (bad activations, no matching module...)."""


@dataclass
class PooledShard:
    """Pooled vectors of one shard: ``z_v[name]`` and ``z_t[name]`` are ``(n, d_out)`` float32."""

    sample_ids: list[str]
    z_v: dict[str, torch.Tensor]
    z_t: dict[str, torch.Tensor]
    seconds: float = 0.0
    tokens: int = 0
    meta: dict = field(default_factory=dict)

    @staticmethod
    def concat(shards: Sequence[PooledShard]) -> PooledShard:
        """Concatenate shards in the given order (the driver orders them by shard index)."""
        shards = [s for s in shards if s.sample_ids]
        if not shards:
            raise CalibrationError("no calibration samples: every shard was empty")
        names = list(shards[0].z_v)
        return PooledShard(
            sample_ids=[i for s in shards for i in s.sample_ids],
            z_v={n: torch.cat([s.z_v[n] for s in shards]) for n in names},
            z_t={n: torch.cat([s.z_t[n] for s in shards]) for n in names},
            seconds=sum(s.seconds for s in shards),
            tokens=sum(s.tokens for s in shards),
        )


def hook_points(
    backbone, target_modules: Iterable[str], residual_stream: bool = True
) -> dict[str, torch.nn.Module]:
    """Modules to hook, by full dotted name in ``backbone.model`` (the names peft uses too).

    ``target_modules`` are leaf names (``q_proj``, ``fc1``) matched inside every LM decoder layer;
    the residual stream of layer ℓ is the decoder layer's own output, keyed ``<layers path>.<ℓ>``.
    """
    targets = list(dict.fromkeys(target_modules))
    prefix = backbone.lm_layers_path
    layer_re = re.compile(rf"^{re.escape(prefix)}\.(\d+)(?:\.(.+))?$")
    points: dict[str, torch.nn.Module] = {}
    found: set[str] = set()
    for name, module in backbone.model.named_modules():
        m = layer_re.match(name)
        if not m:
            continue
        if m.group(2) is None:
            if residual_stream:
                points[name] = module
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in targets and isinstance(module, torch.nn.Linear):
            points[name] = module
            found.add(leaf)
    missing = [t for t in targets if t not in found]
    if missing:
        leaves = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, mod in backbone.model.named_modules()
                if layer_re.match(n) and isinstance(mod, torch.nn.Linear)
            }
        )
        raise CalibrationError(
            f"target module(s) {', '.join(missing)} match nothing in the LM layers of {backbone.name} "
            f"({prefix}.*); its linear modules are: {', '.join(leaves)}"
        )
    return points


def layer_index(name: str, layers_path: str) -> int:
    """LM layer index of a hooked module name (``...layers.7.self_attn.q_proj`` -> 7)."""
    rest = name[len(layers_path) + 1 :]
    return int(rest.split(".", 1)[0])


def kind_of(name: str, layers_path: str) -> str:
    """Module kind (``self_attn.q_proj``) or ``residual`` for a decoder layer's own output."""
    rest = name[len(layers_path) + 1 :]
    return rest.split(".", 1)[1] if "." in rest else RESIDUAL


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, d) and bool (B, L) -> (B, d) float32 mean over the masked positions."""
    m = mask.to(hidden.device, torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.no_grad()
def pool_batch(
    backbone, batch, points: dict[str, torch.nn.Module], *, text_only: bool = False
) -> tuple[dict, dict]:
    """One forward pass with hooks; returns ``({name: z_v (B, d)}, {name: z_t (B, d)})`` on CPU (a pool
    over an empty mask is 0: an image-only batch has no caption positions, a text-only one no image
    positions). ``text_only``: a :meth:`build_text_batch` batch, run through ``backbone.text_forward``."""
    z_v: dict[str, torch.Tensor] = {}
    z_t: dict[str, torch.Tensor] = {}
    image_mask, caption_mask = batch.image_mask, batch.caption_mask

    def make_hook(name: str) -> Callable:
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.dim() == 2 and hidden.shape[0] == image_mask.numel():
                # OPT's fc1/fc2 run on the flattened (B·L, d) sequence
                hidden = hidden.view(*image_mask.shape, hidden.shape[-1])
            if hidden.shape[:2] != image_mask.shape:
                raise CalibrationError(
                    f"hooked module {name} produced shape {tuple(hidden.shape)}; expected (batch, "
                    f"sequence) = {tuple(image_mask.shape)} — is it inside the LM?"
                )
            z_v[name] = _masked_mean(hidden, image_mask).cpu()
            z_t[name] = _masked_mean(hidden, caption_mask).cpu()

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in points.items()]
    try:
        device = next(backbone.model.parameters()).device
        if text_only:
            backbone.text_forward(batch.to(device))
        else:
            inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.inputs.items()}
            backbone.model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return z_v, z_t


def calibrate(
    backbone,
    pairs: Sequence[tuple[str, object, str]],
    target_modules: Iterable[str],
    *,
    residual_stream: bool = True,
    batch_size: int = 16,
    prompt: str | None = None,
    progress: Callable[[int], None] | None = None,
    passes: str = "separate",
) -> PooledShard:
    """Pooled z_v / z_t for every (sample_id, PIL image, caption) in ``pairs``, in input order.

    No gradients, eval mode, batched. ``passes``: ``"separate"`` (image-only and text-only passes, the
    paper's) or ``"joint"`` (one image+caption pass). Raises :class:`CalibrationError` naming the sample
    ids when an activation is NaN/inf or a sample has no image or caption positions.
    """
    if passes not in PASSES:
        raise CalibrationError(f"calibration passes {passes!r}: use one of {', '.join(PASSES)}")
    backbone.model.eval()
    points = hook_points(backbone, target_modules, residual_stream)
    ids = [p[0] for p in pairs]
    chunks_v: dict[str, list[torch.Tensor]] = {n: [] for n in points}
    chunks_t: dict[str, list[torch.Tensor]] = {n: [] for n in points}
    tokens = 0
    start = time.perf_counter()
    for lo in range(0, len(pairs), batch_size):
        part = pairs[lo : lo + batch_size]
        images, captions = [p[1] for p in part], [p[2] for p in part]
        if passes == "joint":
            image_batch = text_batch = backbone.build_batch(images, captions, prompt=prompt)
        else:
            image_batch = backbone.build_image_batch(images)
            text_batch = backbone.build_text_batch(captions, prompt=prompt)
        empty = [
            part[i][0]
            for i in range(len(part))
            if not image_batch.image_mask[i].any() or not text_batch.caption_mask[i].any()
        ]
        if empty:
            raise CalibrationError(
                f"sample(s) {', '.join(empty)} have no image or no caption tokens after tokenization"
            )
        if passes == "joint":
            z_v, z_t = pool_batch(backbone, image_batch, points)
        else:
            z_v, _ = pool_batch(backbone, image_batch, points)
            _, z_t = pool_batch(backbone, text_batch, points, text_only=True)
        for name in sorted(points, key=list(z_v).index):  # execution order: name the first bad module
            bad = ~(torch.isfinite(z_v[name]).all(1) & torch.isfinite(z_t[name]).all(1))
            if bad.any():
                who = [part[i][0] for i in bad.nonzero().flatten().tolist()]
                raise CalibrationError(
                    f"non-finite (NaN/inf) activations at {name} for sample(s) {', '.join(who)}; "
                    "try dtype float32 or check the checkpoint"
                )
            chunks_v[name].append(z_v[name])
            chunks_t[name].append(z_t[name])
        tokens += int(image_batch.inputs["attention_mask"].sum())
        if text_batch is not image_batch:
            tokens += int(text_batch.inputs["attention_mask"].sum())
        if progress:
            progress(len(part))
    if not ids:
        return PooledShard([], {}, {}, 0.0, 0)
    return PooledShard(
        sample_ids=ids,
        z_v={n: torch.cat(c) for n, c in chunks_v.items()},
        z_t={n: torch.cat(c) for n, c in chunks_t.items()},
        seconds=time.perf_counter() - start,
        tokens=tokens,
    )
