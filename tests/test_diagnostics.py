"""Orthogonality diagnostics: Prop. 3.1, Fig. 5 (App. A) and Fig. 2 (§3.1) checked numerically."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from gapinit_ray.diagnostics import expected_abs_cos, fig2, fig5, prop31, run_diagnostics

# std of d·E[cos²] estimated from N draws is ≈ √(2/N): 20000 draws → 0.01, so the ±5 % check is 5σ.
PROP_DRAWS = 20000
DIMS = (64, 128, 256, 512, 1024, 2048, 4096)


def gap_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Gap vectors of moderate norm: ‖g‖ ≈ √d (per-coordinate scale 1, like the noise), so the noisy
    cos ≈ 1/√(1 + ε²) is far from both 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(3):
        for kind, d in [("q_proj", 256), ("fc1", 1024), ("out_proj", 4096)]:
            out[f"lm.layers.{layer}.{kind}"] = torch.randn(d, generator=g) + 0.5
    return out


@pytest.fixture(scope="module")
def p2560() -> dict:
    return prop31(2560, PROP_DRAWS, seed=0)


def test_prop31_second_moment_at_2560(p2560: dict) -> None:
    assert 0.95 <= p2560["d_mean_sq"] <= 1.05
    assert p2560["d_mean_sq_stderr"] == pytest.approx(math.sqrt(2 / PROP_DRAWS), rel=0.1)
    assert p2560["expected_mean_sq"] == 1 / 2560


def test_prop31_mean_is_zero(p2560: dict) -> None:
    # std of the mean of ⟨u,b⟩ over N draws is 1/√(dN) ≈ 1.4e-4
    assert abs(p2560["mean"]) < 5 * p2560["mean_stderr"]
    assert p2560["mean_abs"] == pytest.approx(expected_abs_cos(2560), rel=0.02)


def test_prop31_tail_bound_holds_on_the_grid(p2560: dict) -> None:
    assert len(p2560["tails"]) == 5
    for t in p2560["tails"]:
        assert t["empirical"] <= t["bound"], t
        assert t["holds"]
        assert t["bound"] == pytest.approx(2 * math.exp(-(2560 - 1) * t["eps"] ** 2 / 2))
    assert p2560["bound_holds"]
    # the bound is informative (< 1) on part of the default grid, so the check is not vacuous
    assert any(t["bound"] < 0.05 for t in p2560["tails"])


def test_prop31_explicit_eps_grid_and_small_d() -> None:
    r = prop31(64, 5000, seed=3, eps_grid=[0.1, 0.3, 0.5])
    assert [t["eps"] for t in r["tails"]] == [0.1, 0.3, 0.5]
    assert r["bound_holds"]
    assert 0.9 <= r["d_mean_sq"] <= 1.1


def test_fig5_slopes() -> None:
    r = fig5(DIMS, draws=10000, seed=0)
    assert abs(r["slope_random"] + 0.5) < 0.05
    assert abs(r["slope_gap_aligned"]) < 0.05
    for row in r["rows"]:
        assert row["random"] == pytest.approx(row["random_predicted"], rel=0.05)
        # gap-aligned is just below 1 (estimation noise), as predicted by ‖g‖/√(‖g‖² + 2σ²d/n)
        assert 0.95 < row["gap_aligned"] < 1.0
        assert row["gap_aligned"] == pytest.approx(row["gap_aligned_predicted"], abs=0.01)


def test_fig5_noisy_estimate_bends_the_gap_curve() -> None:
    # a large σ makes ĝ_est noisy in proportion to √d: the docstring's caveat, seen numerically
    r = fig5((64, 4096), draws=200, seed=0, sigma=1.0, n_samples=16)
    assert r["slope_gap_aligned"] < -0.2


def test_fig2_gap_init_is_aligned_and_random_is_not() -> None:
    gaps = gap_dict()
    r = fig2(gaps, seed=0)
    assert r["noise_eps"] == [0.0, 0.2, 0.6, 1.0]
    assert [row["module"] for row in r["rows"]] == list(gaps)
    for row in r["rows"]:
        assert row["cos_gap"][0] >= 1 - 1e-6
        assert abs(row["cos_random"]) < 6 / math.sqrt(row["d"])
    big = [row for row in r["rows"] if row["d"] == 4096]
    for row in big:
        assert row["mean_abs_cos_random"] == pytest.approx(math.sqrt(2 / (math.pi * 4096)), rel=0.2)
    assert r["mean_cos_gap"][0] >= 1 - 1e-6


def test_fig2_noise_lowers_alignment_monotonically() -> None:
    r = fig2(gap_dict(), seed=1)
    means = r["mean_cos_gap"]
    assert all(a > b for a, b in pairwise(means))
    for row in r["rows"]:
        assert all(a >= b for a, b in pairwise(row["cos_gap"]))
        for c, pred in zip(row["cos_gap"], row["cos_gap_predicted"], strict=True):
            assert c == pytest.approx(pred, abs=0.1)


def test_fig2_histogram_fractions_sum_to_one() -> None:
    r = fig2(gap_dict(), seed=0, random_draws=64)
    assert sum(r["hist"]["random"]) == pytest.approx(1.0)
    for h in r["hist"]["gap"]:
        assert sum(h) == pytest.approx(1.0)


def test_fig2_accepts_low_precision_vectors() -> None:
    r = fig2({"m": torch.ones(512, dtype=torch.bfloat16)}, seed=0)
    assert r["rows"][0]["cos_gap"][0] >= 1 - 1e-6


@pytest.mark.parametrize(
    "gaps",
    [
        {},
        {"m": torch.zeros(16)},
        {"m": torch.ones(4, 4)},
        {"m": torch.ones(8, dtype=torch.int64)},
        {"m": torch.tensor([1.0, float("nan")])},
        {"m": [1.0, 2.0]},
    ],
)
def test_fig2_rejects_bad_gaps(gaps: dict) -> None:
    with pytest.raises(ValueError):
        fig2(gaps, seed=0)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError):
        prop31(1, 100, seed=0)
    with pytest.raises(ValueError):
        prop31(64, 0, seed=0)
    with pytest.raises(ValueError):
        prop31(64, 100, seed=-1)
    with pytest.raises(ValueError):
        prop31(64, 100, seed=0, eps_grid=[0.0])
    with pytest.raises(ValueError):
        fig5((64,), draws=10, seed=0)
    with pytest.raises(ValueError):
        fig5((64, 128), draws=10, seed=0, gap_norm=0.0)
    with pytest.raises(ValueError):
        fig2({"m": torch.ones(8)}, seed=0, noise_eps=(-0.1,))


def test_run_diagnostics_writes_files(tmp_path: Path) -> None:
    out = tmp_path / "diag"
    lines = run_diagnostics(str(out), gaps=gap_dict(), seed=0, draws=2000, dims=(64, 256, 1024))
    for name in ("diagnostics.png", "diagnostics.md", "diagnostics.json"):
        assert (out / name).is_file(), name
    assert (out / "diagnostics.png").read_bytes().startswith(b"\x89PNG")
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    data = json.loads((out / "diagnostics.json").read_text())
    assert {p["d"] for p in data["prop31"]} == {64, 512, 2560, 4096}
    assert data["fig5"]["dims"] == [64, 256, 1024]
    assert len(data["fig2"]["rows"]) == 9
    md = (out / "diagnostics.md").read_text()
    assert "Proposition 3.1" in md and "Figure 5" in md and "Figure 2" in md
    assert any(s.startswith("Prop. 3.1 at d=2560: d·E[cos²] = ") for s in lines)
    assert any(s.startswith("Fig. 5 slope: random ") for s in lines)
    assert any(s.startswith("Fig. 2 over 9 modules") for s in lines)
    assert data["summary"] == lines[: len(data["summary"])]


def test_run_diagnostics_without_gaps_has_no_fig2(tmp_path: Path) -> None:
    lines = run_diagnostics(str(tmp_path), seed=0, draws=500, dims=(64, 128), prop_dims=(64,))
    data = json.loads((tmp_path / "diagnostics.json").read_text())
    assert data["fig2"] is None
    assert not any(s.startswith("Fig. 2") for s in lines)
    assert lines[0].startswith("Prop. 3.1 at d=64")


def test_run_diagnostics_rejects_a_file_as_out_dir(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(ValueError):
        run_diagnostics(str(f), draws=100, dims=(64, 128), prop_dims=(64,))


def test_same_seed_same_numbers() -> None:
    assert prop31(512, 3000, seed=7) == prop31(512, 3000, seed=7)
    assert fig5((64, 256), draws=500, seed=7) == fig5((64, 256), draws=500, seed=7)
    assert fig2(gap_dict(), seed=7) == fig2(gap_dict(), seed=7)
    assert prop31(512, 3000, seed=7)["mean"] != prop31(512, 3000, seed=8)["mean"]
    # each d has its own stream: asking for other dims does not change a d's numbers
    a = fig5((64, 256), draws=500, seed=7)["rows"][1]
    b = fig5((256, 1024), draws=500, seed=7)["rows"][0]
    assert a == b


def test_run_diagnostics_is_deterministic(tmp_path: Path) -> None:
    kw = {"gaps": gap_dict(), "seed": 3, "draws": 500, "dims": (64, 128), "prop_dims": (64, 256)}
    run_diagnostics(str(tmp_path / "a"), **kw)
    run_diagnostics(str(tmp_path / "b"), **kw)
    a = json.loads((tmp_path / "a" / "diagnostics.json").read_text())
    b = json.loads((tmp_path / "b" / "diagnostics.json").read_text())
    assert a == b
