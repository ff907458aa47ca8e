"""The central reduction on hand-made pooled vectors: sharding invariance, SPOT-Gap, spectrum, artifact I/O."""

from __future__ import annotations

import json

import pytest
import torch

from gapinit_ray.calibrate import PooledShard
from gapinit_ray.errors import GapinitError
from gapinit_ray.gap import (
    ArtifactMismatch,
    GapArtifact,
    SpotSettings,
    artifact_key,
    cone_stats,
    layer_scores,
    reduce_shards,
    spot_gap,
)

LP = "lm.layers"
NAMES = [f"{LP}.0", f"{LP}.0.self_attn.q_proj", f"{LP}.1", f"{LP}.1.fc1"]


def pooled(n: int = 23, d: int = 12, seed: int = 0) -> PooledShard:
    g = torch.Generator().manual_seed(seed)
    z_v, z_t = {}, {}
    for name in NAMES:
        dim = d * 2 if name.endswith("fc1") else d
        v = torch.randn(n, dim, generator=g)
        z_v[name] = v
        z_t[name] = v + 3.0 * torch.ones(dim) / dim**0.5 + 0.3 * torch.randn(n, dim, generator=g)
    return PooledShard([f"s{i}" for i in range(n)], z_v, z_t)


def split(p: PooledShard, sizes: list[int]) -> list[PooledShard]:
    out, lo = [], 0
    for s in sizes:
        sl = slice(lo, lo + s)
        out.append(
            PooledShard(
                p.sample_ids[sl], {k: v[sl] for k, v in p.z_v.items()}, {k: v[sl] for k, v in p.z_t.items()}
            )
        )
        lo += s
    return out


@pytest.mark.parametrize("sizes", [[23], [11, 12], [1, 20, 2], [0, 23], [7, 0, 16]])
def test_reduction_of_shards_equals_single_process(sizes: list[int]) -> None:
    p = pooled()
    spot = SpotSettings(k=4)
    ref = reduce_shards([p], spot, LP)
    got = reduce_shards(split(p, sizes), spot, LP)
    for name in NAMES:
        torch.testing.assert_close(got[name].mean_gap, ref[name].mean_gap)
        torch.testing.assert_close(got[name].spot_gap, ref[name].spot_gap)
        for k, v in ref[name].stats.items():
            assert got[name].stats[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


def test_mean_gap_and_layer_bookkeeping() -> None:
    p = pooled()
    red = reduce_shards([p], SpotSettings(), LP)
    for name in NAMES:
        brute = sum((p.z_t[name][i] - p.z_v[name][i]) for i in range(23)) / 23
        torch.testing.assert_close(red[name].mean_gap, brute, rtol=1e-5, atol=1e-6)
    assert red[f"{LP}.1.fc1"].layer == 1 and red[f"{LP}.1.fc1"].kind == "fc1"
    assert red[f"{LP}.0"].kind == "residual"
    scores = layer_scores(red)
    assert scores[0] == red[f"{LP}.0"].stats["spot_score"]


def test_spot_gap_matches_a_brute_force_reading_of_appendix_c() -> None:
    g = torch.Generator().manual_seed(3)
    n, d, k = 9, 5, 3
    z_v, z_t = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + 1.0
    s = SpotSettings(k=k, alpha_sem=0.7, alpha_geom=1.3)

    def dist(a, b):
        return float(((a - b) ** 2).sum().sqrt())

    def disp(z, i):
        ds = sorted(dist(z[i], z[j]) for j in range(n) if j != i)
        return sum(ds[:k]) / k

    gaps = z_t - z_v
    per = [0.7 * float(gaps[i].norm()) + 1.3 * abs(disp(z_t, i) - disp(z_v, i)) for i in range(n)]
    nbrs = [sorted(range(n), key=lambda j, i=i: (dist(gaps[i], gaps[j]), j))[:k] for i in range(n)]
    score = sum(sum(per[j] for j in nb) / k for nb in nbrs) / n
    smooth = sum(sum((gaps[j] for j in nb), torch.zeros(d)) / k for nb in nbrs) / n
    got = spot_gap(z_v, z_t, s)
    assert got["score"] == pytest.approx(score, rel=1e-6)
    torch.testing.assert_close(got["spot_gap"], smooth.float(), rtol=1e-5, atol=1e-6)
    # k=1: every sample is its own neighbourhood, so the smoothed gap is the plain mean gap
    torch.testing.assert_close(spot_gap(z_v, z_t, SpotSettings(k=1))["spot_gap"], gaps.mean(0))


def test_translation_dominated_gap_has_a_dominant_first_direction() -> None:
    p = pooled(n=64, d=32)
    red = reduce_shards([p], SpotSettings(), LP)
    st = red[f"{LP}.0"].stats
    assert st["first_share"] > 0.6 and st["first_dir_cos_gap"] > 0.95
    assert 0.5 < st["translation_share"] <= 1.0
    # with no translation the leading direction carries little of the energy
    g = torch.Generator().manual_seed(1)
    v = torch.randn(64, 32, generator=g)
    iso = reduce_shards(
        [
            PooledShard(
                [str(i) for i in range(64)], {f"{LP}.0": v}, {f"{LP}.0": v + torch.randn(64, 32, generator=g)}
            )
        ],
        SpotSettings(),
        LP,
    )
    assert iso[f"{LP}.0"].stats["first_share"] < 0.2


def test_cone_statistics_see_a_narrow_cone() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.zeros(16)
    mu[0] = 10.0
    narrow = mu + torch.randn(40, 16, generator=g)
    wide = torch.randn(40, 16, generator=g)
    c = cone_stats(narrow, wide)
    assert c["vision_pairwise_cos"] > 0.7 and abs(c["text_pairwise_cos"]) < 0.1
    assert c["vision_mean_dominance"] > 0.8 and c["text_mean_dominance"] < 0.2
    # the mean pairwise cosine equals the brute-force mean over the N x N cosine matrix's off-diagonal
    for z, key in ((narrow, "vision_pairwise_cos"), (wide, "text_pairwise_cos")):
        cos = torch.nn.functional.cosine_similarity(z[:, None, :].double(), z[None, :, :].double(), dim=-1)
        off = cos[~torch.eye(len(z), dtype=torch.bool)]
        assert abs(c[key] - float(off.mean())) < 1e-12


def test_artifact_round_trip_and_mismatch(tmp_path) -> None:
    red = reduce_shards([pooled()], SpotSettings(k=3), LP)
    meta = {"backbone": "tiny-blip2@seed0", "target_modules": ["q_proj", "fc1"], "sample_ids": ["s0"]}
    art = GapArtifact(artifact_key(meta), red, meta)
    path = art.save(tmp_path)
    back = GapArtifact.load(path)
    assert back.key == art.key
    for name in NAMES:
        torch.testing.assert_close(back.vector(name), art.vector(name))
        torch.testing.assert_close(back.vector(name, "spot"), art.vector(name, "spot"))
        assert back.gaps[name].stats == art.gaps[name].stats  # JSON round-trips floats exactly
    back.check_compatible(backbone="tiny-blip2@seed0")
    with pytest.raises(ArtifactMismatch, match=r"backbone=.tiny-blip2@seed0.*tiny-qwen2-vl"):
        back.check_compatible(backbone="tiny-qwen2-vl@seed0")
    with pytest.raises(ArtifactMismatch, match="no gap for module"):
        back.vector("lm.layers.9.q_proj")
    # saving again is a no-op (content-addressed)
    assert art.save(tmp_path) == path
    assert [p.name for p in tmp_path.iterdir()] == [art.key]


def test_corrupt_artifact_is_a_clear_error(tmp_path) -> None:
    red = reduce_shards([pooled()], SpotSettings(k=3), LP)
    path = GapArtifact("k1", red, {}).save(tmp_path)
    (path / "gaps.safetensors").write_bytes(b"garbage")
    with pytest.raises(GapinitError, match="corrupt"):
        GapArtifact.load(path)
    (path / "meta.json").unlink()
    with pytest.raises(GapinitError, match=r"missing meta\.json"):
        GapArtifact.load(path)


def test_artifact_key_is_a_content_hash() -> None:
    a = artifact_key({"x": 1, "y": [1, 2]})
    assert a == artifact_key({"y": [1, 2], "x": 1})
    assert a != artifact_key({"x": 2, "y": [1, 2]})
    json.dumps(a)
