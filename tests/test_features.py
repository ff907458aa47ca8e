"""Frozen-prefix feature cache: exact features for every family, content-keyed incremental builds,
the automatic switch-off, and a real trial on Ray Train + DeepSpeed that trains identically with and
without the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gapinit_ray.backbones import load_backbone
from gapinit_ray.features import (
    FeatureCache,
    FeatureCacheError,
    FeatureCollate,
    build_feature_cache,
    cache_plan,
)
from gapinit_ray.plan import trial_spec
from gapinit_ray.train import CaptionPairs, Collate
from gapinit_ray.trial import build_trainer, prepare_backbone

from .test_train import EpochLog
from .test_train import tiny_spec as _trial_spec


def tiny_spec(tmp_path, **train_over):
    """test_train's one-trial spec on the tiny preset as built (no pretraining: these tests compare
    two paths through the same weights, they do not need a model worth adapting)."""
    spec = _trial_spec(tmp_path, **train_over)
    spec.backbones[0].pretrain = False
    return spec


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize("name", ["tiny-blip2", "tiny-qwen2-vl", "tiny-gemma3"])
def test_cached_features_give_the_same_logits_as_the_vision_prefix(name) -> None:
    bb = load_backbone(name)
    images, captions = _images(3), ["a red square", "two blue circles here", "x"]
    raw = bb.build_batch(images, captions, with_labels=True)
    feats, extras = bb.image_features(images)
    cached = bb.build_feature_batch(feats, extras, captions, with_labels=True)
    assert torch.equal(raw.inputs["input_ids"], cached.inputs["input_ids"])
    assert torch.equal(raw.labels, cached.labels) and torch.equal(raw.image_mask, cached.image_mask)
    assert "pixel_values" not in cached.inputs and [int(f.shape[0]) for f in feats] == [
        int(m.sum()) for m in raw.image_mask
    ]
    with torch.no_grad():
        a = bb.model(**bb.forward_inputs(raw)).logits
        b = bb.model(**bb.forward_inputs(cached)).logits
    assert torch.equal(a, b)


def test_frozen_prefix_stays_in_eval_mode_whatever_train_does() -> None:
    bb = load_backbone("tiny-blip2")
    bb.model.requires_grad_(False)
    assert bb.pin_frozen_prefix_eval() == ["vision_model", "qformer", "language_projection"]
    bb.model.train()
    assert not bb.model.qformer.training and not any(m.training for m in bb.model.vision_model.modules())
    assert bb.model.language_model.training  # the LM (where LoRA sits) still trains
    # a module with a trainable parameter is never pinned
    bb2 = load_backbone("tiny-blip2")
    bb2.model.requires_grad_(False)
    bb2.model.vision_model.encoder.layers[1].mlp.fc1.weight.requires_grad_(True)
    assert "vision_model" not in bb2.pin_frozen_prefix_eval()


def test_build_is_incremental_and_keyed_by_image_content(tmp_path) -> None:
    spec = tiny_spec(tmp_path)
    tspec, bspec = trial_spec(spec, {"init": "gap", "seed": 1})
    path = prepare_backbone(tspec, bspec, progress=False)
    from gapinit_ray.data.resolve import split_records

    records = split_records(tspec.data, tspec.data.train, tspec.storage)[:12]
    first = build_feature_cache(
        tspec.storage, bspec, records, backbone_path=path, use_ray=False, batch_size=5
    )
    # synthetic scenes can repeat pixel for pixel: the cache holds each distinct image once
    distinct = len({Image.open(r.image_path).convert("RGB").tobytes() for r in records})
    assert distinct >= 10
    assert (first.images, first.computed) == (distinct, distinct)
    again = build_feature_cache(tspec.storage, bspec, records, backbone_path=path, use_ray=False)
    assert (again.root, again.computed) == (first.root, 0)

    bb = load_backbone(bspec.name, path=path)
    cache = FeatureCache(first.root)
    want, _ = bb.image_features([Image.open(r.image_path).convert("RGB") for r in records[:3]])
    coll = FeatureCollate(bb, cache, None)
    for r, w in zip(records[:3], want, strict=True):
        got, extras = cache.get(coll.digests.of(r.image_path))
        assert torch.allclose(got, w, atol=1e-6) and extras == {}

    # an edited image gets a new digest: only it is recomputed
    img = Image.open(records[0].image_path).convert("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    img.save(records[0].image_path)
    changed = build_feature_cache(tspec.storage, bspec, records, backbone_path=path, use_ray=False)
    assert changed.computed == 1 and len(FeatureCache(first.root)) == distinct + 1

    # a sample missing from the cache is computed by the collate itself, identically
    items = CaptionPairs(split_records(tspec.data, tspec.data.train, tspec.storage)[10:16]).items[:6]
    cache = FeatureCache(first.root)
    coll = FeatureCollate(bb, cache, None)
    uncached = sum(coll.digests.of(it[1]) not in cache for it in items)
    batch = coll(items)
    assert uncached > 0 and (coll.hits, coll.misses) == (len(items) - uncached, uncached)
    raw = Collate(bb, None)(items)
    with torch.no_grad():
        assert torch.allclose(
            bb.model(**bb.forward_inputs(raw)).logits, bb.model(**bb.forward_inputs(batch)).logits, atol=1e-5
        )


def test_corrupt_shard_is_named(tmp_path) -> None:
    (tmp_path / "shard-bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FeatureCacheError, match=r"shard-bad\.safetensors.*delete it") as e:
        FeatureCache(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"lora": {"adapt_vision": True}}, "lora.adapt_vision"),
        ({"train": {"augment": ["hflip"]}}, "train.augment"),
        ({"train": {"feature_cache": False}}, "train.feature_cache is false"),
    ],
)
def test_cache_switches_itself_off(tmp_path, change, why) -> None:
    spec = tiny_spec(tmp_path)
    assert cache_plan(spec) == (True, "")
    raw = spec.model_dump(mode="json")
    for section, values in change.items():
        raw[section].update(values)
    from gapinit_ray.spec import spec_from_dict

    off = spec_from_dict(raw)
    use, reason = cache_plan(off)
    assert not use and why in reason
    # a trial of that spec never gets a cache dir, even one the sweep built for the others
    trainer = build_trainer(off, {"init": "gap", "seed": 1}, progress=False, feature_cache="/some/cache")
    assert trainer.train_loop_config["ctx"].feature_cache is None


@pytest.mark.slow
def test_trial_trains_identically_with_and_without_the_cache(ray_local, tmp_path) -> None:
    """The same seed on Ray Train + DeepSpeed: the same losses at every report, cache on or off."""
    runs = {}
    for on in (True, False):
        spec = tiny_spec(tmp_path / str(on), epochs=2, feature_cache=on)
        spec.calibration.workers = 2  # the cache is built by 2 Ray actors, like calibration
        log = EpochLog(str(tmp_path / f"reports-{on}.jsonl"))
        trainer = build_trainer(spec, {"init": "gap", "seed": 3}, progress=False, callbacks=[log.callback])
        result = trainer.fit()
        assert result.error is None
        runs[on] = log.reports()
    checks = json.loads(runs[True][0]["init_checks"])  # the epoch-0 report carries the init checks
    assert checks["feature_cache"] and json.loads(runs[False][0]["init_checks"])["feature_cache"] is None
    assert checks["frozen_eval_modules"] == ["vision_model", "qformer", "language_projection"]
    assert [r["epoch"] for r in runs[True]] == [r["epoch"] for r in runs[False]] == [0, 1, 2]
    for a, b in zip(runs[True], runs[False], strict=True):
        assert a.get("train_loss", 0) == pytest.approx(b.get("train_loss", 0), rel=1e-5, abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
