"""The init zoo (issue 24): peft's MiCA, orthogonal, EVA, CorDA and LoRA-GA as sweep arms on the tiny
BLIP-2, Qwen2-VL and Gemma 3: each builds, records its init checks, ΔW = 0 where the method promises it
(the documented value where it does not); their calibration statistics reduce over shards as in one
process and are computed once per artifact (a second trial reuses them, no second pass)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from gapinit_ray.backbones import load_backbone
from gapinit_ray.calibrate import calibrate
from gapinit_ray.errors import SpecError
from gapinit_ray.gap import GapArtifact, SpotSettings, reduce_shards
from gapinit_ray.init_stats import compute_stats, eva_components, reduce_stats
from gapinit_ray.inits.adapters import lora_modules
from gapinit_ray.inits.apply import apply_lora
from gapinit_ray.inits.checks import init_checks
from gapinit_ray.inits.registry import LoraInitError, get_init_method
from gapinit_ray.spec import LoraSpec, spec_from_dict

from ..conftest import QUICKSTART, ROOT, synthetic_pairs

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

BACKBONES = ("tiny-blip2", "tiny-qwen2-vl", "tiny-gemma3")
ZOO = ("mica", "orthogonal", "eva", "corda", "lora_ga")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return synthetic_pairs(tmp_path_factory.mktemp("zoo"), num_images=12, seed=0)


@pytest.fixture(scope="module")
def calibrated(pairs):
    """Per backbone: (GapArtifact, statistics sums), computed once."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            bb = load_backbone(name, seed=0)
            targets = list(bb.default_target_modules)
            gaps = reduce_shards([calibrate(bb, pairs, targets)], SpotSettings(k=3), bb.lm_layers_path)
            art = GapArtifact(f"k-{name}", gaps, {"backbone": bb.source_id, "target_modules": targets})
            cache[name] = art, compute_stats(bb, pairs, targets, ["moments", "grads"], batch_size=6)
        return cache[name]

    return get


def _ab(pm, name):
    layer = lora_modules(pm)[name]
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight


@pytest.mark.parametrize("method", ZOO)
@pytest.mark.parametrize("name", BACKBONES)
def test_zoo_init_builds_with_its_checks(name, method, calibrated, pairs):
    art, stats = calibrated(name)
    rank = 2 if method == "orthogonal" else 1
    bb = load_backbone(name, seed=0)
    w0 = {n: m.weight.detach().clone() for n, m in bb.model.named_modules() if isinstance(m, torch.nn.Linear)}
    pm, report = apply_lora(bb, LoraSpec(init=method, rank=rank, layers={"top_k": 1}), art, 0, stats=stats)
    batch = bb.build_batch([p[1] for p in pairs[:4]], [p[2] for p in pairs[:4]], with_labels=True)
    checks = init_checks(bb, pm, report, batch, art)
    assert checks["passed"] and math.isfinite(checks["loss"])
    json.dumps(report.to_dict())
    adapted = lora_modules(pm)
    assert sorted(adapted) == sorted(report.modules) and len(adapted) == len(bb.default_target_modules)
    m = get_init_method(method)
    for n in adapted:
        a, b = _ab(pm, n)
        assert tuple(a.shape) == (rank, adapted[n].in_features)
        assert tuple(b.shape) == (adapted[n].out_features, rank)
        for w in (a, b):  # row-major, as DeepSpeed's broadcast (a uint8 view) needs; MiCA's r = 1 B was not
            assert w.stride() == torch.empty(w.shape).stride()
    if method == "mica":  # B = the r smallest left singular vectors of W₀, A = 0, B frozen: ΔW = 0
        assert checks["max_abs_logit_diff"] == 0.0
        for n in adapted:
            a, b = _ab(pm, n)
            u = torch.linalg.svd(w0[n].float(), full_matrices=False)[0][:, -1]
            assert not a.any() and not b.requires_grad
            assert abs(float(b[:, 0].detach() @ u)) == pytest.approx(1.0, abs=1e-5)
        assert checks["grad_norm_A"] > 0 and checks["grad_norm_B"] == 0.0
        assert report.alignment_summary["mean"] is not None  # cos(B[:,0], g) recorded like every method
    if method == "orthogonal":  # peft promises no ΔW = 0: the value is recorded, not enforced
        assert checks["max_abs_logit_diff"] is not None and checks["max_abs_logit_diff"] >= 0.0
        assert all(_ab(pm, n)[0].any() and _ab(pm, n)[1].any() for n in adapted)
        assert any("ΔW ≠ 0" in note for note in report.notes)
    if method == "eva":  # A = the top principal direction of the caption-token inputs, B = 0: ΔW = 0
        assert checks["max_abs_logit_diff"] == 0.0
        for n in adapted:
            a, b = _ab(pm, n)
            assert not b.any()
            assert torch.allclose(a.detach(), eva_components(stats, n, 1)[0], atol=1e-6)
        assert report.alignment_summary["mean"] is None  # B = 0: cos undefined
    if m.mutates_base:  # CorDA / LoRA-GA: W_res + s·B₀A₀ = W₀, so the output is unchanged up to rounding
        assert checks["max_abs_logit_diff"] is None
        assert checks["max_abs_weight_error"] <= 1e-5
        for n in adapted:
            assert not torch.equal(adapted[n].base_layer.weight, w0[n])  # the base was rewritten
        assert report.alignment_summary["mean"] is not None


def test_eva_direction_explains_more_input_variance_than_random(calibrated):
    _, stats = calibrated("tiny-blip2")
    name = next(k.split("::")[0] for k in stats if k.endswith("::xtx"))
    comp, ratio = eva_components(stats, name, 2)
    assert ratio[0] >= ratio[1] >= 0 and float(comp[0] @ comp[1]) == pytest.approx(0.0, abs=1e-5)
    xtx, xsum, n = (stats[f"{name}::{s}"] for s in ("xtx", "xsum", "n"))
    cov = (xtx - torch.outer(xsum, xsum) / n) / (n - 1)
    top = float(comp[0].double() @ cov @ comp[0].double())
    rand = torch.randn(20, cov.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rand = rand / rand.norm(dim=1, keepdim=True)
    assert top >= float(((rand @ cov) * rand).sum(1).max())


def test_statistics_of_shards_sum_to_one_process(pairs):
    bb = load_backbone("tiny-gemma3", seed=0)
    targets = list(bb.default_target_modules)
    whole = compute_stats(bb, pairs, targets, ["moments", "grads"], batch_size=6)
    parts = reduce_stats(
        [compute_stats(bb, p, targets, ["moments", "grads"], batch_size=6) for p in (pairs[:6], pairs[6:])]
    )
    assert whole.keys() == parts.keys()
    for k in whole:
        assert torch.allclose(whole[k], parts[k], rtol=1e-6, atol=1e-6), k


def test_refusals():
    with pytest.raises(ValueError, match=r"even lora\.rank"):
        LoraSpec(init="orthogonal", rank=1)
    bb = load_backbone("tiny-blip2", seed=0)
    with pytest.raises(LoraInitError, match="calibration statistics"):
        apply_lora(bb, LoraSpec(init="eva"), None, 0)
    with pytest.raises(LoraInitError, match="adapt_vision"):
        apply_lora(load_backbone("tiny-blip2", seed=0), LoraSpec(init="corda", adapt_vision=True), None, 0)


def test_orthogonal_at_odd_rank_is_a_one_line_spec_error(tmp_path):
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["storage"] = str(tmp_path)
    raw["search"] = {"init": ["gap", "orthogonal"], "seed": [1]}
    with pytest.raises(SpecError, match=r"orthogonal.*even lora\.rank"):
        from gapinit_ray.plan import grid_points, trial_spec

        spec = spec_from_dict(raw)
        for p in grid_points(spec):
            trial_spec(spec, p)


def test_statistics_are_computed_once_and_reused_by_a_second_trial(tmp_path):
    """Two data-driven trials on one artifact: the first computes the calibration and the statistics,
    the second (and a LoRA-GA trial after an EVA one: only the missing kind) reuses the cache."""
    from gapinit_ray.calibration_job import run_calibration
    from gapinit_ray.init_stats import ensure_init_stats, stats_path
    from gapinit_ray.plan import trial_spec
    from gapinit_ray.trial import prepare_artifact

    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["storage"] = str(tmp_path / "store")
    raw["backbones"] = [{"name": "tiny-blip2", "pretrain": False}]
    raw["data"]["sources"]["shapes"]["num_images"] = 24
    raw["calibration"].update({"num_samples": 8, "workers": 1, "batch_size": 4})
    raw["search"] = {"init": ["eva", "corda", "lora_ga"], "seed": [1]}
    spec = spec_from_dict(raw)
    eva_spec, bspec = trial_spec(spec, {"init": "eva", "seed": 1})
    path = prepare_artifact(eva_spec, bspec, None, progress=False, use_ray=False)
    moments = stats_path(path, "moments")
    assert moments.is_file() and not stats_path(path, "grads").exists()
    stamp = moments.stat().st_mtime_ns
    # a second trial (CorDA reads the same moments): calibration and statistics both cache hits
    corda_spec, _ = trial_spec(spec, {"init": "corda", "seed": 1})
    assert run_calibration(corda_spec, bspec, use_ray=False, progress=False)[1] is True
    assert ensure_init_stats(corda_spec, bspec, None, path, ["corda"], use_ray=False, progress=False) == (
        [],
        ["moments"],
    )
    assert prepare_artifact(corda_spec, bspec, None, progress=False, use_ray=False) == path
    assert moments.stat().st_mtime_ns == stamp
    ga_spec, _ = trial_spec(spec, {"init": "lora_ga", "seed": 1})
    assert ensure_init_stats(ga_spec, bspec, None, path, ["lora_ga"], use_ray=False, progress=False) == (
        ["grads"],
        [],
    )
    assert moments.stat().st_mtime_ns == stamp
    # the trial side finds them through the artifact it loads
    art = GapArtifact.load(path)
    bb = load_backbone("tiny-blip2", seed=0)
    _, report = apply_lora(bb, LoraSpec(init="lora_ga"), art, 1)
    assert report.base_reconstruction_error is not None


def test_zoo_spec_validates_and_runs_every_zoo_init_against_gap():
    from gapinit_ray.plan import grid_points
    from gapinit_ray.spec import load_spec

    path = ROOT / "sweeps" / "init_zoo.yaml"
    assert path.read_text().startswith("# gapinit run sweeps/init_zoo.yaml")
    spec = load_spec(path)
    inits = {p.get("init", spec.lora.init) for p in grid_points(spec)}
    assert {"gap", *ZOO} <= inits


def test_seeds(calibrated):
    """Same seed ⇒ bit-identical adapters; MiCA, EVA and CorDA are deterministic decompositions (no
    draw at all), orthogonal and LoRA-GA (peft's randomized ``svd_lowrank``) depend on the seed."""
    art, stats = calibrated("tiny-blip2")

    def state(method, seed):
        rank = 2 if method == "orthogonal" else 1
        pm, _ = apply_lora(
            load_backbone("tiny-blip2", seed=0), LoraSpec(init=method, rank=rank), art, seed, stats
        )
        return {k: v.detach().clone() for k, v in pm.named_parameters() if "lora_" in k}

    for method in ZOO:
        one, two, other = state(method, 5), state(method, 5), state(method, 6)
        assert all(torch.equal(one[k], two[k]) for k in one), method
        same = all(torch.equal(one[k], other[k]) for k in one)
        assert same == (method in ("mica", "eva", "corda")), method
