"""Scoring of generated answers: official VQA accuracy, or POPE's metrics (:mod:`gapinit_ray.qa_metrics`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from gapinit_ray.atomic import write_atomic
from gapinit_ray.data import QARecord
from gapinit_ray.scoring.common import EvalError, id_key, some_ids

#: Its question-answering counterpart: ``{question_id: {"question", "prediction", "answer", "answers"}}``.
ANSWERS_FILE = "answers.json"


def score_answers(
    records: Sequence[QARecord], predictions: Mapping[str, str], out_dir: str | os.PathLike | None = None
) -> dict[str, float]:
    """Score generated answers: official VQA accuracy for VQA records, POPE's metrics for POPE records.

    ``predictions`` maps question id -> generated answer and must cover ``records`` exactly. With
    ``out_dir``, :data:`ANSWERS_FILE` (question, prediction, target and human answers per question id,
    in id order) is written first, atomically.
    """
    from gapinit_ray.qa_metrics import score_pope, score_vqa

    truth = {r.question_id: r for r in records}
    if set(truth) != set(predictions):
        lost = sorted(set(truth) ^ set(predictions), key=id_key)
        raise EvalError(
            f"answers and questions differ in question id(s) {some_ids(lost)}; score the same set"
        )
    if out_dir is not None:
        data = {
            q: {
                "question": r.question,
                "prediction": predictions[q],
                "answer": r.answer,
                "answers": list(r.answers),
            }
            for q, r in truth.items()
        }
        write_atomic(Path(out_dir) / ANSWERS_FILE, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if records[0].kind == "pope":
        return score_pope(predictions, {q: r.answer for q, r in truth.items()})
    answers = {q: r.answers for q, r in truth.items()}
    return score_vqa(predictions, answers, {q: r.answer_type for q, r in truth.items()})
