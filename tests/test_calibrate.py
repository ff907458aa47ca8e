"""Calibration on tiny backbones: pooling against brute force, padding, sharding on Ray, cache, faults."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from gapinit_ray.backbones import load_backbone
from gapinit_ray.calibrate import CalibrationError, PooledShard, calibrate, hook_points
from gapinit_ray.calibration_job import run_calibration, shard_sizes
from gapinit_ray.errors import DataError
from gapinit_ray.gap import SpotSettings, reduce_shards
from gapinit_ray.sharding import ShardFailed, WorkerOptions, run_on_ray
from gapinit_ray.spec import spec_from_dict

from .conftest import QUICKSTART, synthetic_pairs


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return synthetic_pairs(tmp_path_factory.mktemp("shapes"), num_images=40, seed=1)


@pytest.fixture(scope="module", params=["tiny-blip2", "tiny-qwen2-vl", "tiny-gemma3"])
def backbone(request):
    return load_backbone(request.param, seed=0)


def brute_force_pool(bb, pairs, module_name: str):
    """Independent reference: capture the module's full output one sample at a time, pool by loops."""
    module = bb.model.get_submodule(module_name)
    zv, zt = [], []
    for _, image, caption in pairs:
        batch = bb.build_batch([image], [caption])
        seen: dict = {}

        def hook(_m, _i, o, seen=seen):
            seen["o"] = o[0] if isinstance(o, tuple) else o

        h = module.register_forward_hook(hook)
        with torch.no_grad():
            bb.model(**batch.inputs)
        h.remove()
        out = seen["o"].reshape(1, batch.image_mask.shape[1], -1)[0].double()  # OPT fc1/fc2 are (B·L, d)
        img_pos = [p for p in range(out.shape[0]) if batch.image_mask[0, p]]
        cap_pos = [p for p in range(out.shape[0]) if batch.caption_mask[0, p]]
        zv.append(sum(out[p] for p in img_pos) / len(img_pos))
        zt.append(sum(out[p] for p in cap_pos) / len(cap_pos))
    return torch.stack(zv).float(), torch.stack(zt).float()


def test_pooled_gap_equals_brute_force(backbone, shapes) -> None:
    pairs = shapes[:6]
    targets = list(backbone.default_target_modules[:2])
    shard = calibrate(backbone, pairs, targets, batch_size=4, passes="joint")
    names = list(hook_points(backbone, targets))
    layer0 = f"{backbone.lm_layers_path}.0"
    assert layer0 in names  # residual stream of layer 0
    assert any(n.endswith(targets[0]) for n in names)
    for name in (layer0, next(n for n in names if n.endswith(targets[1]))):
        zv, zt = brute_force_pool(backbone, pairs, name)
        torch.testing.assert_close(shard.z_v[name], zv, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(shard.z_t[name], zt, rtol=1e-4, atol=1e-5)


def test_residual_stream_matches_output_hidden_states(shapes) -> None:
    bb = load_backbone("tiny-blip2", seed=0)
    pairs = shapes[:3]
    shard = calibrate(bb, pairs, ["q_proj"], batch_size=3, passes="joint")
    batch = bb.build_batch([p[1] for p in pairs], [p[2] for p in pairs])
    with torch.no_grad():
        hs = bb.model(**batch.inputs, output_hidden_states=True).language_model_outputs.hidden_states
    # hidden_states[l + 1] is the output of decoder layer l (the last one gets the final norm, skip it)
    h = hs[1]
    m = batch.caption_mask.unsqueeze(-1).float()
    ref = (h * m).sum(1) / m.sum(1)
    torch.testing.assert_close(shard.z_t[f"{bb.lm_layers_path}.0"], ref, rtol=1e-4, atol=1e-5)


def test_padding_never_leaks_into_the_pools(shapes) -> None:
    bb = load_backbone("tiny-blip2", seed=0)
    short = shapes[0]
    long = (shapes[1][0], shapes[1][1], shapes[1][2] + " and a lot of extra words to force padding " * 3)
    for passes in ("separate", "joint"):
        alone = calibrate(bb, [short], ["fc1"], batch_size=1, passes=passes)
        padded = calibrate(bb, [short, long], ["fc1"], batch_size=2, passes=passes)
        for name in alone.z_v:
            torch.testing.assert_close(padded.z_v[name][0], alone.z_v[name][0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(padded.z_t[name][0], alone.z_t[name][0], rtol=1e-4, atol=1e-5)


#: each family's text-only template, written out by hand: (before the caption, after it)
TEXT_ONLY = {
    "tiny-blip2": ("<s>", "</s>"),
    "tiny-qwen2-vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<|im_end|>",
    ),
    "tiny-gemma3": ("<bos><start_of_turn>user\n<end_of_turn>\n<start_of_turn>model\n", "<end_of_turn>"),
}


def _hidden_states(bb, run) -> list[torch.Tensor]:
    """Each LM decoder layer's output (the hidden state h^(l)) of one forward, captured by own hooks."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(
            lambda _m, _i, o, j=j: seen.__setitem__(j, o[0] if isinstance(o, tuple) else o)
        )
        for j, layer in enumerate(bb.lm_layers())
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return [seen[j][0].double() for j in range(len(seen))]


def test_separate_passes_equal_hand_run_image_only_and_text_only_forwards(backbone, shapes) -> None:
    """Paper §4.2 / Alg. 1 lines 5-6: z_v from the image alone, z_t from the caption alone. Each
    sample is run by hand, alone (no batching, no padding): the image in the family's template without
    any text, and the caption in a text-only template typed out here, through the LM with no image."""
    bb = backbone
    pairs = shapes[:5]
    shard = calibrate(bb, pairs, list(bb.default_target_modules[:1]), batch_size=3, prompt="")
    tok = bb.tokenizer
    head, tail = TEXT_ONLY[bb.name]
    lm = bb.model.language_model if bb.name == "tiny-blip2" else bb.model
    for i, (_, image, caption) in enumerate(pairs):
        # image-only: the image placeholders' positions of a pass with no caption
        batch = bb.build_image_batch([image])
        ids = batch.inputs["input_ids"][0]
        assert not batch.caption_mask.any() and (ids == bb.image_token_id).sum() > 0
        hs = _hidden_states(bb, lambda batch=batch: bb.model(**batch.inputs))
        img = (ids == bb.image_token_id).nonzero().flatten()
        # text-only: the caption, no image token anywhere
        cap = bb.caption_token_ids(caption, "")
        text = (
            tok(head, add_special_tokens=False).input_ids
            + cap
            + tok(tail, add_special_tokens=False).input_ids
        )
        text_ids = torch.tensor([text])
        assert bb.image_token_id not in text
        ht = _hidden_states(bb, lambda text_ids=text_ids: lm(input_ids=text_ids))
        start = len(tok(head, add_special_tokens=False).input_ids)
        for j in range(bb.num_lm_layers):
            name = f"{bb.lm_layers_path}.{j}"
            torch.testing.assert_close(shard.z_v[name][i].double(), hs[j][img].mean(0), rtol=1e-4, atol=1e-5)
            want = ht[j][start : start + len(cap)].mean(0)
            torch.testing.assert_close(shard.z_t[name][i].double(), want, rtol=1e-4, atol=1e-5)


def test_separate_text_pass_never_sees_the_image_and_joint_does(shapes) -> None:
    bb = load_backbone("tiny-blip2", seed=0)
    pairs = shapes[:4]
    swapped = [(sid, pairs[(i + 1) % 4][1], cap) for i, (sid, _, cap) in enumerate(pairs)]
    sep, sep_swapped = (calibrate(bb, p, ["q_proj"], passes="separate") for p in (pairs, swapped))
    joint, joint_swapped = (calibrate(bb, p, ["q_proj"], passes="joint") for p in (pairs, swapped))
    layer = f"{bb.lm_layers_path}.1"
    torch.testing.assert_close(sep.z_t[layer], sep_swapped.z_t[layer])  # captions alone: images irrelevant
    assert not torch.allclose(joint.z_t[layer], joint_swapped.z_t[layer])  # captions attend to the image
    torch.testing.assert_close(sep.z_v[layer][1:], sep_swapped.z_v[layer][:3])  # z_v follows the image


def test_bad_inputs_are_named(shapes) -> None:
    bb = load_backbone("tiny-blip2", seed=0)
    with pytest.raises(CalibrationError, match=r"q_projj.*match nothing.*q_proj"):
        calibrate(bb, shapes[:2], ["q_projj"])
    with pytest.raises(CalibrationError, match="every shard was empty"):
        PooledShard.concat([PooledShard([], {}, {})])
    layer = bb.lm_layers()[1]
    with torch.no_grad():
        layer.fc1.weight[0, 0] = float("nan")
    with pytest.raises(CalibrationError, match=rf"non-finite.*layers\.1\.fc1.*{shapes[0][0]}"):
        calibrate(bb, shapes[:2], ["fc1"])


def test_shard_sizes() -> None:
    assert shard_sizes(10, 3) == [4, 3, 3]
    assert shard_sizes(2, 5) == [1, 1]
    assert sum(shard_sizes(257, 8)) == 257


# ------------------------------------------------------------------------------------------ on Ray


def quick_spec(tmp_path, **over) -> object:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["storage"] = str(tmp_path / "store")
    raw["data"]["sources"]["shapes"]["num_images"] = 64
    raw["calibration"].update({"num_samples": 23, "batch_size": 4, "spot": {"k": 3}})
    raw["calibration"].update(over)
    return spec_from_dict(raw)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_sharded_on_ray_equals_single_process(ray_local, tmp_path, workers) -> None:
    spec = quick_spec(tmp_path, workers=workers)
    single, _ = run_calibration(spec, spec.backbones[0], use_ray=False, progress=False)
    import shutil

    shutil.rmtree(tmp_path / "store" / "_cache" / "gaps")
    sharded, hit = run_calibration(spec, spec.backbones[0], use_ray=True, progress=False, cpus_per_worker=0.5)
    assert not hit and sharded.key == single.key
    assert sharded.meta["timings"]["shards"] == min(23, workers * 2)  # uneven shards (23 samples)
    assert sharded.meta["sample_ids"] == single.meta["sample_ids"]
    for name, g in single.gaps.items():
        torch.testing.assert_close(sharded.gaps[name].mean_gap, g.mean_gap, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sharded.gaps[name].spot_gap, g.spot_gap, rtol=1e-4, atol=1e-5)
        assert sharded.gaps[name].stats["spot_score"] == pytest.approx(g.stats["spot_score"], rel=1e-4)


def test_cache_hit_does_no_forward_pass(tmp_path, monkeypatch) -> None:
    spec = quick_spec(tmp_path)
    first, hit = run_calibration(spec, spec.backbones[0], use_ray=False, progress=False)
    assert not hit

    def forbidden(*a, **k):
        raise AssertionError("a forward pass ran on a cache hit")

    monkeypatch.setattr("gapinit_ray.calibration_job.calibrate", forbidden)
    monkeypatch.setattr("gapinit_ray.calibration_job.load_backbone_for", forbidden)
    second, hit = run_calibration(spec, spec.backbones[0], use_ray=False, progress=False)
    assert hit and second.key == first.key
    for name in first.gaps:
        torch.testing.assert_close(second.vector(name), first.vector(name))
    # other settings -> another key
    other = quick_spec(tmp_path, seed=7)
    monkeypatch.undo()
    third, hit = run_calibration(other, other.backbones[0], use_ray=False, progress=False)
    assert not hit and third.key != first.key
    assert third.meta["sample_ids"] != first.meta["sample_ids"]


def test_fewer_pairs_than_num_samples_is_an_error(tmp_path) -> None:
    spec = quick_spec(tmp_path, num_samples=500)
    with pytest.raises(DataError, match="only"):
        run_calibration(spec, spec.backbones[0], use_ray=False, progress=False)


# --------------------------------------------------------------------------- faults (real processes)


def _state(tag: str) -> dict:
    return {"tag": tag}


def _slow_shard(state, payload):
    marker, i = payload
    if i == 1 and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        time.sleep(60)  # killed by the test while here
    return (i, os.getpid())


def _always_dies(state, payload):
    if payload == 2:
        os._exit(1)
    return payload


@pytest.mark.slow
def test_killed_worker_is_replaced_and_its_shard_retried(ray_local, tmp_path) -> None:
    marker = str(tmp_path / "pid")
    opts = WorkerOptions(num_workers=2, num_cpus=0.5, max_attempts=2)
    results, killed = {}, None
    for i, res in run_on_ray(_state, _slow_shard, [(marker, i) for i in range(4)], opts, {"tag": "x"}):
        results[i] = res
        if killed is None:  # shard 1 is running (and sleeping) on the other worker: kill it by pid
            deadline = time.time() + 60
            while not (os.path.exists(marker) and Path(marker).read_text()) and time.time() < deadline:
                time.sleep(0.05)
            killed = int(Path(marker).read_text())
            os.kill(killed, 9)
    assert sorted(results) == [0, 1, 2, 3]
    assert results[1][1] != killed  # shard 1 finished on a replacement worker


@pytest.mark.slow
def test_shard_failing_twice_names_its_items(ray_local) -> None:
    opts = WorkerOptions(num_workers=2, num_cpus=0.5, max_attempts=2)
    with pytest.raises(ShardFailed, match=r"samples s2a, s2b.*failed 2 times"):
        list(
            run_on_ray(
                _state,
                _always_dies,
                [0, 1, 2, 3],
                opts,
                {"tag": "x"},
                describe=lambda i: f"samples s{i}a, s{i}b",
            )
        )


def test_reduction_uses_sample_order_not_arrival_order(shapes) -> None:
    bb = load_backbone("tiny-blip2", seed=0)
    a = calibrate(bb, shapes[:3], ["fc2"], batch_size=2)
    b = calibrate(bb, shapes[3:7], ["fc2"], batch_size=2)
    ab = reduce_shards([a, b], SpotSettings(k=2), bb.lm_layers_path)
    whole = reduce_shards(
        [calibrate(bb, shapes[:7], ["fc2"], batch_size=7)], SpotSettings(k=2), bb.lm_layers_path
    )
    for name in whole:
        torch.testing.assert_close(ab[name].mean_gap, whole[name].mean_gap, rtol=1e-4, atol=1e-5)
