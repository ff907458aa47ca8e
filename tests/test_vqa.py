"""VQA accuracy and POPE metrics against hand-computed values; VQA / POPE data in the official formats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from gapinit_ray.data import check_images, generate_synthetic, generate_synthetic_qa, load_pope, load_vqa
from gapinit_ray.data.resolve import calibration_pairs, split_records
from gapinit_ray.data.shapes import COLOURS
from gapinit_ray.errors import DataError, SpecError
from gapinit_ray.qa_metrics import (
    QAEvalError,
    normalize_answer,
    pope_answer,
    process_punctuation,
    score_pope,
    score_vqa,
    vqa_accuracy,
)
from gapinit_ray.spec import POPE_METRICS, VQA_METRICS, SplitRef, spec_from_dict

from .conftest import QUICKSTART

# ------------------------------------------------------------------------------- VQA accuracy


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),  # number word -> digit, lower-case
        ("none", "0"),
        ("The dog.", "dog"),  # article dropped, sentence period stripped
        ("a red ball", "red ball"),
        ("an apple", "apple"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("1,000", "1000"),  # digit-comma-digit: every listed mark is deleted, not spaced
        ("black/white", "black white"),  # a mark touching no space becomes a space
        ("yes !", "yes"),  # a mark next to a space is deleted
        ("dont", "don't"),  # contractions get their apostrophe back
        ("Whats up\tthere\n", "what's up there"),
        ("  many   spaces  ", "many spaces"),
    ],
)
def test_answer_normalization_matches_the_official_rules(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_accuracy_averages_over_the_ten_leave_one_out_subsets() -> None:
    # 3 humans said "2", 7 said "3". Predicting "two" (-> "2"): leaving out one of the three "2"s leaves
    # 2 matches (2/3), leaving out a "3" leaves 3 matches (1): (3 * 2/3 + 7 * 1) / 10 = 0.9
    humans = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("two", humans) == pytest.approx(0.9)
    assert vqa_accuracy("Two.", humans) == pytest.approx(0.9)
    # "3" is said by 7: every 9-subset has >= 6 matches -> 1.0
    assert vqa_accuracy("three", humans) == pytest.approx(1.0)
    assert vqa_accuracy("four", humans) == 0.0


def test_accuracy_with_articles_and_contractions() -> None:
    # 2 of 10 said "dog": leaving out a "dog" -> 1/3 (2 subsets), else 2/3 (8 subsets) -> 0.6
    humans = ["dog"] * 2 + ["cat"] * 8
    assert vqa_accuracy("The dog", humans) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("a dog", humans) == pytest.approx(0.6)
    # the contraction table restores "don't" from "dont"
    humans = ["don't"] * 2 + ["no"] * 8
    assert vqa_accuracy("dont", humans) == pytest.approx(0.6)
    assert vqa_accuracy("No", humans) == pytest.approx(1.0)


def test_human_answers_get_punctuation_processing_only_when_they_disagree() -> None:
    # not unanimous: "black/white" of the humans becomes "black white", matching the normalized prediction
    humans = ["black/white"] * 2 + ["gray"] * 8
    assert vqa_accuracy("black/white", humans) == pytest.approx(0.6)
    assert vqa_accuracy("black white", humans) == pytest.approx(0.6)
    # unanimous: the official script leaves the human answers untouched, so the normalized prediction
    # "black white" matches nothing (a quirk kept on purpose for comparable numbers)
    assert vqa_accuracy("black/white", ["black/white"] * 10) == 0.0
    assert process_punctuation("black/white") == "black white"


def test_score_vqa_overall_and_per_answer_type() -> None:
    answers = {
        1: ["2"] * 3 + ["3"] * 7,  # "two" -> 0.9
        2: ["yes"] * 10,  # "Yes" -> 1.0
        3: ["dog"] * 2 + ["cat"] * 8,  # "the dog" -> 0.6
        4: ["no"] * 10,  # "yes" -> 0.0
    }
    types = {1: "number", 2: "yes/no", 3: "other", 4: "yes/no"}
    preds = {1: "two", 2: "Yes", 3: "the dog", 4: "yes"}
    scores = score_vqa(preds, answers, types)
    assert scores["vqa_acc"] == pytest.approx((0.9 + 1.0 + 0.6 + 0.0) / 4)
    assert scores["vqa_acc_yes_no"] == pytest.approx(0.5)
    assert scores["vqa_acc_number"] == pytest.approx(0.9)
    assert scores["vqa_acc_other"] == pytest.approx(0.6)
    only_other = score_vqa({3: "cat"}, {3: answers[3]}, {3: "other"})
    assert only_other["vqa_acc"] == pytest.approx(1.0)
    assert math.isnan(only_other["vqa_acc_number"])
    with pytest.raises(QAEvalError, match="different questions"):
        score_vqa({1: "two"}, answers, types)


# ------------------------------------------------------------------------------------------ POPE


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("Yes, there is a dog in the image.", "yes"),
        ("No.", "no"),
        ("There is not a cat.", "no"),
        ("no, there isn't", "no"),
        ("Nope", "yes"),  # only the words no / No / not count
        ("Yes. There is no cat next to it.", "yes"),  # only the first sentence is read
        ("nothing", "yes"),
    ],
)
def test_pope_answer_parsing(text: str, parsed: str) -> None:
    assert pope_answer(text) == parsed


def test_pope_metrics_match_a_hand_count() -> None:
    truth = ["yes", "yes", "no", "no", "yes", "no", "no", "yes", "yes"]
    labels = {f"q{i}": label for i, label in enumerate(truth, 1)}
    preds = {
        "q1": "Yes, there is a dog.",  # TP
        "q2": "No.",  # FN
        "q3": "There is not a cat",  # TN
        "q4": "yes",  # FP
        "q5": "yes",  # TP
        "q6": "no",  # TN
        "q7": "I do not know",  # TN
        "q8": "Yes.",  # TP
        "q9": "no, there isn't",  # FN
    }
    # TP 3, FP 1, TN 3, FN 2
    s = score_pope(preds, labels)
    assert s["pope_acc"] == pytest.approx(6 / 9)
    assert s["pope_precision"] == pytest.approx(3 / 4)
    assert s["pope_recall"] == pytest.approx(3 / 5)
    assert s["pope_f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    assert s["pope_yes_ratio"] == pytest.approx(4 / 9)
    # a model that always says "no": no positive prediction, precision and F1 are 0 by convention
    never = score_pope(dict.fromkeys(labels, "No"), labels)
    assert never["pope_precision"] == 0.0 and never["pope_f1"] == 0.0 and never["pope_yes_ratio"] == 0.0
    assert never["pope_acc"] == pytest.approx(4 / 9)
    with pytest.raises(QAEvalError, match="'maybe'"):
        score_pope({"q1": "yes"}, {"q1": "maybe"})


# ------------------------------------------------------------------------------------- data sets


def _write_json(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_load_vqa_official_format_and_ok_vqa_without_multiple_choice_answer(tmp_path) -> None:
    images = tmp_path / "val2014"
    images.mkdir()
    questions = {
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 42, "question": "What  is the man holding?", "question_id": 420},
            {"image_id": 7, "question": "How many dogs?", "question_id": 70},
        ],
    }
    humans = ["frisbee"] * 4 + ["disc"] * 6
    annotations = {
        "annotations": [
            {
                "question_id": 420, "image_id": 42, "answer_type": "other", "question_type": "what is the",
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate(humans, 1)],
            },  # OK-VQA style: no multiple_choice_answer -> the most frequent human answer
            {
                "question_id": 70, "image_id": 7, "answer_type": "number", "question_type": "how many",
                "multiple_choice_answer": "2",
                "answers": [{"answer": "2", "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)],
            },
        ]
    }  # fmt: skip
    q = _write_json(tmp_path / "q.json", questions)
    a = _write_json(tmp_path / "a.json", annotations)
    records = load_vqa(q, a, str(images), "val")
    assert [r.question_id for r in records] == ["70", "420"]  # question id order
    dog, man = records
    assert dog.answer == "2" and dog.answer_type == "number" and len(dog.answers) == 10
    assert man.answer == "disc" and man.question == "What is the man holding?"
    assert man.image_path == str(images / "COCO_val2014_000000000042.jpg")
    del annotations["annotations"][1]
    a = _write_json(tmp_path / "a.json", annotations)
    with pytest.raises(DataError, match=r"question id 70 .* has no annotation"):
        load_vqa(q, a, str(images), "val")


def test_load_pope_jsonl(tmp_path) -> None:
    lines = [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dog in the image?", "label": "no"},
    ]  # fmt: skip
    path = tmp_path / "coco_pope_random.json"
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))
    records = load_pope(str(path), str(tmp_path), "test")
    assert [(r.question_id, r.answer, r.answers) for r in records] == [
        ("1", "yes", ("yes",)),
        ("2", "no", ("no",)),
    ]
    path.write_text(json.dumps({**lines[0], "label": "maybe"}) + "\n")
    with pytest.raises(DataError, match="label 'maybe'"):
        load_pope(str(path), str(tmp_path), "test")


def test_synthetic_qa_sets_answer_from_the_drawn_scene(tmp_path) -> None:
    dataset = generate_synthetic(str(tmp_path / "set"), variant="downstream", num_images=20, seed=3)
    scenes = {int(e["imgid"].rsplit("-", 1)[1]): e for e in json.loads(Path(dataset).read_text())["images"]}
    qa_dir = Path(generate_synthetic_qa(dataset))
    images = str(tmp_path / "set" / "images")
    records = load_vqa(
        str(qa_dir / "vqa_train_questions.json"),
        str(qa_dir / "vqa_train_annotations.json"),
        images,
        "train",
        "{data_subtype}-{image_id:06d}.png",
    )
    check_images(list({r.image_path: r for r in records}.values()))
    kinds_seen = set()
    for r in records:
        shapes = scenes[int(r.image_id)]["scene"]["shapes"]
        assert scenes[int(r.image_id)]["split"] == "train"
        kinds_seen.add(r.answer_type)
        if r.question == "how many shapes are there?":
            assert r.answer == str(len(shapes))
        elif r.question.startswith("what colour is the "):
            kind = r.question.removeprefix("what colour is the ").rstrip("?")
            assert [s["colour"] for s in shapes if s["shape"] == kind] == [r.answer]
        else:
            kind = r.question.removeprefix("is there a ").removesuffix(" in the image?")
            assert r.answer == ("yes" if kind in {s["shape"] for s in shapes} else "no")
    assert kinds_seen == {"number", "other", "yes/no"}
    pope = load_pope(str(qa_dir / "pope_val.jsonl"), images, "val")
    assert [r.answer for r in pope].count("yes") == [r.answer for r in pope].count("no") > 0
    assert generate_synthetic_qa(dataset) == str(qa_dir)  # reused, not rewritten


# ------------------------------------------------------------------------------------------ spec


def qa_raw(tmp_path: Path, task: str = "vqa") -> dict:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["storage"] = str(tmp_path / "store")
    raw["task"] = task
    raw["data"]["sources"] = {
        "shapes": {"format": "synthetic", "variant": "downstream", "num_images": 48},
        "shapes_vqa": {"format": "synthetic", "variant": "downstream", "num_images": 48, "content": "vqa"},
        "shapes_pope": {"format": "synthetic", "variant": "downstream", "num_images": 48, "content": "pope"},
    }
    raw["data"]["train"] = {"source": "shapes_vqa", "split": "train"}
    raw["data"]["val"] = {"source": "shapes_pope" if task == "pope" else "shapes_vqa", "split": "val"}
    raw["calibration"]["sources"] = [{"source": "shapes_vqa", "split": "train"}]
    raw["scheduler"]["metric"] = "val_pope_f1" if task == "pope" else "val_vqa_acc"
    return raw


def test_spec_tasks_metrics_and_transfer(tmp_path) -> None:
    spec = spec_from_dict(qa_raw(tmp_path))
    assert spec.reported_metrics() == ["train_loss", "val_loss", *(f"val_{m}" for m in VQA_METRICS)]
    raw = qa_raw(tmp_path, "pope")
    raw["eval"]["transfer"] = {"shapes": {"source": "shapes", "split": "test"}}
    spec = spec_from_dict(raw)
    assert "val_pope_f1" in spec.reported_metrics() and "val_vqa_acc" not in spec.reported_metrics()
    assert [m for m in spec.reported_metrics() if m.startswith("shapes_")] == [
        f"shapes_{m}" for m in spec.eval.metrics
    ]
    # a VQA sweep cannot evaluate on captions; POPE is not training data
    raw = qa_raw(tmp_path)
    raw["data"]["val"] = {"source": "shapes", "split": "val"}
    with pytest.raises(
        SpecError, match=r"data\.val\.source: 'shapes' holds caption data, but task 'vqa' evaluates"
    ):
        spec_from_dict(raw)
    raw = qa_raw(tmp_path, "pope")
    raw["data"]["train"] = {"source": "shapes_pope", "split": "train"}
    with pytest.raises(SpecError, match="trains on vqa or caption data"):
        spec_from_dict(raw)
    raw = qa_raw(tmp_path)
    raw["eval"]["transfer"] = {"val": {"source": "shapes", "split": "test"}}
    with pytest.raises(SpecError, match=r"eval\.transfer name 'val'"):
        spec_from_dict(raw)
    raw["eval"]["transfer"] = {"flickr": {"source": "flickr30k", "split": "test"}}
    with pytest.raises(
        SpecError, match=r"eval\.transfer\.flickr\.source: 'flickr30k' is not in data\.sources"
    ):
        spec_from_dict(raw)
    raw = qa_raw(tmp_path)
    raw["train"]["question_prompt"] = "Q: {q} A:"
    with pytest.raises(SpecError, match="only the field"):
        spec_from_dict(raw)
    raw = qa_raw(tmp_path)
    raw["data"]["sources"]["vqa"] = {"format": "vqa", "annotations": "a.json", "images": "/x", "split": "val"}
    with pytest.raises(SpecError, match="format 'vqa' needs questions"):
        spec_from_dict(raw)


def test_vqa_source_calibrates_on_question_plus_answer(tmp_path) -> None:
    raw = qa_raw(tmp_path)
    raw["calibration"]["num_samples"] = 16
    spec = spec_from_dict(raw)
    pairs = calibration_pairs(spec)
    assert len(pairs) == spec.calibration.num_samples
    questions = ("how many shapes are there? ", "is there a ", "what colour is the ")
    for record, text in pairs:
        assert text.startswith(questions) and text in record.captions
        assert text.split("? ", 1)[1] in ("1", "2", "yes", "no", *COLOURS)  # the answer follows
    assert len({r.image_path for r, _ in pairs}) == len(pairs)  # one text per image


# ----------------------------------------------------------------------- training and evaluation


@pytest.fixture(scope="module")
def tiny_blip2():
    from gapinit_ray.backbones import load_backbone

    return load_backbone("tiny-blip2")


def test_question_batches_label_only_the_answer_and_evaluation_scores_answers(tiny_blip2, tmp_path) -> None:
    from gapinit_ray.evaluate import ANSWERS_FILE, evaluate_split
    from gapinit_ray.spec import EvalSpec
    from gapinit_ray.train import Collate, QAPairs, pairs_of

    spec = spec_from_dict(qa_raw(tmp_path))
    records = split_records(spec.data, spec.data.val, spec.storage)
    pairs = pairs_of(records)
    assert isinstance(pairs, QAPairs) and len(pairs) == len(records)
    batch = Collate(tiny_blip2, None)([pairs[0], pairs[1]])
    tok = tiny_blip2.tokenizer
    first = batch.inputs["input_ids"][0][batch.inputs["attention_mask"][0] == 1]
    text = tok.decode(first[first != tiny_blip2.image_token_id])
    assert text == f"<s>Question: {records[0].question} Short answer: {records[0].answer}</s>"
    labelled = batch.labels[0][batch.labels[0] != -100]
    assert tok.decode(labelled) == f" {records[0].answer}</s>"  # the answer and the end token only

    eval_spec = EvalSpec(subset=5, generation={"max_new_tokens": 3})
    scores = evaluate_split(tiny_blip2.model, tiny_blip2, records, eval_spec, out_dir=tmp_path / "out")
    assert set(scores) == set(VQA_METRICS) and 0.0 <= scores["vqa_acc"] <= 1.0
    written = json.loads((tmp_path / "out" / ANSWERS_FILE).read_text())
    assert list(written) == [r.question_id for r in records[:5]]
    # the written predictions give back the reported accuracy
    again = score_vqa(
        {q: w["prediction"] for q, w in written.items()},
        {q: w["answers"] for q, w in written.items()},
        {r.question_id: r.answer_type for r in records[:5]},
    )
    assert again["vqa_acc"] == pytest.approx(scores["vqa_acc"])
    pope = split_records(spec.data, SplitRef(source="shapes_pope", split="val"), spec.storage)
    scores = evaluate_split(tiny_blip2.model, tiny_blip2, pope, EvalSpec(generation={"max_new_tokens": 3}))
    assert list(scores) == list(POPE_METRICS)


@pytest.mark.slow
def test_tiny_vqa_sweep_with_pope_and_caption_transfer_runs_end_to_end(tmp_path) -> None:
    """One Gap-Init trial fine-tuned on synthetic VQA through the CLI (Ray Tune + Train + DeepSpeed on
    CPU), evaluated each epoch on VQA, and zero-shot on POPE and on captions of the same images."""
    import pandas as pd

    from gapinit_ray.results import ResultsStore

    from .test_sweep import _finish, _run_cli

    raw = qa_raw(tmp_path)
    raw["name"] = "tiny_vqa"
    raw["backbones"] = [{"name": "tiny-blip2", "pretrain": False}]
    raw["data"]["val"]["limit"] = 12
    raw["calibration"].update({"num_samples": 16, "workers": 1})
    raw["train"].update({"epochs": 2, "batch_size": 8, "max_steps_per_epoch": 2, "lr": 1e-2})
    raw["eval"].update(
        {
            "metrics": ["bleu4", "cider"],
            "final_metrics": [],
            "batch_size": 16,
            "generation": {"max_new_tokens": 4},
        }
    )
    raw["eval"]["transfer"] = {
        "pope": {"source": "shapes_pope", "split": "test", "limit": 8},
        "shapes": {"source": "shapes", "split": "test", "limit": 4},
    }
    raw["search"] = {"init": ["gap"], "seed": [1]}
    raw["scheduler"] = {"type": "fifo", "metric": "val_vqa_acc", "mode": "max"}
    raw["resources"] = {"workers_per_trial": 1, "cpus_per_worker": 1}
    spec_path = tmp_path / "vqa.yaml"
    spec_path.write_text(yaml.safe_dump(raw))

    proc = _run_cli("run", str(spec_path), "--num-cpus", "2", "--quiet", cwd=tmp_path)
    out, err = _finish(proc, 600)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]

    sweep_dir = tmp_path / "store" / "tiny_vqa"
    metrics = ResultsStore(str(tmp_path / "store"), "tiny_vqa").metrics().to_pandas()
    assert sorted(metrics["epoch"]) == [0.0, 1.0, 2.0]  # epoch 0: the model at init
    for column in ("val_vqa_acc", "pope_pope_f1", "pope_pope_yes_ratio", "shapes_cider", "val_loss"):
        assert column in metrics.columns, column
    last = metrics.sort_values("epoch").iloc[-1]
    assert 0.0 <= last["val_vqa_acc"] <= 1.0 and 0.0 <= last["pope_pope_acc"] <= 1.0
    assert last["shapes_cider"] >= 0.0 and last["val_loss"] > 0.0
    trial_dirs = list((sweep_dir / "captions").iterdir())
    assert len(trial_dirs) == 1
    epoch_dir = trial_dirs[0] / "epoch_2"
    answers = json.loads((epoch_dir / "answers.json").read_text())
    assert len(answers) == 12  # data.val.limit questions
    # the reported accuracy is the official accuracy of the answers written next to it
    again = score_vqa(
        {q: a["prediction"] for q, a in answers.items()}, {q: a["answers"] for q, a in answers.items()}
    )
    assert again["vqa_acc"] == pytest.approx(last["val_vqa_acc"])
    pope = json.loads((epoch_dir / "pope" / "answers.json").read_text())
    assert len(pope) == 8 and {a["answer"] for a in pope.values()} <= {"yes", "no"}
    assert (epoch_dir / "shapes" / "captions.json").exists()
    raw_rows = pd.read_parquet(sweep_dir / "results" / "metrics")
    assert raw_rows["pope_pope_f1"].notna().all()


def test_paper_table3_and_table4_specs_report_the_transfer_and_qa_metrics() -> None:
    from gapinit_ray.spec import grid_size, load_spec

    sweeps = Path(__file__).parents[1] / "sweeps"
    flickr = load_spec(sweeps / "table3_flickr_transfer.yaml")
    assert "flickr30k_cider" in flickr.reported_metrics() and grid_size(flickr) == 4
    assert flickr.data.sources[flickr.eval.transfer["flickr30k"].source].kind == "caption"
    vqa = load_spec(sweeps / "table4_vqa_pope.yaml")
    assert vqa.task == "vqa" and grid_size(vqa) == 4
    reported = vqa.reported_metrics()
    assert {"val_vqa_acc", "okvqa_vqa_acc", "pope_random_pope_f1", "pope_adversarial_pope_f1"} <= set(
        reported
    )
    assert not any(m.endswith("_cider") for m in reported)  # no caption metric on question answering
