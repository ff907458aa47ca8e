"""Backbone registry and the tiny presets: forward, exact masks, labels, image → LM flow, save/reload
offline, generation, determinism, and the user-facing errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gapinit_ray.backbones import FAMILIES, PRESETS, family_of, known_backbones, load_backbone
from gapinit_ray.backbones.tokenizer import tokenizer_fingerprint
from gapinit_ray.errors import BackboneError

from ..conftest import modules_loaded_by

CAPTIONS = [
    "a small red circle on the left",
    "two large blue squares at the top right",
    "a",
    "three green triangles in the middle of the image, Über ✓",
]


def images(n: int, seed: int = 0, sizes: list[tuple[int, int]] | None = None) -> list[Image.Image]:
    """Random-noise RGB images (seeded); ``sizes`` (w, h) default to 32×32."""
    rng = np.random.default_rng(seed)
    sizes = sizes or [(32, 32)] * n
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


@pytest.fixture(scope="module", params=PRESETS)
def backbone(request):
    return load_backbone(request.param, seed=0)


def last_layer_output(bb, inputs) -> torch.Tensor:
    """(B, L, d) output of the last LM decoder layer, captured with a forward hook (as calibration does)."""
    captured = {}

    def hook(_module, _args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    handle = bb.lm_layers()[-1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            bb.model(**inputs)
    finally:
        handle.remove()
    return captured["h"]


# ---------------------------------------------------------------------------------------------- forward
def test_forward_logits_shape(backbone):
    batch = backbone.build_batch(images(4), CAPTIONS)
    with torch.no_grad():
        out = backbone.model(**batch.inputs)
    bsz, length = batch.inputs["input_ids"].shape
    assert bsz == 4
    assert out.logits.shape == (4, length, len(backbone.tokenizer))
    assert torch.isfinite(out.logits).all()


def test_masks_are_exact(backbone):
    caps = CAPTIONS
    # Different aspect ratios: Qwen2-VL then gives different numbers of image tokens per sample.
    batch = backbone.build_batch(images(4, sizes=[(32, 32), (48, 24), (20, 40), (32, 32)]), caps)
    ids, attn = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    assert batch.image_mask.dtype == torch.bool and batch.caption_mask.dtype == torch.bool
    assert batch.image_mask.shape == ids.shape == batch.caption_mask.shape
    # image_mask: exactly the placeholder positions
    assert torch.equal(batch.image_mask, ids == backbone.image_token_id)
    assert (batch.image_mask.sum(1) > 0).all()
    assert not (batch.image_mask & batch.caption_mask).any()
    # never pad; right padding: all real tokens first
    assert not (batch.caption_mask & (attn == 0)).any()
    assert not (batch.image_mask & (attn == 0)).any()
    lengths = attn.sum(1)
    assert len(set(lengths.tolist())) > 1, "captions of different lengths must produce padding"
    for b in range(len(caps)):
        assert attn[b, : lengths[b]].all() and not attn[b, lengths[b] :].any()
        alone = backbone.tokenizer(caps[b].strip(), add_special_tokens=False)["input_ids"]
        pos = batch.caption_mask[b].nonzero().squeeze(1)
        assert ids[b, pos].tolist() == list(alone)
        assert (pos.diff() == 1).all(), "the caption must be one contiguous span"


def test_prompt_is_outside_masks(backbone):
    prompt = "Question: what is in the picture? Answer:"
    with_prompt = backbone.build_batch(images(2), CAPTIONS[:2], prompt=prompt, with_labels=True)
    no_prompt = backbone.build_batch(images(2), CAPTIONS[:2], prompt="", with_labels=True)
    prompt_len = len(backbone.text_ids(prompt))

    def non_caption(batch):
        return batch.inputs["attention_mask"].sum(1) - batch.caption_mask.sum(1)

    assert (non_caption(with_prompt) - non_caption(no_prompt) == prompt_len).all()
    for b, cap in enumerate(CAPTIONS[:2]):
        pos = with_prompt.caption_mask[b].nonzero().squeeze(1)
        ids = with_prompt.inputs["input_ids"][b, pos].tolist()
        assert ids == backbone.caption_token_ids(cap, prompt)
    assert ((with_prompt.labels != -100).sum(1) == with_prompt.caption_mask.sum(1) + 1).all()


def test_special_token_strings_in_captions_stay_text(backbone):
    image_tok = backbone.tokenizer.convert_ids_to_tokens(backbone.image_token_id)
    cap = f"a {image_tok} red circle"
    batch = backbone.build_batch(images(2), [cap, "a red circle"], with_labels=True)
    assert torch.equal(batch.image_mask.sum(1)[0], batch.image_mask.sum(1)[1])
    pos = batch.caption_mask[0].nonzero().squeeze(1)
    literal = backbone.tokenizer(cap, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert batch.inputs["input_ids"][0, pos].tolist() == list(literal)
    with pytest.raises(BackboneError, match="special token"):
        backbone.build_batch(images(1), ["a red circle"], prompt=f"look {image_tok} here")


def test_image_reaches_the_lm(backbone):
    caps = CAPTIONS[:2]
    a = backbone.build_batch(images(2, seed=1), caps)
    b = backbone.build_batch(images(2, seed=2), caps)
    assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])
    assert not torch.equal(a.inputs["pixel_values"], b.inputs["pixel_values"])
    ha, hb = last_layer_output(backbone, a.inputs), last_layer_output(backbone, b.inputs)
    cap = a.caption_mask
    diff = (ha[cap] - hb[cap]).abs().amax(-1)
    assert (diff > 1e-4).all(), f"caption hidden states ignore the image: {diff}"
    # Causal LM: text before the first image token cannot see the image.
    first_image = a.image_mask.float().argmax(1)
    for i, start in enumerate(first_image.tolist()):
        if start:
            assert torch.allclose(ha[i, :start], hb[i, :start])


def test_labels(backbone):
    batch = backbone.build_batch(images(4), CAPTIONS, with_labels=True)
    labels, ids = batch.labels, batch.inputs["input_ids"]
    assert labels.shape == ids.shape
    trained = labels != -100
    # caption positions + exactly one end token right after each caption
    assert (trained & ~batch.caption_mask).sum(1).tolist() == [1] * 4
    assert torch.equal(labels[trained], ids[trained])
    for b in range(4):
        last = batch.caption_mask[b].nonzero().max()
        assert trained[b, last + 1] and not trained[b, last + 2 :].any()
    assert not (trained & (batch.inputs["attention_mask"] == 0)).any()
    assert backbone.build_batch(images(1), CAPTIONS[:1]).labels is None
    with torch.no_grad():
        loss = backbone.model(**batch.inputs, labels=labels).loss
    assert torch.isfinite(loss)


def test_generation(backbone):
    batch = backbone.build_generation_batch(images(3, sizes=[(32, 32), (48, 24), (32, 32)]))
    attn = batch.inputs["attention_mask"]
    assert attn[:, -1].all(), "generation batches are left padded"
    assert not batch.caption_mask.any() and batch.labels is None
    assert torch.equal(batch.image_mask, batch.inputs["input_ids"] == backbone.image_token_id)
    with torch.no_grad():
        seq = backbone.model.generate(**batch.inputs, max_new_tokens=3, do_sample=False)
    new = backbone.generated_ids(batch, seq)
    assert 1 <= new.shape[1] <= 3
    texts = backbone.decode(new)
    assert len(texts) == 3 and all(isinstance(t, str) and t == t.strip() for t in texts)
    assert backbone.decode(torch.tensor([backbone.tokenizer.pad_token_id, backbone.image_token_id])) == [""]


# ---------------------------------------------------------------------------------------------- structure
def test_module_paths(backbone):
    modules = dict(backbone.model.named_modules())
    assert modules[backbone.lm_layers_path] is backbone.lm_layers()
    assert isinstance(backbone.lm_layers(), torch.nn.ModuleList) and backbone.num_lm_layers == 2
    for prefix in backbone.vision_module_prefixes:
        assert prefix in modules
    lm_names = {n.rsplit(".", 1)[-1] for n, _ in backbone.lm_layers().named_modules()}
    assert set(backbone.default_target_modules) <= lm_names
    assert not any(backbone.lm_layers_path.startswith(p) for p in backbone.vision_module_prefixes)
    assert backbone.family == family_of(backbone.name)
    assert backbone.source_id == f"{backbone.name}:seed=0"
    assert backbone.lm_hidden_size == 64


def test_param_count_and_speed(backbone):
    n = sum(p.numel() for p in backbone.model.parameters())
    assert 50_000 < n < 1_000_000, n
    batch = backbone.build_batch(images(8), CAPTIONS * 2)
    import time

    with torch.no_grad():
        backbone.model(**batch.inputs)  # warm-up
        start = time.perf_counter()
        backbone.model(**batch.inputs)
        assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------- save / load
def test_save_and_reload_offline(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone.save(tmp_path)
    reloaded = load_backbone(backbone.name, path=tmp_path)
    assert type(reloaded) is type(backbone) and reloaded.family == backbone.family
    assert reloaded.source_id == str(tmp_path.resolve())
    assert tokenizer_fingerprint(reloaded.tokenizer) == tokenizer_fingerprint(backbone.tokenizer)
    a = backbone.build_batch(images(3), CAPTIONS[:3], with_labels=True)
    b = reloaded.build_batch(images(3), CAPTIONS[:3], with_labels=True)
    for key in a.inputs:
        assert torch.equal(a.inputs[key], b.inputs[key]), key
    assert torch.equal(a.image_mask, b.image_mask) and torch.equal(a.caption_mask, b.caption_mask)
    with torch.no_grad():
        la, lb = backbone.model(**a.inputs).logits, reloaded.model(**b.inputs).logits
    assert torch.equal(la, lb)
    # the family name and `auto` load the same directory; a different family is refused by name
    assert family_of("auto", tmp_path) == backbone.family
    assert type(load_backbone("auto", path=tmp_path)) is type(backbone)
    by_family = load_backbone(backbone.family, path=tmp_path)
    assert by_family.name == backbone.family and type(by_family) is type(backbone)
    other = next(f for f in FAMILIES if f != backbone.family)
    with pytest.raises(BackboneError, match=f"not a {other} one"):
        load_backbone(other, path=tmp_path)


def test_same_seed_same_weights():
    a = load_backbone("tiny-qwen2-vl", seed=3)
    b = load_backbone("tiny-qwen2-vl", seed=3)
    c = load_backbone("tiny-qwen2-vl", seed=4)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert tokenizer_fingerprint(a.tokenizer) == tokenizer_fingerprint(c.tokenizer)
    assert a.source_id != c.source_id


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "tiny-qwen2-vl"])
def test_same_seed_same_weights_other_presets(preset):
    torch.manual_seed(123)
    before = torch.rand(1)
    a, b = load_backbone(preset, seed=7), load_backbone(preset, seed=7)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before), "building a preset must not touch the global RNG"
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tokenizer_is_identical_across_processes():
    code = (
        "from gapinit_ray.backbones import load_backbone;"
        "from gapinit_ray.backbones.tokenizer import tokenizer_fingerprint;"
        "print(tokenizer_fingerprint(load_backbone('tiny-gemma3').tokenizer))"
    )
    here = tokenizer_fingerprint(load_backbone("tiny-gemma3").tokenizer)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == here


# ---------------------------------------------------------------------------------------------- registry / errors
def test_registry_names():
    assert known_backbones() == [*FAMILIES, *PRESETS]
    assert family_of("tiny-blip2") == "blip2"
    assert family_of("tiny-qwen2-vl") == "qwen2_vl"
    assert family_of("tiny-gemma3") == "gemma3"
    for fam in FAMILIES:
        assert family_of(fam) == fam


def test_unknown_name_lists_known_backbones():
    with pytest.raises(BackboneError) as err:
        load_backbone("llava-7b")
    for name in known_backbones():
        assert name in str(err.value)
    with pytest.raises(BackboneError, match="did you mean 'tiny-blip2'"):
        family_of("tiny-blip")


def test_known_backbones_does_not_import_torch():
    imports = "from gapinit_ray.backbones import known_backbones, family_of; known_backbones(); family_of('tiny-blip2')"
    assert modules_loaded_by(imports, "torch", "transformers") == [False, False]


def test_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(BackboneError, match="pass path="):
        load_backbone("qwen2_vl")
    missing = tmp_path / "nope"
    with pytest.raises(BackboneError, match="does not exist") as err:
        load_backbone("blip2", path=missing)
    assert str(missing) in str(err.value)
    with pytest.raises(BackboneError, match="config") as err:
        load_backbone("gemma3", path=tmp_path)  # exists, but holds no checkpoint
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BackboneError, match="auto"):
        family_of("auto", tmp_path)
    with pytest.raises(BackboneError, match="dtype"):
        load_backbone("tiny-blip2", dtype="float8")


def test_hub_id_offline_names_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="HF_HUB_OFFLINE") as err:
        load_backbone("qwen2_vl", path="Qwen/Qwen2-VL-7B-Instruct", revision="main")
    assert "Qwen/Qwen2-VL-7B-Instruct" in str(err.value)


def test_blip2_checkpoint_without_image_token_index(tmp_path, monkeypatch):
    """Old BLIP-2 configs lack image_token_index; loading must restore it, or the image is ignored."""
    import json

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = load_backbone("tiny-blip2")
    bb.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["image_token_index"] = None
    (tmp_path / "config.json").write_text(json.dumps(config))
    old = load_backbone("blip2", path=tmp_path)
    assert old.image_token_id == bb.image_token_id
    a, b = bb.build_batch(images(2), CAPTIONS[:2]), old.build_batch(images(2), CAPTIONS[:2])
    with torch.no_grad():
        assert torch.equal(bb.model(**a.inputs).logits, old.model(**b.inputs).logits)


def test_bad_batches_raise_backbone_error(backbone):
    with pytest.raises(BackboneError, match="caption 1"):
        backbone.build_batch(images(2), ["a red circle", "   "])
    with pytest.raises(BackboneError, match="2 images but 1 captions"):
        backbone.build_batch(images(2), ["a red circle"])
    with pytest.raises(BackboneError, match="image 0"):
        backbone.build_batch([np.zeros((32, 32, 3))], ["a red circle"])


def test_dtype_bfloat16_forward():
    bb = load_backbone("tiny-gemma3", dtype="bfloat16")
    batch = bb.build_batch(images(2), CAPTIONS[:2])
    assert batch.inputs["pixel_values"].dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(bb.model(**batch.inputs).logits.float()).all()
