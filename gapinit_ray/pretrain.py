"""A tiny backbone worth adapting: deterministic, cached "pretraining" of the tiny presets.

A randomly initialized tiny model has no pretrained geometry, so Gap-Init would have no modality gap to
find. This module fully fine-tunes a tiny preset (vision tower, projector and LM) on the synthetic
shapes set's ``pretrain`` variant, so that its LM has learned to caption images in one phrasing and
palette; sweeps then adapt it with LoRA to the ``downstream`` variant (new colours, shapes, phrasing).

The result is cached under ``<storage>/_cache/backbones/<preset>-<key>/`` (key: preset, seed, every
pretraining setting, this module's version), written atomically, built once per storage root even when
many processes ask at once (file lock), and loaded offline like any saved checkpoint.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# 2: a share of the pairs in the restyle phrasing (the LM knows both styles); 3: one thread (bit-identical
# weights whatever the calling process's thread settings)
PRETRAIN_VERSION = 3


@dataclass(frozen=True)
class PretrainSettings:
    num_images: int = 1024
    image_size: int = 32
    data_seed: int = 1000
    epochs: int = 16
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0
    # images captioned in the ``restyle`` phrasing, as a share of ``num_images``: the LM learns the
    # words and sentence forms of both styles (as a real LLM knows its language), while the images are
    # mostly captioned in the ``pretrain`` style, which greedy decoding then follows. Adapting to the
    # restyle set is then a change of style a rank-1 LoRA can make, not new vocabulary.
    restyle_share: float = 0.25


def _key(name: str, s: PretrainSettings) -> str:
    blob = json.dumps({"name": name, "version": PRETRAIN_VERSION, **asdict(s)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrained_dir(name: str, cache: Path, settings: PretrainSettings = PretrainSettings()) -> Path:
    return cache / "backbones" / f"{name}-{_key(name, settings)}"


def ensure_pretrained(
    name: str, cache: Path, settings: PretrainSettings = PretrainSettings(), progress: bool = True
) -> Path:
    """Path of the pretrained tiny preset ``name``; trains and saves it first if it is not cached."""
    final = pretrained_dir(name, cache, settings)
    if (final / "pretrain.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "pretrain.json").exists():  # another process built it while we waited
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        stats = pretrain(name, cache, settings, tmp, progress)
        (tmp / "pretrain.json").write_text(json.dumps({"name": name, **asdict(settings), **stats}, indent=1))
        tmp.rename(final)
    return final


def pretrain(name: str, cache: Path, s: PretrainSettings, out: Path, progress: bool = True) -> dict:
    """Full fine-tune of a tiny preset on the synthetic ``pretrain`` captions (and a share of
    ``restyle`` ones, see :class:`PretrainSettings`); saves it to ``out``.

    Runs on one CPU thread whatever the caller's settings, so the weights are bit-identical in every
    process on the same CPU architecture and library versions (a local driver, a Ray Jobs driver, a test):
    float sums split over threads round differently, and the cache key could not tell the results
    apart. Tiny models gain little from threads, so this costs little."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pretrain(name, cache, s, out, progress)
    finally:
        torch.set_num_threads(threads)


def _pretrain(name: str, cache: Path, s: PretrainSettings, out: Path, progress: bool) -> dict:
    from gapinit_ray.backbones import load_backbone
    from gapinit_ray.data import generate_synthetic, load_caption_set, load_image

    start = time.perf_counter()
    data_dir = cache / "data" / f"shapes-pretrain-s{s.data_seed}-n{s.num_images}-px{s.image_size}"
    dataset = generate_synthetic(
        str(data_dir), variant="pretrain", num_images=s.num_images, seed=s.data_seed, image_size=s.image_size
    )
    records = load_caption_set("karpathy", dataset, None, "train")
    n_restyle = round(s.num_images * s.restyle_share)
    if n_restyle:
        restyled = generate_synthetic(
            str(cache / "data" / f"shapes-restyle-s{s.data_seed}-n{n_restyle}-px{s.image_size}"),
            variant="restyle",
            num_images=n_restyle,
            seed=s.data_seed,
            image_size=s.image_size,
        )
        records += load_caption_set("karpathy", restyled, None, "train")
    images = {r.image_id: load_image(r) for r in records}
    pairs = [(r.image_id, c) for r in records for c in r.captions]

    backbone = load_backbone(name, seed=s.seed)
    model = backbone.model
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps_per_epoch = math.ceil(len(pairs) / s.batch_size)
    total = steps_per_epoch * s.epochs

    def lr_at(step: int) -> float:
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - s.warmup_steps) / max(1, total - s.warmup_steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(s.seed)
    torch.manual_seed(s.seed)
    step, last = 0, float("nan")
    for epoch in range(s.epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        running = []
        for lo in range(0, len(order), s.batch_size):
            chunk = [pairs[i] for i in order[lo : lo + s.batch_size]]
            batch = backbone.build_batch(
                [images[i] for i, _ in chunk], [c for _, c in chunk], with_labels=True
            )
            loss = caption_loss(model(**batch.inputs).logits, batch.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            running.append(float(loss.detach()))
        last = sum(running) / len(running)
        if progress:
            print(
                f"\rpretraining {name}: epoch {epoch + 1}/{s.epochs} loss {last:.3f}", end="", file=sys.stderr
            )
    if progress:
        print(file=sys.stderr)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    backbone.save(out)
    return {"final_loss": last, "steps": step, "seconds": time.perf_counter() - start}


def caption_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the labelled (caption + end) positions; logits ``(B, L, V)``."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )
