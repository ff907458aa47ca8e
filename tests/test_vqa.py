"""VQA accuracy and POPE metrics against hand-computed values; VQA / POPE data in the official formats."""

from __future__ import annotations

import math

import pytest

from gapinit_ray.qa_metrics import (
    QAEvalError,
    normalize_answer,
    pope_answer,
    process_punctuation,
    score_pope,
    score_vqa,
    vqa_accuracy,
)

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
