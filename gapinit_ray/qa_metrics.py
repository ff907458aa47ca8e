"""Scores of the question-answering tasks: the official VQA accuracy (VQAv2, OK-VQA) and POPE's metrics.

Pure Python, no torch: the driver and the tests import it freely.

**VQA accuracy** follows the official evaluation script (``vqaEval.py`` of GT-Vision-Lab/VQA) step by
step, quirks included, so the numbers can be compared with published ones:

* the prediction has newlines/tabs turned into spaces and is stripped, then goes through
  :func:`process_punctuation` and :func:`process_digit_article`;
* the 10 human answers go through :func:`process_punctuation` only, and only when they are not all the
  same string (the annotation files ship answers already normalized);
* each human answer is left out in turn: accuracy against the other 9 is ``min(#matches / 3, 1)``, and
  the question's accuracy is the mean over those 10 subsets (so 3 matching humans give 0.9, not 1.0).

**POPE** follows POPE's ``evaluate.py``: an answer is cut at its first ``.``, commas are removed, and it
is "no" when one of its space-separated words is ``no``, ``No`` or ``not``, else "yes". "yes" is the
positive class. Where a ratio has a zero denominator (no positive prediction, say) it is reported as 0.

Every score is a fraction in [0, 1], like the caption metrics (the papers print 100×).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gapinit_ray.errors import GapinitError
from gapinit_ray.spec import POPE_METRICS, VQA_METRICS

__all__ = ["POPE_METRICS", "VQA_METRICS", "normalize_answer", "score_pope", "score_vqa", "vqa_accuracy"]

#: VQA answer types (the annotation's ``answer_type``) and the metric that averages over each.
ANSWER_TYPE_METRICS = {"yes/no": "vqa_acc_yes_no", "number": "vqa_acc_number", "other": "vqa_acc_other"}


class QAEvalError(GapinitError):
    """Predictions and ground truth of a QA evaluation do not fit together."""


# ----------------------------------------------------------------------- official normalization
# The tables of the official vqaEval.py, verbatim (keys with capitals never match: text is
# lower-cased before the lookup, as in the original).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# As in the original: "(?!<=\d)" is a (harmless) negative lookahead, so this is "a period not followed by
# a digit"; and the original passes re.UNICODE (= 32) where `count` goes, so at most 32 are removed.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: drop or space out punctuation, strip sentence periods.

    A mark is deleted when it touches a space somewhere in the text (``"yes !"``) or the text has a
    digit-comma-digit (``"1,000"`` → ``"1000"``), otherwise replaced by a space (``"black/white"`` →
    ``"black white"``). Periods not followed by a digit are removed (``"3.5"`` keeps its period).
    """
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, number words → digits, drop a/an/the,
    restore apostrophes of contractions (``"dont"`` → ``"don't"``), single spaces."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """A predicted answer as the official evaluation compares it with the human answers."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Official accuracy of one predicted answer against the (usually 10) human answers.

    Each human answer is left out in turn and the prediction scores ``min(#matches among the others / 3,
    1)``; the result is the mean over the left-out choices.
    """
    if isinstance(human_answers, str) or not human_answers:
        raise QAEvalError("a VQA question needs a list of human answers (10 in VQAv2 and OK-VQA)")
    pred = normalize_answer(prediction)
    gts = list(human_answers)
    if len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    total = 0.0
    for left_out in range(len(gts)):
        matches = sum(1 for k, a in enumerate(gts) if k != left_out and a == pred)
        total += min(1.0, matches / 3)
    return total / len(gts)


def score_vqa(
    predictions: Mapping[Any, str],
    human_answers: Mapping[Any, Sequence[str]],
    answer_types: Mapping[Any, str] | None = None,
) -> dict[str, float]:
    """Mean official accuracy over questions, overall and per answer type.

    Args:
        predictions: question id -> predicted answer; exactly the ids of ``human_answers``.
        human_answers: question id -> the human answers (the annotation's ``answers[*].answer``).
        answer_types: question id -> ``"yes/no"`` / ``"number"`` / ``"other"``.

    Returns:
        every name of :data:`VQA_METRICS`; a per-type accuracy is NaN when no question has that type
        (e.g. OK-VQA, whose questions are all "other"), so the report's columns stay fixed.
    """
    ids = _same_ids(predictions, human_answers)
    per_type: dict[str, list[float]] = {t: [] for t in ANSWER_TYPE_METRICS}
    accs = []
    for qid in ids:
        acc = vqa_accuracy(_as_text(predictions[qid], qid), human_answers[qid])
        accs.append(acc)
        kind = (answer_types or {}).get(qid)
        if kind in per_type:
            per_type[kind].append(acc)
    out = {"vqa_acc": sum(accs) / len(accs)}
    for kind, name in ANSWER_TYPE_METRICS.items():
        values = per_type[kind]
        out[name] = sum(values) / len(values) if values else math.nan
    return out


# ------------------------------------------------------------------------------------------ POPE
def pope_answer(text: str) -> str:
    """POPE's parsing of a free-form answer into ``"yes"`` / ``"no"``."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def score_pope(predictions: Mapping[Any, str], labels: Mapping[Any, str]) -> dict[str, float]:
    """POPE's accuracy, precision, recall, F1 and yes-ratio ("yes" positive), as fractions.

    Args:
        predictions: question id -> the model's raw answer (parsed with :func:`pope_answer`).
        labels: question id -> ``"yes"`` or ``"no"``; exactly the ids of ``predictions``.
    """
    ids = _same_ids(predictions, labels)
    tp = fp = tn = fn = 0
    for qid in ids:
        label = labels[qid]
        if label not in ("yes", "no"):
            raise QAEvalError(f"POPE label of question {qid!r} is {label!r}; labels are 'yes' or 'no'")
        pred = pope_answer(_as_text(predictions[qid], qid)) == "yes"
        if label == "yes":
            tp, fn = tp + pred, fn + (not pred)
        else:
            fp, tn = fp + pred, tn + (not pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "pope_acc": (tp + tn) / len(ids),
        "pope_precision": precision,
        "pope_recall": recall,
        "pope_f1": f1,
        "pope_yes_ratio": (tp + fp) / len(ids),
    }


def _same_ids(predictions: Mapping[Any, Any], truth: Mapping[Any, Any]) -> list[Any]:
    missing = [q for q in truth if q not in predictions]
    extra = [q for q in predictions if q not in truth]
    if missing or extra:
        raise QAEvalError(
            f"predictions and ground truth cover different questions: {len(missing)} without a prediction "
            f"(e.g. {missing[:3]}), {len(extra)} unknown (e.g. {extra[:3]}); score the same set"
        )
    if not truth:
        raise QAEvalError("no questions to score")
    return list(truth)


def _as_text(value: Any, qid: Any) -> str:
    if not isinstance(value, str):
        raise QAEvalError(f"the prediction for question {qid!r} is a {type(value).__name__}, not a string")
    return value
