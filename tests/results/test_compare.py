"""Honest comparisons: statistics checked against scipy on hand-made data, bootstrap coverage and
determinism, verdicts, the CLI on a real Parquet store, the report section, and the seed pairing the
paired statistics rely on (same seed ⇒ same batch order whatever the init)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from gapinit_ray.errors import GapinitError
from gapinit_ray.results import (
    CompareError,
    ResultsStore,
    aggregate,
    compare,
    format_comparison,
    write_report,
)
from gapinit_ray.results.compare import NOT_ENOUGH, compare_values, verdict

from ..conftest import QUICKSTART

# hand-made: a seed effect shared by both arms (large) plus a small per-arm difference
X = {42: 141.2, 123: 137.9, 2024: 143.5, 999: 139.0, 7: 140.4}
Y = {42: 139.1, 123: 136.2, 2024: 140.9, 999: 138.3, 7: 137.7}


def _scipy_sign_flip(d) -> float:
    return stats.permutation_test(
        (np.asarray(d),), np.mean, permutation_type="samples", n_resamples=np.inf, vectorized=False
    ).pvalue


def test_paired_statistics_match_scipy():
    st = compare_values(X, Y)
    x, y = np.array(list(X.values())), np.array(list(Y.values()))
    assert st["paired"] is True and st["effect_kind"] == "d_z" and st["n1"] == st["n2"] == 5
    assert st["p_paired"] == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-12)
    assert st["p_welch"] == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue, rel=1e-12)
    d = x - y
    assert st["p_exact"] == pytest.approx(_scipy_sign_flip(d), rel=1e-12) and st["test"] == "exact sign-flip"
    ci = stats.ttest_rel(x, y).confidence_interval()
    assert (st["diff_ci_low"], st["diff_ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert st["diff"] == pytest.approx(d.mean())
    assert st["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert st["sd_ratio"] == pytest.approx(x.std(ddof=1) / y.std(ddof=1))
    assert st["iqm1"] == pytest.approx(stats.trim_mean(x, 0.25))
    # pairing removes the seed effect: the paired p is far below Welch's on these data
    assert st["p_paired"] < 0.01 < st["p_welch"]
    # the order of the seeds does not matter, only which values share a seed
    shuffled = compare_values(dict(reversed(list(X.items()))), Y)
    assert shuffled["diff_ci_low"] == st["diff_ci_low"] and shuffled["p_exact"] == st["p_exact"]
    # below 20 seeds no bootstrap interval is given (it under-covers there)
    assert math.isnan(st["boot_ci_low"]) and math.isnan(st["boot_ci_high"])


def test_unpaired_statistics_match_scipy():
    x, y = [10.0, 12.5, 11.0, 13.2], [9.1, 12.0, 9.8, 12.1, 8.7]
    st = compare_values(x, y)
    assert st["paired"] is False and st["effect_kind"] == "d" and math.isnan(st["p_paired"])
    assert st["p_welch"] == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue, rel=1e-12)
    ci = stats.ttest_ind(x, y, equal_var=False).confidence_interval()
    assert (st["diff_ci_low"], st["diff_ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    perm = stats.permutation_test(
        (x, y),
        lambda a, b: np.mean(a) - np.mean(b),
        permutation_type="independent",
        n_resamples=np.inf,
        vectorized=False,
    )
    assert st["p_exact"] == pytest.approx(perm.pvalue, rel=1e-12) and st["test"] == "exact permutation"
    a, b = np.array(x), np.array(y)
    pooled = math.sqrt((3 * a.var(ddof=1) + 4 * b.var(ddof=1)) / 7)
    assert st["effect_size"] == pytest.approx((a.mean() - b.mean()) / pooled)
    assert (st["mean1"], st["mean2"]) == pytest.approx((a.mean(), b.mean()))
    mw = stats.mannwhitneyu(x, y).statistic / (len(x) * len(y))
    assert st["p_superior"] == pytest.approx(mw)
    assert st["p_superior_ci_low"] <= st["p_superior"] <= st["p_superior_ci_high"]
    # different seed sets are not paired either, even as dicts
    assert compare_values({1: 1.0, 2: 2.0, 3: 2.5}, {1: 1.0, 2: 2.0, 4: 3.0})["paired"] is False


def test_at_three_seeds_no_verdict_may_claim_a_difference():
    """n = 3 paired: all three differences large and positive, the paired t-test even says p < 0.05,
    but the exact test's smallest possible p is 2/8 = 0.25: the verdict says no verdict is possible."""
    x, y = {1: 10.0, 2: 11.0, 3: 12.0}, {1: 9.0, 2: 9.95, 3: 11.1}
    st = compare_values(x, y)
    assert st["p_exact"] == pytest.approx(_scipy_sign_flip([1.0, 1.05, 0.9])) == pytest.approx(0.25)
    assert st["p_min"] == 0.25 and st["p_paired"] < 0.01
    text = verdict(st, "gap", "random")
    assert text.startswith(
        "no verdict possible at n=3: the exact sign-flip test's smallest possible p is 0.25"
    )
    assert "higher" not in text and "lower" not in text
    # the same shape at n = 8 is resolved, and the verdict says by which test
    x8 = {s: 10.0 + s for s in range(8)}
    y8 = {s: 9.0 + s + 0.01 * s for s in range(8)}
    st8 = compare_values(x8, y8)
    assert st8["p_exact"] == pytest.approx(2 / 256)
    assert verdict(st8, "gap", "random").startswith("gap higher than random by 0.96 (95% paired t CI ")
    assert "exact sign-flip p=0.0078, n=8" in verdict(st8, "gap", "random")


def test_holm_on_a_hand_made_example():
    from gapinit_ray.results.stats import holm

    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04, made monotone
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan"), 0.01]) == pytest.approx([0.5, float("nan"), 0.02], nan_ok=True)
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 x 0.8 capped at 1, then monotone


def test_sample_sizes_match_textbook_values():
    """G*Power / Cohen (1988): a two-sided t-test at alpha 0.05 with 80 % power needs 34 pairs for
    d_z = 0.5, 10 for d_z = 1, and 64 per group for d = 0.5 unpaired."""
    from gapinit_ray.results.stats import seeds_needed

    assert seeds_needed(0.5, 1.0) == 34
    assert seeds_needed(1.0, 1.0) == 10
    assert seeds_needed(0.5, 1.0, paired=False) == 64
    assert seeds_needed(2.0, 4.0) == 34  # only the ratio matters
    assert math.isinf(seeds_needed(0.0, 1.0)) and math.isnan(seeds_needed(1.0, 0.0))


def test_bootstrap_only_from_twenty_seeds_and_deterministic():
    rng = np.random.default_rng(7)
    base = rng.normal(0, 10, 24)
    x = {s: b + 2.0 + e for s, (b, e) in enumerate(zip(base, rng.normal(0, 0.3, 24), strict=True))}
    y = {s: b + e for s, (b, e) in enumerate(zip(base, rng.normal(0, 0.3, 24), strict=True))}
    paired = compare_values(x, y, seed=3)
    assert paired["boot_ci_low"] < 2.0 < paired["boot_ci_high"]
    assert paired["diff_ci_low"] < 2.0 < paired["diff_ci_high"]
    unpaired = compare_values(list(x.values()), list(y.values()), seed=3)
    assert paired["diff_ci_high"] - paired["diff_ci_low"] < 0.2 * (
        unpaired["diff_ci_high"] - unpaired["diff_ci_low"]
    )
    again = compare_values(x, y, seed=3)
    assert all(again[k] == paired[k] or (math.isnan(again[k]) and math.isnan(paired[k])) for k in paired)
    assert paired["sd_ratio_ci_low"] <= paired["sd_ratio"] <= paired["sd_ratio_ci_high"]


def test_verdicts():
    same = compare_values({s: 10.0 + (s % 3) for s in range(8)}, {s: 10.1 + (s % 2) for s in range(8)})
    assert verdict(same, "gap", "random").startswith("no resolved difference: diff ")
    st = compare_values(X, Y)  # n = 5: smallest p 2/32 = 0.0625 > 0.05, whatever the data
    assert verdict(st, "gap", "random").startswith("no verdict possible at n=5")
    one = compare_values({1: 1.0}, {1: 2.0, 2: 2.5})
    assert math.isnan(one["p_welch"]) and math.isnan(one["diff_ci_low"]) and math.isnan(one["effect_size"])
    assert verdict(one, "gap", "random").startswith(NOT_ENOUGH)


def test_zero_spread_gives_no_exception():
    st = compare_values({1: 1.0, 2: 1.0, 3: 1.0}, {1: 1.0, 2: 1.0, 3: 1.0})
    assert math.isnan(st["effect_size"]) and math.isnan(st["sd_ratio"])
    assert verdict(st, "a", "b").startswith("no verdict possible at n=3")


# --------------------------------------------------------------------------------- on a store

INITS = ("gap", "random", "random-direction")
SEEDS = (1, 2, 3, 4, 5, 6, 7, 8)  # 8 paired seeds: the exact test can resolve a difference (p >= 2/256)


def _value(init: str, seed: int, rank: int, epoch: int) -> float:
    seed_effect = {1: 0.0, 2: 4.0, 3: -3.0, 4: 1.5, 5: -1.0, 6: 2.5, 7: -2.0, 8: 0.5}[seed]
    jitter = ((seed * 7 + rank * 3 + epoch + 2 * INITS.index(init)) % 5) * 0.05
    return 120.0 + seed_effect + epoch + (6.0 if init == "gap" and epoch == 3 else 0.0) + jitter


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = ResultsStore(str(tmp_path_factory.mktemp("compare") / "root"), "cmp")
    for init in INITS:
        for rank in (1, 8):
            for seed in SEEDS:
                cfg = {"backbone": "tiny-blip2", "init": init, "seed": seed, "lora.rank": rank}
                tid = f"{init}-r{rank}-s{seed}"
                s.write_trial(tid, cfg, status="TERMINATED")
                for epoch in (1, 2, 3):
                    s.write_report(
                        tid,
                        cfg,
                        {
                            "epoch": float(epoch),
                            "val_cider": _value(init, seed, rank, epoch),
                            "align_cos_mean": (1.0 if init == "gap" else 0.1) - 0.01 * epoch,
                        },
                    )
    return s


def test_compare_on_a_store_agrees_with_aggregate(store):
    m = store.metrics()
    arms = ["init=gap", "init=random", "init=random-direction"]
    for at in ("last", "best", "epoch=2"):
        t = compare(m, arms, metric="val_cider", at=at, by=["rank"], n_boot=1000).to_pylist()
        agg = aggregate(m, by=["init", "rank"], metric="val_cider", at=at).to_pylist()
        means = {(r["init"], r["rank"]): r["mean"] for r in agg}
        assert [(r["rank"], r["arm2"]) for r in t] == [(r, a) for r in (1, 8) for a in arms[1:]]
        for r in t:
            assert r["paired"] and r["n1"] == r["n2"] == 8 and r["note"] == ""
            assert r["mean1"] == pytest.approx(means[("gap", r["rank"])])
            assert r["mean2"] == pytest.approx(means[(r["arm2"].split("=")[1], r["rank"])])
    last = compare(m, "init=gap,init=random", metric="val_cider", by=["lora.rank"]).to_pylist()
    assert all(r["verdict"].startswith("gap higher than random by ") for r in last)
    assert all(abs(r["diff"] - 6.0) < 0.2 for r in last)
    at2 = compare(m, ["init=gap", "init=random"], metric="val_cider", at="epoch=2", by=["rank"]).to_pylist()
    assert all(r["verdict"].startswith("no resolved difference") for r in at2)
    # Holm over the comparisons of one call: 2 ranks x 2 pairs = 4 exact p-values of 2/256
    three = compare(m, arms, metric="val_cider", by=["rank"]).to_pylist()
    assert [r["p_exact"] for r in three] == pytest.approx([2 / 256] * 4)
    assert [r["p_holm"] for r in three] == pytest.approx([4 * 2 / 256] * 4)
    assert all("Holm-adjusted 0.031" in r["verdict"] for r in three)
    # no stratum: each arm holds two trials per seed (the ranks), so it is not paired, and says so
    pooled = compare(m, ["init=gap", "init=random"], metric="val_cider").to_pylist()
    assert len(pooled) == 1 and not pooled[0]["paired"] and pooled[0]["n1"] == 16
    assert "16 trials over 8 seeds" in pooled[0]["note"]
    assert pooled[0]["test"] == "permutation (Monte Carlo)"  # C(32, 16) relabelings: too many to list


def test_compare_gives_the_anytime_valid_verdict_next_to_the_fixed_n_one(store):
    """The fixed-n exact test is valid for one look at 8 seeds; the anytime-valid sequence is valid
    however often the seeds were looked at, so it is wider: here it resolves the clear difference of 6
    over a spread of ~0.1 too, and at epoch 2 (no difference) it claims nothing either."""
    from gapinit_ray.results import anytime

    m = store.metrics()
    rows = compare(m, "init=gap,init=random", metric="val_cider", by=["rank"]).to_pylist()
    for r in rows:
        assert r["av_alpha"] == pytest.approx(0.05 / 2)  # Bonferroni over the call's 2 comparisons
        assert r["av_cs_low"] < r["diff"] < r["av_cs_high"]
        # wider than the paired-t interval: the price of validity under repeated looks
        assert r["av_cs_high"] - r["av_cs_low"] > r["diff_ci_high"] - r["diff_ci_low"]
        assert r["av_verdict"] == anytime.A_HIGHER and "anytime-valid" in r["verdict"]
    flat = compare(m, "init=gap,init=random", metric="val_cider", at="epoch=2", by=["rank"]).to_pylist()
    assert all(r["av_verdict"] == anytime.OPEN and "anytime-valid" in r["verdict"] for r in flat)
    # unpaired rows have no sequence
    pooled = compare(m, ["init=gap", "init=random"], metric="val_cider").to_pylist()
    assert pooled[0]["av_verdict"] == "" and math.isnan(pooled[0]["av_e_value"])


def test_compare_over_the_curve(store):
    t = compare(store.metrics(), ["init=gap", "init=random"], metric="val_cider", at="curve", by=["rank"])
    rows = t.to_pylist()
    assert [(r["rank"], r["epoch"]) for r in rows] == [(k, e) for k in (1, 8) for e in (1.0, 2.0, 3.0)]
    assert [r["verdict"].startswith("gap higher") for r in rows] == [False, False, True] * 2


def test_compare_errors_name_the_problem(store):
    m = store.metrics()
    with pytest.raises(CompareError, match=r"arm 'optimizer=adam'.*available: .*init"):
        compare(m, ["init=gap", "optimizer=adam"], metric="val_cider")
    with pytest.raises(CompareError, match=r"no trial has init=gapp; values: gap, random, random-direction"):
        compare(m, ["init=gapp", "init=random"], metric="val_cider")
    with pytest.raises(CompareError, match="not axis=value"):
        compare(m, ["init=gap", "random"], metric="val_cider")
    with pytest.raises(CompareError, match="at least two arms"):
        compare(m, ["init=gap"], metric="val_cider")
    with pytest.raises(CompareError, match="also in by"):
        compare(m, ["init=gap", "init=random"], metric="val_cider", by=["init"])
    with pytest.raises(GapinitError, match="at 'first'"):
        compare(m, ["init=gap", "init=random"], metric="val_cider", at="first")
    assert compare(m, ["rank=1", "rank=8"], metric="val_cider", by=["init"]).num_rows == 3


def gapinit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "gapinit_ray.cli", *args], capture_output=True, text=True, env=env
    )


def test_cli_compare(store):
    sweep = os.path.join(store.root, store.sweep)
    r = gapinit(
        "results", sweep, "--compare", "init=gap,init=random,init=random-direction", "--n-boot", "500"
    )
    assert r.returncode == 0, r.stderr
    assert "arm1" in r.stdout and "p_holm" in r.stdout and "gap higher than random by" in r.stdout
    assert "gap higher than random-direction by" in r.stdout
    # the sample-size line, per comparison
    assert "init=gap vs init=random: ~" in r.stdout and "seeds (paired) for 80% power" in r.stdout
    r = gapinit("results", sweep, "--compare", "init=gap,init=random", "--format", "json", "--at", "epoch=2")
    records = json.loads(r.stdout)
    assert len(records) == 2 and {x["rank"] for x in records} == {1, 8}  # strata: the --by axes left
    assert all(x["verdict"].startswith("no resolved difference") for x in records)
    bad = gapinit("results", sweep, "--compare", "init=gap,init=gapp")
    lines = bad.stderr.strip().splitlines()
    assert (
        bad.returncode == 2 and len(lines) == 1 and "init=gapp" in lines[0] and "Traceback" not in bad.stderr
    )


def test_report_has_the_comparison_and_the_alignment_curve(store, tmp_path):
    paths = write_report(store, str(tmp_path / "r"), by=["init", "rank"], metric="val_cider", n_boot=500)
    assert [os.path.basename(p) for p in paths] == [
        "curves.png",
        "final.png",
        "alignment.png",
        "report.md",
        "report.html",
    ]
    with open(paths[2], "rb") as f:
        assert f.read(4) == b"\x89PNG"
    md, page = (Path(p).read_text(encoding="utf-8") for p in paths[3:])
    assert "## Init comparison (init: gap vs random, random-direction)" in md
    assert "rank=1: init=gap vs init=random-direction: gap higher than random-direction by" in md
    assert "alignment.png" in md
    assert "Init comparison" in page
    paths = write_report(store, str(tmp_path / "r2"), by=["init"], metric="val_cider", compare=[])
    assert "Init comparison" not in Path(paths[-2]).read_text(encoding="utf-8")


def test_format_comparison_drops_an_empty_note(store):
    t = compare(store.metrics(), ["init=gap", "init=random"], metric="val_cider", by=["rank"], n_boot=200)
    assert "note" not in format_comparison(t, "markdown").splitlines()[0]
    assert "note" in format_comparison(t, "csv").splitlines()[0]


# ------------------------------------------------------------------------------------ pairing


def test_same_seed_same_batch_order_whatever_the_init(tmp_path):
    """The trainer's data order (train.train_loader, seeded by the trial seed) is the same for every
    init of a seed, on every rank; another seed gives another order."""
    from gapinit_ray.data.resolve import split_records
    from gapinit_ray.plan import trial_spec
    from gapinit_ray.spec import spec_from_dict
    from gapinit_ray.train import CaptionPairs, train_loader

    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["storage"] = str(tmp_path / "store")
    raw["data"]["sources"]["shapes"]["num_images"] = 24
    spec = spec_from_dict(raw)

    def order(init: str, seed: int, world: int = 1, rank: int = 0) -> list[list[str]]:
        tspec, _ = trial_spec(spec, {"init": init, "seed": seed})
        data = CaptionPairs(split_records(tspec.data, tspec.data.train, tspec.storage))
        sampler, loader = train_loader(data, list, tspec.train.batch_size, tspec.seed, world, rank)
        epochs = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            epochs.append([f"{image_id}:{caption}" for batch in loader for image_id, _, caption in batch])
        return epochs

    gap = order("gap", 42)
    assert len(gap[0]) > 16 and gap[0] != gap[1]  # several batches, reshuffled each epoch
    assert order("random", 42) == gap
    assert order("random-direction", 42) == gap
    assert order("gap", 123) != gap
    shards = [order(init, 42, world=2, rank=r) for init in ("gap", "random") for r in (0, 1)]
    assert shards[0] == shards[2] and shards[1] == shards[3]
    assert not set(shards[0][0]) & set(shards[1][0])
