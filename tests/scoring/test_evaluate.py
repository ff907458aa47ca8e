"""Caption evaluation: pycocoevalcap scores checked against values worked out by hand from each metric's
definition, the input checks, skipped metrics, no leaked JVMs, and sharded generation + rank-0 scoring on
the tiny BLIP-2 preset."""

from __future__ import annotations

import json
import math
import random
import shutil
import warnings

import pytest
import torch

from gapinit_ray import evaluate as ev
from gapinit_ray.backbones import load_backbone
from gapinit_ray.data import CaptionRecord, generate_synthetic, load_caption_set
from gapinit_ray.errors import DataError, GapinitError, SpecError
from gapinit_ray.evaluate import (
    EvalError,
    MetricUnavailableWarning,
    eval_records,
    evaluate_split,
    generate_captions,
    score_captions,
)
from gapinit_ray.scoring import java as java_scorers
from gapinit_ray.spec import EvalSpec, GenerationSpec

BETA2 = 1.2**2  # pycocoevalcap's Rouge: self.beta = 1.2
SIGMA = 6.0  # pycocoevalcap's Cider: sigma=6.0 (gaussian length penalty on the n-gram *bigram* counts)

# Two images whose references share no word, so every reference n-gram has document frequency 1 and
# CIDEr's idf weight is log(2 images) - log(1) = log 2 for all of them. An n-gram that is in no
# reference gets log(2) - log(max(1, 0)) = log 2 as well, so all weights are the same w = log 2 and
# every cosine below is a ratio of n-gram counts.
CIDER_REFS = {"img1": ["red circle near top"], "img2": ["blue square below it"]}


def approx(x: float):
    return pytest.approx(x, rel=1e-6, abs=1e-9)


# ------------------------------------------------------------------------------------------- BLEU
def test_bleu_identical_prediction_is_one():
    refs = {"a": ["a cat sits on the mat"], "b": ["a dog runs in the park", "dogs running"]}
    preds = {"a": "a cat sits on the mat", "b": "a dog runs in the park"}
    scores = score_captions(refs, preds, ["bleu1", "bleu2", "bleu3", "bleu4"])
    assert list(scores) == ["bleu1", "bleu2", "bleu3", "bleu4"]
    for value in scores.values():
        assert value == approx(1.0)


def test_bleu_partial_overlap_with_brevity_penalty_by_hand():
    refs = {
        "x": ["the cat is on the mat", "a cat sat there on a big red mat"],  # 6 and 9 words
        "y": ["a dog runs"],  # 3 words
    }
    preds = {"x": "the the the cat", "y": "a dog runs fast"}  # 4 + 4 words
    # Clipped unigram matches: x: "the" 3x in the prediction, at most 2x in one reference -> 2, "cat" 1 -> 3
    # of 4; y: "a", "dog", "runs" -> 3 of 4. pycocoevalcap's BLEU is corpus level: counts are pooled.
    p1 = (3 + 3) / (4 + 4)
    # Bigrams: x has "the the" x2 (in no reference) and "the cat" (in the first) -> 1 of 3;
    # y has "a dog", "dog runs" (matched) and "runs fast" -> 2 of 3.
    p2 = (1 + 2) / (3 + 3)
    # Effective reference length: per image the reference length *closest* to the prediction's,
    # x: |6-4| = 2 < |9-4| = 5 -> 6; y: 3. Summed r = 9 > c = 8, so BP = exp(1 - r/c).
    bp = math.exp(1 - 9 / 8)
    scores = score_captions(refs, preds, ["bleu1", "bleu2"])
    assert scores["bleu1"] == approx(p1 * bp)
    assert scores["bleu2"] == approx(math.sqrt(p1 * p2) * bp)


def test_bleu_no_brevity_penalty_when_prediction_is_longer_than_the_closest_reference():
    # Closest reference of the 4-word prediction is the 3-word one (|3-4| < |8-4|): c = 4 >= r = 3, BP = 1.
    refs = {"a": ["a dog runs", "there is a brown dog running on the grass"]}
    scores = score_captions(refs, {"a": "a dog runs quickly"}, ["bleu1"])
    assert scores["bleu1"] == approx(3 / 4)


# ----------------------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_lcs_f_measure_by_hand():
    refs = {"a": ["the cat sat on the mat", "a cat"], "b": ["two dogs play"]}
    preds = {"a": "a cat on the mat", "b": "two dogs play"}
    # Prediction a (5 tokens) vs "the cat sat on the mat" (6): LCS = "cat on the mat" = 4 -> P 4/5, R 4/6.
    # vs "a cat" (2): LCS = 2 -> P 2/5, R 2/2. pycocoevalcap takes max P and max R over the references
    # separately (P = 4/5 from the first, R = 1 from the second), then F = (1+b²)PR / (R + b²P), b = 1.2.
    p, r = 4 / 5, 1.0
    f_a = (1 + BETA2) * p * r / (r + BETA2 * p)
    f_b = 1.0  # identical: P = R = 1
    scores = score_captions(refs, preds, ["rouge_l"])
    assert scores["rouge_l"] == approx((f_a + f_b) / 2)  # mean over images


def test_rouge_l_single_reference_by_hand():
    p, r = 4 / 5, 4 / 6
    expected = (1 + BETA2) * p * r / (r + BETA2 * p)
    scores = score_captions({"a": ["the cat sat on the mat"]}, {"a": "a cat on the mat"}, ["rouge_l"])
    assert scores["rouge_l"] == approx(expected)


# ------------------------------------------------------------------------------------------- CIDEr
def test_cider_identical_predictions_score_ten():
    # Each image: hypothesis and reference tf-idf vectors are equal for n = 1..4, so every cosine is 1;
    # CIDEr-D averages the 4 orders (1), divides by the number of references (1) and multiplies by 10.
    preds = {k: v[0] for k, v in CIDER_REFS.items()}
    assert score_captions(CIDER_REFS, preds, ["cider"])["cider"] == approx(10.0)


def test_cider_disjoint_words_score_zero():
    preds = {"img1": "green star far away", "img2": "purple diamond over there"}
    assert score_captions(CIDER_REFS, preds, ["cider"])["cider"] == approx(0.0)


def test_cider_partial_overlap_by_hand():
    preds = {"img1": "red circle big dog", "img2": "blue square below it"}
    # img1, all weights w (see CIDER_REFS): unigrams {red, circle, big, dog} vs {red, circle, near, top}:
    # 2w² / (2w * 2w) = 1/2. Bigrams {red circle, circle big, big dog} vs {red circle, circle near,
    # near top}: w² / (√3w * √3w) = 1/3. Tri- and 4-grams share nothing: 0. Both have 3 bigrams (the
    # "length" CIDEr-D's penalty compares), so the penalty is exp(0) = 1.
    img1 = 10 * (1 / 2 + 1 / 3 + 0 + 0) / 4
    img2 = 10.0  # identical
    assert score_captions(CIDER_REFS, preds, ["cider"])["cider"] == approx((img1 + img2) / 2)


def test_cider_length_penalty_sigma_six_by_hand():
    preds = {"img1": "red circle near", "img2": "blue square below it"}
    # img1: unigrams 3w² / (√3w * 2w) = √3/2; bigrams {red circle, circle near} vs 3 reference bigrams:
    # 2w² / (√2w * √3w) = 2/√6; trigram {red circle near} vs 2: w² / (w * √2w) = 1/√2; no 4-gram: 0.
    # Length penalty: 2 vs 3 bigrams, delta = -1, exp(-delta² / (2 sigma²)) = exp(-1/72).
    penalty = math.exp(-(1**2) / (2 * SIGMA**2))
    img1 = 10 * penalty * (math.sqrt(3) / 2 + 2 / math.sqrt(6) + 1 / math.sqrt(2) + 0) / 4
    img2 = 10.0
    assert score_captions(CIDER_REFS, preds, ["cider"])["cider"] == approx((img1 + img2) / 2)


# -------------------------------------------------------------------------------- METEOR, no leaks
def java_children() -> int:
    """Live or zombie ``java`` processes below this one."""
    psutil = pytest.importorskip("psutil")
    count = 0
    for child in psutil.Process().children(recursive=True):
        try:
            if "java" in child.name().lower():
                count += 1
        except psutil.NoSuchProcess:
            pass
    return count


needs_java = pytest.mark.skipif(bool(ev.unavailable_metrics(["meteor"])), reason="METEOR needs java on PATH")


@needs_java
def test_meteor_identical_and_disjoint_and_no_leaked_java_process(monkeypatch):
    started = []  # keep the scorers alive: their JVMs must end at once, not when GC collects them
    real_start = java_scorers.start_meteor
    monkeypatch.setattr(java_scorers, "start_meteor", lambda: started.append(real_start()) or started[-1])
    before = java_children()
    refs = {"a": ["a man riding a wave on a surfboard"], "b": ["two dogs playing in the snow"]}
    same = score_captions(refs, {"a": refs["a"][0], "b": refs["b"][0]}, ["meteor", "bleu1"])
    disjoint = score_captions(refs, {"a": "purple sky", "b": "green tree"}, ["meteor"])
    assert same["meteor"] > 0.9
    assert disjoint["meteor"] == pytest.approx(0.0, abs=1e-3)
    assert len(started) == 2
    assert all(m.meteor_p.returncode is not None for m in started)
    # Each call started a METEOR JVM and a tokenizer JVM; none may be left, running or zombie.
    assert java_children() <= before


@needs_java
def test_meteor_process_dying_is_left_out_with_a_notice(monkeypatch):
    started = []

    def dead_meteor():
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
        started.append(meteor)
        return meteor

    monkeypatch.setattr(java_scorers, "start_meteor", dead_meteor)
    with pytest.warns(MetricUnavailableWarning, match="METEOR process failed"):
        scores = score_captions({"a": ["a cat"]}, {"a": "a cat"}, ["meteor", "rouge_l"])
    assert scores == {"rouge_l": approx(1.0)}
    assert not started[0].lock.locked()  # else pycocoevalcap's __del__ would hang the garbage collector
    started[0].__del__()


def _hold_slot(name: str, slots: int):
    """A process that holds one of ``slots`` machine slots ``name`` until killed; returns once it holds."""
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from gapinit_ray.scoring.java_lease import java_lease\n"
        f"with java_lease({slots}, name={name!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _in_thread(fn):
    import threading

    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(value=fn()), daemon=True)
    thread.start()
    return thread, out


def test_machine_slots_limit_holders_across_processes_and_free_when_a_holder_dies():
    import uuid

    from gapinit_ray.scoring.java_lease import java_lease

    name = f"test-{uuid.uuid4().hex[:8]}"
    first = _hold_slot(name, 2)
    second = _hold_slot(name, 2)  # two slots: a second holder gets in at once
    try:
        thread, out = _in_thread(lambda: java_lease(2, name=name).__enter__() or "got")
        thread.join(1.5)
        assert thread.is_alive(), "a third holder got a slot while both were held"
        second.kill()  # the kernel drops a dead holder's lock: its slot is free
        second.wait()
        thread.join(5)
        assert out.get("value") == "got"
    finally:
        for p in (first, second):
            p.kill()
            p.wait()
    with java_lease(None, name=name):  # no limit: never waits
        pass


@needs_java
def test_meteor_waits_for_a_free_java_slot_then_scores():
    holder = _hold_slot("java", 1)
    refs = {"a": ["a man riding a wave on a surfboard"]}
    try:
        thread, out = _in_thread(
            lambda: score_captions(refs, {"a": refs["a"][0]}, ["meteor"], java_max_concurrent=1)
        )
        thread.join(2)
        assert thread.is_alive(), "METEOR started while the only Java slot was held by another process"
    finally:
        holder.kill()
        holder.wait()
    thread.join(60)
    assert out["value"]["meteor"] > 0.9
    # BLEU alone starts no heavy JVM: it does not wait for the slot
    holder = _hold_slot("java", 1)
    try:
        assert score_captions(refs, {"a": refs["a"][0]}, ["bleu1"], java_max_concurrent=1)["bleu1"] == approx(
            1.0
        )
    finally:
        holder.kill()
        holder.wait()


# -------------------------------------------------------------------------------- inputs and skips
def test_mismatched_ids_are_named():
    refs = {"a": ["a cat"], "only-ref": ["a dog"]}
    preds = {"a": "a cat", "only-pred": "a bird"}
    with pytest.raises(EvalError, match="only-pred") as info:
        score_captions(refs, preds, ["bleu1"])
    assert "only-ref" in str(info.value)
    assert isinstance(info.value, GapinitError)
    assert "\n" not in str(info.value)


def test_empty_prediction_scores_zero():
    refs = {"a": ["a cat on the mat"], "b": ["two dogs play"]}
    scores = score_captions(refs, {"a": "", "b": "two dogs play"}, ["rouge_l", "bleu1", "cider"])
    assert scores["rouge_l"] == approx(0.5)  # 0 for "a", 1 for "b"
    # BLEU-1 pools counts: 3 matches of 3 predicted words, but c = 3 < r = 5 + 3 -> BP = exp(1 - 8/3).
    assert scores["bleu1"] == approx(math.exp(1 - 8 / 3))
    only_empty = score_captions({"a": ["a cat"]}, {"a": ""}, ["bleu4", "rouge_l"])
    assert only_empty == {"bleu4": approx(0.0), "rouge_l": 0.0}


def test_tokenization_lowercases_drops_punctuation_and_keeps_lines_aligned():
    # A newline inside a caption must not shift the captions after it onto other images.
    refs = {"a": ["Red circle, near TOP.", "..."], "b": ["blue square below it"]}
    preds = {"a": "red\ncircle near top!", "b": "Blue square\u2028below it"}
    scores = score_captions(refs, preds, ["rouge_l", "cider"])
    assert scores["rouge_l"] == approx(1.0)
    assert scores["cider"] == approx(10.0)  # the punctuation-only reference was ignored


def test_bad_inputs():
    with pytest.raises(SpecError, match="bleu5"):
        score_captions({"a": ["x"]}, {"a": "x"}, ["bleu5"])
    with pytest.raises(EvalError, match="no captions"):
        score_captions({}, {}, ["bleu1"])
    with pytest.raises(EvalError, match="'a'"):
        score_captions({"a": ["x"]}, {"a": 3}, ["bleu1"])
    with pytest.raises(EvalError, match="'a'"):
        score_captions({"a": ["  "]}, {"a": "x"}, ["bleu1"])
    with pytest.raises(EvalError, match="punctuation"):
        score_captions({"a": ["..."]}, {"a": "x"}, ["bleu1"])


def test_spice_without_its_jars_is_left_out_with_a_notice(monkeypatch):
    monkeypatch.setattr(java_scorers, "missing_spice_files", lambda: ["/nowhere/stanford-corenlp-3.6.0.jar"])
    with pytest.warns(MetricUnavailableWarning, match="spice"):
        scores = score_captions({"a": ["a cat"]}, {"a": "a cat"}, ["spice", "bleu1"])
    assert list(scores) == ["bleu1"]


def test_without_java_meteor_is_left_out_and_python_tokenizer_used(monkeypatch):
    refs = {"a": ["A red circle, near the top."], "b": ["two blue squares"]}
    preds = {"a": "a red circle near top", "b": "Two blue squares!"}
    with_java = score_captions(refs, preds, ["bleu1", "rouge_l", "cider"])
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = score_captions(refs, preds, ["meteor", "bleu1", "rouge_l", "cider"])
    messages = [str(w.message) for w in caught if issubclass(w.category, MetricUnavailableWarning)]
    assert any(m.startswith("meteor left out") for m in messages)
    assert any("Python approximation" in m for m in messages)
    assert "meteor" not in scores
    assert scores == pytest.approx(with_java)  # plain captions tokenize the same either way


# --------------------------------------------------------------------------------------- subsets
def rec(image_id: str) -> CaptionRecord:
    return CaptionRecord(image_id, f"/data/{image_id}.png", ("a caption",), "val")


def test_eval_records_fixed_subset_in_natural_id_order():
    records = [rec(i) for i in ("img10", "img2", "img1", "img33", "img3")]
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    assert [r.image_id for r in eval_records(records, 3)] == ["img1", "img2", "img3"]
    assert eval_records(shuffled, 3) == eval_records(records, 3)  # same images whatever the order
    assert eval_records(eval_records(records, 3), 3) == eval_records(records, 3)
    assert [r.image_id for r in eval_records(records, None)] == ["img1", "img2", "img3", "img10", "img33"]
    assert len(eval_records(records, 100)) == 5


def test_eval_records_errors():
    with pytest.raises(SpecError, match="subset"):
        eval_records([rec("a")], 0)
    with pytest.raises(DataError, match="empty"):
        eval_records([], None)
    with pytest.raises(DataError, match="'a'"):
        eval_records([rec("a"), rec("a")], None)


# ------------------------------------------------------------------------------------ generation
GEN = GenerationSpec(max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny-blip2", seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("evalset")
    return generate_synthetic(str(root / "down"), variant="downstream", num_images=16, seed=0)


@pytest.fixture(scope="module")
def val_records(dataset):
    return load_caption_set("karpathy", dataset, None, "val")


@pytest.fixture(scope="module")
def all_records(dataset):
    return load_caption_set("karpathy", dataset, None)


def test_generate_one_string_per_record(tiny, val_records):
    out = generate_captions(tiny.model, tiny, val_records, batch_size=4, generation=GEN)
    assert list(out) == [r.image_id for r in val_records]
    assert all(isinstance(text, str) for text in out.values())


def test_generate_restores_training_flags(tiny, val_records):
    tiny.model.train()
    tiny.model.vision_model.eval()  # a frozen tower left in eval must stay in eval
    try:
        generate_captions(tiny.model, tiny, val_records[:1], batch_size=1, generation=GEN)
        assert tiny.model.training and tiny.model.language_model.training
        assert not tiny.model.vision_model.training
    finally:
        tiny.model.eval()


def test_rank_shards_cover_every_record_once(tiny, all_records):
    full = generate_captions(tiny.model, tiny, all_records, batch_size=4, generation=GEN)
    world_size = 3
    shards = [
        generate_captions(
            tiny.model, tiny, all_records, batch_size=4, generation=GEN, rank=r, world_size=world_size
        )
        for r in range(world_size)
    ]
    for r, shard in enumerate(shards):
        assert list(shard) == [x.image_id for x in all_records[r::world_size]]
    ids = [i for shard in shards for i in shard]
    assert sorted(ids) == sorted(r.image_id for r in all_records)
    assert len(ids) == len(set(ids))
    merged = {k: v for shard in shards for k, v in shard.items()}
    assert merged == full  # same images, same left-padded prompts: same greedy captions


def test_synced_gpus_keeps_generate_calls_equal_across_ranks(tiny, all_records):
    class Counting(torch.nn.Module):
        """Stands in for a ZeRO-3 model: counts generate calls and appends one fixed token."""

        def __init__(self):
            super().__init__()
            self.calls = 0
            self.kwargs = {}

        def generate(self, input_ids, **kwargs):
            self.calls += 1
            self.kwargs = kwargs
            new = torch.full((input_ids.shape[0], 1), tiny.tokenizer.convert_tokens_to_ids("a"))
            return torch.cat([input_ids, new], dim=1)

    records = all_records[:3]  # rank 0 gets 2 images, rank 1 gets 1
    calls, outs = [], []
    for rank in (0, 1):
        model = Counting()
        outs.append(
            generate_captions(
                model, tiny, records, batch_size=1, generation=GEN, rank=rank, world_size=2, synced_gpus=True
            )
        )
        calls.append(model.calls)
        assert model.kwargs["synced_gpus"] is True
    assert calls == [2, 2]  # rank 1 ran one discarded filler batch
    assert [len(o) for o in outs] == [2, 1]


def test_evaluate_split_with_gather_writes_captions_and_scores(tiny, val_records, tmp_path):
    spec = EvalSpec(metrics=["bleu1", "bleu4", "rouge_l", "cider"], batch_size=2, generation=GEN)
    rank1 = generate_captions(
        tiny.model, tiny, eval_records(val_records, None), batch_size=2, generation=GEN, rank=1, world_size=2
    )
    seen = []

    def gather(local):
        seen.append(local)
        return [local, rank1]

    scores = evaluate_split(
        tiny.model, tiny, val_records, spec, rank=0, world_size=2, gather=gather, out_dir=tmp_path / "ep1"
    )
    assert list(scores) == spec.metrics
    assert all(isinstance(v, float) and v >= 0 for v in scores.values())
    data = json.loads((tmp_path / "ep1" / "captions.json").read_text())
    ordered = eval_records(val_records, None)
    assert list(data) == [r.image_id for r in ordered]
    predictions = {**seen[0], **rank1}
    for r in ordered:
        assert data[r.image_id] == {"prediction": predictions[r.image_id], "references": list(r.captions)}
    assert sorted(p.name for p in (tmp_path / "ep1").iterdir()) == ["captions.json"]  # no temp file left
    references = {r.image_id: list(r.captions) for r in ordered}
    assert scores == score_captions(references, predictions, spec.metrics)

    other = evaluate_split(tiny.model, tiny, val_records, spec, rank=1, world_size=2, gather=lambda d: None)
    assert other is None


def test_evaluate_split_rejects_overlapping_shards_and_missing_gather(tiny, val_records):
    spec = EvalSpec(metrics=["bleu1"], subset=1, batch_size=1, generation=GEN)
    with pytest.raises(EvalError, match="more than one rank"):
        evaluate_split(tiny.model, tiny, val_records, spec, world_size=2, gather=lambda d: [d, d])
    with pytest.raises(ValueError, match="gather"):
        evaluate_split(tiny.model, tiny, val_records, spec, world_size=2)
