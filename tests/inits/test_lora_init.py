"""LoRA init on the tiny backbones: shapes, layer scope, ΔW = 0, alignment, gradients, seeds, noise,
norms, the random-direction control, PiSSA/DoRA training steps, save/reload and artifact refusals."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from peft import PeftModel

from gapinit_ray import spec as spec_mod
from gapinit_ray.backbones import load_backbone
from gapinit_ray.calibrate import calibrate
from gapinit_ray.gap import ArtifactMismatch, GapArtifact, SpotSettings, layer_scores, reduce_shards
from gapinit_ray.inits.adapters import lora_modules
from gapinit_ray.inits.apply import apply_lora
from gapinit_ray.inits.checks import InitCheckError, init_checks
from gapinit_ray.inits.direction import module_generator, perturb, random_unit
from gapinit_ray.inits.registry import INIT_METHODS, LoraInitError, get_init_method
from gapinit_ray.inits.report import REPORT_FILE, save_adapter
from gapinit_ray.inits.targets import select_layers
from gapinit_ray.inits.tracking import adapter_stats, reference_gaps
from gapinit_ray.spec import InitOptions, LayerSelectionSpec, LoraSpec

from ..conftest import synthetic_pairs

# peft 0.21 calls transformers 5.23's deprecated `is_gradient_checkpointing` in get_peft_model
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

BACKBONES = ("tiny-blip2", "tiny-qwen2-vl", "tiny-gemma3")
#: the inits added as sweep arms by issue 24 (MiCA, orthogonal, EVA, CorDA, LoRA-GA) are tested in inits/test_init_zoo.py
ZOO = ("mica", "orthogonal", "eva", "corda", "lora_ga")
METHODS = tuple(m for m in INIT_METHODS if m not in ZOO)
#: methods whose adapters do not depend on the seed: exact SVD / QR of W₀
DETERMINISTIC = ("pissa", "olora")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return synthetic_pairs(tmp_path_factory.mktemp("lora_init"), num_images=32, seed=0)


@pytest.fixture(scope="module")
def artifacts(pairs):
    """Per backbone name, a real GapArtifact (module gaps + residual stream), computed once."""
    cache: dict[str, GapArtifact] = {}

    def get(name: str) -> GapArtifact:
        if name not in cache:
            bb = load_backbone(name, seed=0)
            targets = list(bb.default_target_modules)
            gaps = reduce_shards([calibrate(bb, pairs, targets)], SpotSettings(k=3), bb.lm_layers_path)
            cache[name] = GapArtifact(
                f"k-{name}", gaps, {"backbone": bb.source_id, "target_modules": targets}
            )
        return cache[name]

    return get


def batch_of(bb, pairs, n=4):
    return bb.build_batch([p[1] for p in pairs[:n]], [p[2] for p in pairs[:n]], with_labels=True)


def build(name, artifact, seed=0, **lora):
    bb = load_backbone(name, seed=0)
    pm, report = apply_lora(bb, LoraSpec(**lora), artifact, seed)
    return bb, pm, report


def adapter_state(pm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pm.named_parameters() if "lora_" in k}


def weights(pm, name):
    """(A (r, d_in), B (d_out, r)) of an adapted module: the live parameters, detached views."""
    layer = lora_modules(pm)[name]
    return layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()


# ------------------------------------------------------------------------------------- registry


def test_registry_matches_spec():
    assert tuple(INIT_METHODS) == spec_mod.INIT_METHODS


def test_unknown_method_lists_known(artifacts):
    with pytest.raises(LoraInitError) as e:
        get_init_method("lora-ga")
    for name in spec_mod.INIT_METHODS:
        assert name in str(e.value)
    bad = LoraSpec().model_copy(update={"init": "nope"})  # model_copy skips validation
    with pytest.raises(LoraInitError, match="known: gap, random"):
        apply_lora(load_backbone("tiny-blip2", seed=0), bad, artifacts("tiny-blip2"), 0)


# ------------------------------------------------------------------------ every backbone × method


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", BACKBONES)
def test_build_shapes_scope_and_checks(name, method, rank, artifacts, pairs):
    art = artifacts(name)
    bb, pm, report = build(name, art, rank=rank, init=method, layers={"top_k": 1})
    last = bb.num_lm_layers - 1
    assert report.layers == [last]
    adapted = lora_modules(pm)
    assert sorted(adapted) == sorted(report.modules)
    assert {n.rsplit(".", 1)[-1] for n in adapted} == set(bb.default_target_modules)
    for n in adapted:
        assert n.startswith(f"{bb.lm_layers_path}.{last}.")
        assert not any(n.startswith(p) for p in bb.vision_module_prefixes)
        a, b = weights(pm, n)
        base = bb.model.get_submodule(n).base_layer
        assert tuple(a.shape) == (rank, base.in_features)  # A: (r, d_in)
        assert tuple(b.shape) == (base.out_features, rank)  # B: (d_out, r)
    assert not any(p.requires_grad for n, p in pm.named_parameters() if "lora_" not in n)
    checks = init_checks(bb, pm, report, batch_of(bb, pairs), art)
    assert checks["passed"] and math.isfinite(checks["loss"])
    json.dumps(report.to_dict())  # JSON-serializable
    if method in ("gap", "random-direction"):
        assert checks["max_abs_logit_diff"] == 0.0
        assert checks["grad_norm_A"] > 0 and checks["grad_norm_B"] == 0.0
        assert all(not weights(pm, n)[0].any() for n in adapted)  # A = 0
    if method == "gap":
        assert checks["min_alignment"] >= 1 - 1e-6
        assert report.alignment_summary["min"] >= 1 - 1e-6
    if method in ("random", "gaussian", "dora"):
        assert all(v is None for v in report.alignment.values()) and "undefined" in report.alignment_note
        assert checks["max_abs_logit_diff"] == 0.0  # B = 0
        assert checks["grad_norm_B"] > 0


def test_gap_check_catches_a_broken_init(artifacts, pairs):
    art = artifacts("tiny-qwen2-vl")
    bb, pm, report = build("tiny-qwen2-vl", art, init="gap")
    name = report.modules[0]
    with torch.no_grad():
        weights(pm, name)[0].fill_(0.01)  # A ≠ 0 ⇒ ΔW ≠ 0
        weights(pm, name)[1][:, 0] = torch.flip(weights(pm, name)[1][:, 0], [0])  # direction lost
    with pytest.raises(InitCheckError, match=r"ΔW ≠ 0.*cos"):
        init_checks(bb, pm, report, batch_of(bb, pairs), art)
    assert report.checks["passed"] is False


# -------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("name", BACKBONES)
def test_seed_determinism(name, artifacts):
    art = artifacts(name)
    for method in METHODS:
        one = adapter_state(build(name, art, seed=5, rank=3, init=method)[1])
        two = adapter_state(build(name, art, seed=5, rank=3, init=method)[1])
        other = adapter_state(build(name, art, seed=6, rank=3, init=method)[1])
        assert one.keys() == two.keys() == other.keys()
        assert all(torch.equal(one[k], two[k]) for k in one), method
        same_as_other = all(torch.equal(one[k], other[k]) for k in one)
        assert same_as_other == (method in DETERMINISTIC), method


def test_apply_does_not_disturb_global_rng(artifacts):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build("tiny-blip2", artifacts("tiny-blip2"), init="random")
    assert torch.equal(torch.rand(3), expected)


# -------------------------------------------------------------------------------------- noise


@pytest.mark.parametrize(("g_norm", "eps"), [(1.0, 0.01), (1.0, 0.02), (3.0, 0.05), (0.5, 0.0)])
def test_perturb_expected_angle(g_norm, eps):
    d = 4096
    g = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = g / g.norm() * g_norm
    cos = [float(perturb(g, eps, module_generator(s, "m", "noise")) @ g) / g_norm for s in range(200)]
    expected = g_norm / math.sqrt(g_norm**2 + eps**2 * d)
    assert abs(sum(cos) / len(cos) - expected) < 0.01
    assert abs(float(perturb(g, eps, module_generator(0, "m", "noise")).norm()) - 1) < 1e-12


def test_gap_noise_on_a_backbone(artifacts, pairs):
    art = artifacts("tiny-gemma3")
    eps = 0.5
    bb, pm, report = build(
        "tiny-gemma3",
        art,
        init="gap",
        init_options={"noise_eps": eps, "gap_source": "mean", "space": "module"},
    )
    predicted, seen = [], []
    for name, cos in report.alignment.items():
        g = art.vector(name, "mean").double()
        predicted.append(float(g.norm() / torch.sqrt(g.norm() ** 2 + eps**2 * g.numel())))
        seen.append(cos)
        assert not weights(pm, name)[0].any()
    assert abs(sum(seen) / len(seen) - sum(predicted) / len(predicted)) < 0.1
    assert max(seen) < 1 - 1e-3  # the direction did change
    checks = init_checks(bb, pm, report, batch_of(bb, pairs), art)  # ΔW = 0 still; cos not enforced
    assert checks["max_abs_logit_diff"] == 0.0 and "min_alignment" not in checks


# ------------------------------------------------------------------------------- random direction


def test_random_unit_is_near_orthogonal_in_high_dim():
    d = 4096
    g = torch.randn(d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cos = torch.tensor(
        [float(random_unit(d, module_generator(s, "m", "direction")) @ g / g.norm()) for s in range(400)]
    )
    assert cos.abs().max() < 0.1
    assert abs(float((cos**2).mean()) * d - 1) < 0.25  # Prop. 3.1: E[cos²] = 1/d


def test_random_direction_on_a_backbone(artifacts):
    _, pm, report = build("tiny-qwen2-vl", artifacts("tiny-qwen2-vl"), init="random-direction")
    cos = [abs(c) for c in report.alignment.values()]
    assert sum(cos) / len(cos) < 0.5 and max(cos) < 0.9
    for name in report.modules:
        a, b = weights(pm, name)
        assert not a.any() and abs(float(b[:, 0].norm()) - 1) < 1e-6


# ---------------------------------------------------------------------------------------- norms


@pytest.mark.parametrize("method", ["gap", "random-direction"])
def test_norm_options(method, artifacts):
    art = artifacts("tiny-blip2")
    _, pm, report = build("tiny-blip2", art, seed=3, rank=2, init=method, init_options={"norm": 0.25})
    for name in report.modules:
        assert abs(float(weights(pm, name)[1][:, 0].norm()) - 0.25) < 1e-6
    _, default, _ = build("tiny-blip2", art, seed=3, rank=2, init="random")
    _, pm, report = build(
        "tiny-blip2", art, seed=3, rank=2, init=method, init_options={"norm": "match-default"}
    )
    for name in report.modules:
        expected = float(weights(default, name)[0].norm())
        assert abs(float(weights(pm, name)[1][:, 0].norm()) - expected) < 1e-5
    with pytest.raises(LoraInitError, match="norm must be > 0"):
        build("tiny-blip2", art, init=method, init_options={"norm": -1.0})


# ----------------------------------------------------------------- tracking during training


def test_adapter_stats_per_init(artifacts):
    art = artifacts("tiny-blip2")
    bb, pm, report = build("tiny-blip2", art, seed=2, init="gap")
    gaps = reference_gaps(bb, LoraSpec(init="gap"), art, pm)
    assert sorted(gaps) == sorted(report.modules) and len(gaps) > 1
    st = adapter_stats(pm, gaps)
    assert st["align_cos_min"] == pytest.approx(report.alignment_summary["min"]) == pytest.approx(1.0)
    assert st["lora_A_norm"] == 0.0 and st["lora_B_norm"] == pytest.approx(1.0)  # rank 1, unit column
    # training moves B: the cosine is recomputed from the live weights, not copied from the init report
    name = report.modules[0]
    with torch.no_grad():
        b = lora_modules(pm)[name].lora_B["default"].weight
        b[:, 0] = b[:, 0] - 2 * (b[:, 0] @ gaps[name].float()) * gaps[name].float() / gaps[name].norm() ** 2
    moved = adapter_stats(pm, gaps)
    assert moved["align_cos_min"] == pytest.approx(-1.0, abs=1e-5) and moved["align_cos_max"] > 0.99
    _, pm, _ = build("tiny-blip2", art, seed=2, init="random")  # peft default: B = 0, cos undefined
    st = adapter_stats(pm, gaps)
    assert math.isnan(st["align_cos_mean"]) and st["lora_B_norm"] == 0.0 and st["lora_A_norm"] > 0
    _, pm, report = build("tiny-blip2", art, seed=2, init="random-direction")
    st = adapter_stats(pm, gaps)
    assert st["align_cos_mean"] == pytest.approx(sum(report.alignment.values()) / len(report.alignment))
    assert abs(st["align_cos_mean"]) < 0.5
    assert math.isnan(adapter_stats(pm, {})["align_cos_max"])  # no artifact, no alignment
    assert reference_gaps(bb, LoraSpec(init="gap"), None, pm) == {}


# ------------------------------------------------------------------------- train one step


@pytest.mark.parametrize("method", ["dora", "pissa", "olora", "gap"])
@pytest.mark.parametrize("name", ["tiny-blip2", "tiny-gemma3"])
def test_one_optimizer_step(name, method, artifacts, pairs):
    bb, pm, _ = build(name, artifacts(name), init=method, dropout=0.0)
    before = adapter_state(pm)
    if method == "dora":
        assert any("lora_magnitude_vector" in k for k in before)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    batch = batch_of(bb, pairs)
    pm.train()
    loss = pm(**batch.inputs, labels=batch.labels).loss
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    after = adapter_state(pm)
    assert any(not torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------------- layer selection


def test_select_layers():
    scores = {0: 0.5, 1: 2.0, 2: 1.0, 3: 2.0, 4: 0.1, 5: 3.0}
    assert select_layers(6, "gg-safe", 3, scores) == [1, 3, 5]
    assert select_layers(6, "gg-safe", 2, scores) == [1, 5]  # tie 1 vs 3: lower index wins
    assert select_layers(6, "naive", 2) == [4, 5]
    assert select_layers(6, "all", 2) == list(range(6))
    assert select_layers(2, "naive", 6) == [0, 1]
    with pytest.raises(LoraInitError, match="needs a GapArtifact"):
        select_layers(6, "gg-safe", 2, None)
    with pytest.raises(LoraInitError, match=r"missing \[5\]"):
        select_layers(6, "gg-safe", 2, {i: 1.0 for i in range(5)})
    with pytest.raises(LoraInitError, match="allowed: naive, gg-safe, all"):
        select_layers(6, "best", 2, scores)


def test_gg_safe_uses_artifact_scores(artifacts):
    art = artifacts("tiny-qwen2-vl")
    scores = layer_scores(art.gaps)
    best = max(scores, key=lambda i: (scores[i], -i))
    _, _, report = build("tiny-qwen2-vl", art, layers={"selection": "gg-safe", "top_k": 1})
    assert report.layers == [best]
    assert all(f".layers.{best}." in n for n in report.modules)
    with pytest.raises(LoraInitError, match="gg-safe"):
        build("tiny-qwen2-vl", None, init="random", layers={"selection": "gg-safe"})


# -------------------------------------------------------------------------------------- vision


def test_adapt_vision_upper_half_only(artifacts, pairs):
    art = artifacts("tiny-gemma3")
    bb, pm, report = build("tiny-gemma3", art, init="gap", adapt_vision=True)
    vision = [n for n in report.modules if n.startswith("model.vision_tower")]
    assert vision and all(n.startswith("model.vision_tower.encoder.layers.1.") for n in vision)
    assert report.vision_layers == [1]
    assert all(report.alignment[n] is None for n in vision)
    assert all(not weights(pm, n)[1].any() for n in vision)  # peft default there: B = 0
    assert init_checks(bb, pm, report, batch_of(bb, pairs), art)["passed"]
    _, _, report = build("tiny-blip2", artifacts("tiny-blip2"), init="random", adapt_vision=True)
    assert not any(n.startswith(("qformer", "language_projection")) for n in report.modules)
    assert {n for n in report.modules if n.startswith("vision_model")} == {
        "vision_model.encoder.layers.1.mlp.fc1",
        "vision_model.encoder.layers.1.mlp.fc2",
    }
    with pytest.raises(LoraInitError, match=r"vision layers.*qkv"):
        build("tiny-qwen2-vl", None, init="random", adapt_vision=True)


# ----------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("method", ["gap", "pissa", "dora"])
def test_save_and_reload(method, artifacts, pairs, tmp_path):
    bb, pm, report = build("tiny-qwen2-vl", artifacts("tiny-qwen2-vl"), seed=9, rank=2, init=method)
    batch = batch_of(bb, pairs)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    pm(**batch.inputs, labels=batch.labels).loss.backward()
    opt.step()  # so the adapter is not the identity
    pm.eval()
    with torch.no_grad():
        before = pm(**batch.inputs).logits
    path = save_adapter(pm, tmp_path / "adapter", report)
    assert json.loads((path / REPORT_FILE).read_text())["method"] == method
    fresh = load_backbone("tiny-qwen2-vl", seed=0)
    reloaded = PeftModel.from_pretrained(fresh.model, str(path)).eval()
    with torch.no_grad():
        after = reloaded(**batch.inputs).logits
    assert torch.equal(before, after)


# ------------------------------------------------------------------------------------ refusals


def test_artifact_of_another_backbone_refused(artifacts):
    with pytest.raises(ArtifactMismatch, match="backbone"):
        build("tiny-gemma3", artifacts("tiny-qwen2-vl"), init="gap")


def test_artifact_missing_a_module_refused(artifacts):
    art = artifacts("tiny-blip2")
    # fc2 writes the hidden space: under the default space it takes the layer gap; fc1 (d_out = ffn dim)
    # falls back to its own gap, so that one must be there
    gone = "language_model.model.decoder.layers.1.fc1"
    partial = dataclasses.replace(art, gaps={k: v for k, v in art.gaps.items() if k != gone})
    with pytest.raises(ArtifactMismatch, match=gone):
        build("tiny-blip2", partial, init="gap")
    fc2 = "language_model.model.decoder.layers.1.fc2"
    no_fc2 = dataclasses.replace(art, gaps={k: v for k, v in art.gaps.items() if k != fc2})
    build("tiny-blip2", no_fc2, init="gap")  # the layer gap serves it
    with pytest.raises(ArtifactMismatch, match=fc2):
        build("tiny-blip2", no_fc2, init="gap", init_options={"space": "module"})
    layer = "language_model.model.decoder.layers.1"
    no_layer = dataclasses.replace(art, gaps={k: v for k, v in art.gaps.items() if k != layer})
    with pytest.raises(ArtifactMismatch, match="no hidden-state gap of layer 1"):
        build("tiny-blip2", no_layer, init="gap")
    narrow = dataclasses.replace(art, meta={**art.meta, "target_modules": ["q_proj"]})
    with pytest.raises(ArtifactMismatch, match="target_modules"):
        build("tiny-blip2", narrow, init="gap")
    _, _, report = build("tiny-blip2", partial, init="random-direction")  # alignment only: None
    assert report.alignment[gone] is None


def test_gap_needs_artifact_and_fresh_backbone(artifacts):
    with pytest.raises(LoraInitError, match="needs a GapArtifact"):
        build("tiny-blip2", None, init="gap")
    bb, _, _ = build("tiny-blip2", artifacts("tiny-blip2"), init="random")
    with pytest.raises(LoraInitError, match="already carries LoRA"):
        apply_lora(bb, LoraSpec(init="random"), None, 0)


def test_unknown_target_lists_linears():
    with pytest.raises(LoraInitError, match=r"c_attn.*linear modules are: .*q_proj"):
        build("tiny-qwen2-vl", None, init="random", target_modules=["c_attn"])


# ------------------------------------------------------------------------------------ residual


def test_residual_space(artifacts, pairs):
    art = artifacts("tiny-qwen2-vl")
    opts = {"space": "residual", "gap_source": "mean"}
    bb, pm, report = build(
        "tiny-qwen2-vl", art, init="gap", target_modules=["o_proj", "down_proj"], init_options=opts
    )
    for name in report.modules:
        layer = int(name.split(".layers.")[1].split(".")[0])
        g = art.vector(f"{bb.lm_layers_path}.{layer}", "mean")
        b0 = weights(pm, name)[1][:, 0].double()
        assert float(b0 @ g.double() / g.double().norm()) > 1 - 1e-6
    assert init_checks(bb, pm, report, batch_of(bb, pairs), art)["passed"]
    with pytest.raises(LoraInitError, match=r"k_proj has d_out=32 .* d=64"):
        build("tiny-qwen2-vl", art, init="gap", target_modules=["o_proj", "k_proj"], init_options=opts)


def test_spec_models_still_validate():
    # the options this module reads come from spec models; keep the field names in sync
    assert set(InitOptions().model_dump()) == {
        "gap_source",
        "noise_eps",
        "space",
        "norm",
        "eva_rho",  # the zoo's peft options (inits/test_init_zoo.py)
        "corda_method",
        "loraga_direction",
        "loraga_scale",
    }
    assert set(LayerSelectionSpec().model_dump()) == {"selection", "top_k"}


# ------------------------------------------------------------------------- the paper's gap space


def test_layer_space_is_the_papers_hidden_state_gap_with_the_module_gap_for_fc1(artifacts, pairs):
    """Paper §4.2 / Alg. 1 line 16: B^(l) = g^(l)/||g^(l)||, g^(l) the mean over pairs of the layer's
    hidden state on the caption alone minus on the image alone. Hooked here independently (own hooks on
    the decoder layers, one sample at a time) and compared with B[:, 0] of every adapted module: q, k, v,
    out_proj and fc2 (d_out = d_model) get the layer gap; fc1 (d_out = ffn dim) gets its own output gap,
    and the init report says which each got."""
    from ..test_calibrate import TEXT_ONLY, _hidden_states

    art = artifacts("tiny-blip2")
    _, pm, report = build("tiny-blip2", art, init="gap", init_options={"gap_source": "mean"})
    assert report.init_options["space"] == "layer"  # the default
    ref = load_backbone("tiny-blip2", seed=0)
    tok = ref.tokenizer
    head, tail = TEXT_ONLY["tiny-blip2"]
    gaps = torch.zeros(ref.num_lm_layers, ref.lm_hidden_size, dtype=torch.float64)
    for _, image, caption in pairs:
        batch = ref.build_image_batch([image])
        img = (batch.inputs["input_ids"][0] == ref.image_token_id).nonzero().flatten()
        hv = _hidden_states(ref, lambda batch=batch: ref.model(**batch.inputs))
        cap = ref.caption_token_ids(caption, "")
        ids = torch.tensor([tok(head, add_special_tokens=False).input_ids + cap + [tok.eos_token_id]])
        ht = _hidden_states(ref, lambda ids=ids: ref.model.language_model(input_ids=ids))
        for j in range(ref.num_lm_layers):
            gaps[j] += ht[j][1 : 1 + len(cap)].mean(0) - hv[j][img].mean(0)
    gaps /= len(pairs)
    assert tail == "</s>"
    kinds = set()
    for name in report.modules:
        b0 = weights(pm, name)[1][:, 0].double()
        kind = name.rsplit(".", 1)[-1]
        kinds.add(kind)
        if kind == "fc1":
            assert report.gap_spaces[name] == "module"
            assert (
                float(torch.nn.functional.cosine_similarity(b0, art.vector(name, "mean").double(), 0))
                > 1 - 1e-6
            )
        else:
            assert report.gap_spaces[name] == "layer"
            layer = int(name.split(".layers.")[1].split(".")[0])
            assert float(torch.nn.functional.cosine_similarity(b0, gaps[layer], 0)) > 1 - 1e-5, name
    assert kinds == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert any("fc1" in n and "own output gap" in n for n in report.notes)
    # the module space (an ablation arm): every module its own output gap
    _, pm_m, rep_m = build(
        "tiny-blip2", art, init="gap", init_options={"gap_source": "mean", "space": "module"}
    )
    assert set(rep_m.gap_spaces.values()) == {"module"}
    fc2 = next(n for n in rep_m.modules if n.endswith("fc2"))
    b0 = weights(pm_m, fc2)[1][:, 0].double()
    assert float(torch.nn.functional.cosine_similarity(b0, art.vector(fc2, "mean").double(), 0)) > 1 - 1e-6
