"""Question-answering sets: VQAv2 / OK-VQA (official question + annotation JSON) and POPE (JSON lines).

A :class:`QARecord` is one question about one image, with the answer a model is trained on and the
human answers it is scored against. Like the caption loaders, loading only parses and checks the JSON
(errors name the file and the question id); images are opened later.

Formats (as published):

* **VQA** (VQAv2, OK-VQA): a questions file ``{"data_subtype": "val2014", "questions": [{"image_id",
  "question", "question_id"}]}`` and an annotations file ``{"annotations": [{"question_id", "image_id",
  "answers": [{"answer", "answer_confidence", "answer_id"}] × 10, "multiple_choice_answer",
  "answer_type", "question_type"}]}``. Images are found with ``image_template`` (default
  ``COCO_{data_subtype}_{image_id:012d}.jpg``, the file names of the COCO 2014 images VQA uses) under
  the image directory. The training target is ``multiple_choice_answer`` (the most frequent human
  answer); OK-VQA's annotations have none, so the most frequent human answer is taken (ties: the first).
* **POPE**: one JSON object per line, ``{"question_id", "image", "text", "label": "yes" | "no"}``,
  ``image`` a file name under the image directory.

:func:`generate_synthetic_qa` writes both formats for a synthetic shapes set (see
:mod:`gapinit_ray.data.synthetic`), answered from each image's drawn scene.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gapinit_ray.data.records import CaptionRecord, _image_id, _one_line, _read_json
from gapinit_ray.errors import DataError

DEFAULT_IMAGE_TEMPLATE = "COCO_{data_subtype}_{image_id:012d}.jpg"
QA_GENERATOR_VERSION = 1


@dataclass(frozen=True)
class QARecord:
    """One question about one image.

    ``answer`` is the training target (VQA: ``multiple_choice_answer``; POPE: the label); ``answers`` are
    the human answers the official accuracy compares with (VQA: usually 10; POPE: just the label).
    ``answer_type`` is VQA's ``"yes/no"`` / ``"number"`` / ``"other"`` (POPE: ``"yes/no"``).
    """

    question_id: str
    image_id: str
    image_path: str
    question: str
    answer: str
    answers: tuple[str, ...]
    answer_type: str
    split: str
    kind: str = "vqa"  # "vqa" or "pope": which metrics score it


# ----------------------------------------------------------------------------------------- VQA
def load_vqa(
    questions: str,
    annotations: str,
    images: str,
    split: str,
    image_template: str = DEFAULT_IMAGE_TEMPLATE,
) -> list[QARecord]:
    """Parse an official VQA questions + annotations pair into records, ordered by question id."""
    qpath, apath = os.path.abspath(questions), os.path.abspath(annotations)
    root = os.path.abspath(images)
    if not os.path.isdir(root):
        raise DataError(
            f"image directory not found: {root} (for {qpath}); pass the folder holding the images"
        )
    qdata = _read_json(qpath, "VQA questions")
    adata = _read_json(apath, "VQA annotations")
    qlist = _list_key(qpath, qdata, "questions", '{"questions": [{"image_id", "question", "question_id"}]}')
    alist = _list_key(apath, adata, "annotations", '{"annotations": [{"question_id", "answers", ...}]}')
    subtype = qdata.get("data_subtype") if isinstance(qdata, dict) else None
    by_qid: dict[str, dict] = {}
    for k, ann in enumerate(alist):
        qid = _id(apath, ann.get("question_id") if isinstance(ann, dict) else None, f"annotation #{k}")
        if qid in by_qid:
            raise DataError(f"{apath}: question id {qid} is annotated twice; remove the duplicate")
        by_qid[qid] = ann
    records, seen = [], set()
    for k, q in enumerate(qlist):
        if not isinstance(q, dict):
            raise DataError(f"{qpath}: question #{k} is a {type(q).__name__}, expected an object")
        qid = _id(qpath, q.get("question_id"), f"question #{k}", seen)
        text = q.get("question")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{qpath}: question id {qid} has no question text")
        raw_image_id = q.get("image_id")
        image_id = _id(qpath, raw_image_id, f"question id {qid}")
        ann = by_qid.get(qid)
        if ann is None:
            raise DataError(
                f"{apath}: question id {qid} of {qpath} has no annotation; pass the annotation file of the "
                "same split (test-dev / test questions have no public answers and cannot be scored here)"
            )
        humans = _human_answers(apath, qid, ann.get("answers"))
        target = ann.get("multiple_choice_answer")
        if not isinstance(target, str) or not target.strip():
            target = Counter(humans).most_common(1)[0][0]  # OK-VQA: no multiple_choice_answer
        kind = ann.get("answer_type") if isinstance(ann.get("answer_type"), str) else "other"
        path = os.path.join(root, _image_file(qpath, image_template, raw_image_id, subtype, split))
        records.append(
            QARecord(qid, image_id, os.path.normpath(path), " ".join(text.split()), target.strip(),
                     humans, kind, split)
        )  # fmt: skip
    if not records:
        raise DataError(f"{qpath}: no questions")
    return sorted(records, key=lambda r: _natural(r.question_id))


def _human_answers(path: str, qid: str, answers: Any) -> tuple[str, ...]:
    if not isinstance(answers, list) or not answers:
        raise DataError(f"{path}: question id {qid} has no 'answers' (VQA annotations list 10 human answers)")
    out = []
    for a in answers:
        text = a.get("answer") if isinstance(a, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{path}: question id {qid} has an answer without an 'answer' string: {a!r}")
        out.append(text)
    return tuple(out)


def _image_file(path: str, template: str, image_id: Any, subtype: Any, split: str) -> str:
    try:
        return template.format(image_id=image_id, data_subtype=subtype, split=split)
    except (KeyError, ValueError, IndexError) as e:
        raise DataError(
            f"{path}: image_template {template!r} does not fit image id {image_id!r} (data_subtype "
            f"{subtype!r}): {_one_line(e)}; fields are {{image_id}}, {{data_subtype}}, {{split}}"
        ) from None


# ---------------------------------------------------------------------------------------- POPE
def load_pope(annotations: str, images: str, split: str) -> list[QARecord]:
    """Parse a POPE JSON-lines file (``{"question_id", "image", "text", "label"}`` per line)."""
    path, root = os.path.abspath(annotations), os.path.abspath(images)
    if not os.path.isfile(path):
        raise DataError(f"POPE file not found: {path}")
    if not os.path.isdir(root):
        raise DataError(f"image directory not found: {root} (for {path}); pass the folder holding the images")
    records, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{n}: not a JSON object ({e.msg}); POPE files hold one per line"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            qid = _id(path, row.get("question_id"), f"line {n}", seen)
            image, text, label = row.get("image"), row.get("text"), row.get("label")
            if not isinstance(image, str) or not image or not isinstance(text, str) or not text.strip():
                raise DataError(f"{path}:{n}: question id {qid} needs a non-empty 'image' and 'text'")
            label = label.strip().lower() if isinstance(label, str) else label
            if label not in ("yes", "no"):
                raise DataError(
                    f"{path}:{n}: question id {qid} has label {row.get('label')!r}; use 'yes' or 'no'"
                )
            records.append(
                QARecord(qid, os.path.splitext(image)[0], os.path.normpath(os.path.join(root, image)),
                         " ".join(text.split()), label, (label,), "yes/no", split, "pope")
            )  # fmt: skip
    if not records:
        raise DataError(f"{path}: no questions")
    return records


# --------------------------------------------------------------------------------- calibration
def calibration_records(records: list[QARecord]) -> list[CaptionRecord]:
    """QA records as calibration pairs: one record per image, each "question answer" text a caption.

    Gap-Init pools the text side over the text the adapter learns to relate to the image; in VQA that is
    the question and its answer together (see the README, "Question answering"). Answers alone are 1-3
    tokens from a small vocabulary ("yes", "2"), whose pooled features barely depend on the image.
    """
    by_image: dict[str, tuple[str, str, list[str]]] = {}
    for r in records:
        entry = by_image.setdefault(r.image_path, (r.image_id, r.split, []))
        entry[2].append(f"{r.question} {r.answer}")
    return [CaptionRecord(i, path, tuple(texts), split) for path, (i, split, texts) in by_image.items()]


# ----------------------------------------------------------------------------------- synthetic
def generate_synthetic_qa(dataset_path: str) -> str:
    """Write VQA- and POPE-format question files for a synthetic shapes set; return their directory.

    Per image, from its drawn scene: "what colour is the <shape>?" (when exactly one shape of that kind
    is drawn; answer type "other"), "how many shapes are there?" ("1" / "2", "number") and "is there a
    <shape> in the image?" ("yes/no", a drawn kind or an absent one, alternating). Every question gets 10
    identical human answers. POPE gets one present and one absent object per image (balanced labels).
    Files, per split: ``vqa_<split>_questions.json``, ``vqa_<split>_annotations.json`` (``data_subtype``
    = the set's id prefix, so ``image_template: "{data_subtype}-{image_id:06d}.png"`` finds the images)
    and ``pope_<split>.jsonl``. Written once into ``<set dir>-qa/`` (atomically: a temporary directory
    renamed into place), next to the set, and reused while the set's manifest is unchanged.
    """
    from gapinit_ray.data._random import StableRandom
    from gapinit_ray.data.shapes import VARIANTS
    from gapinit_ray.data.synthetic import MANIFEST, _locked

    set_dir = os.path.dirname(os.path.abspath(dataset_path))
    out = set_dir.rstrip(os.sep) + "-qa"
    with open(os.path.join(set_dir, MANIFEST), encoding="utf-8") as f:
        source_hash = json.load(f)["content_sha256"]
    stamp = {"version": QA_GENERATOR_VERSION, "source": source_hash}
    if _stamp_matches(out, stamp):
        return out
    with _locked(out + ".lock"):
        if _stamp_matches(out, stamp):
            return out
        with open(dataset_path, encoding="utf-8") as f:
            entries = json.load(f)["images"]
        files = _synthetic_qa_files(entries, VARIANTS, StableRandom)
        tmp = f"{out}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(tmp)
        try:
            for name, text in files.items():
                with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                    f.write(text)
            with open(os.path.join(tmp, "qa_manifest.json"), "w", encoding="utf-8") as f:
                json.dump(stamp, f)
            if os.path.lexists(out):
                shutil.rmtree(out)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _stamp_matches(out: str, stamp: dict) -> bool:
    try:
        with open(os.path.join(out, "qa_manifest.json"), encoding="utf-8") as f:
            return json.load(f) == stamp
    except (OSError, ValueError):
        return False


def _synthetic_qa_files(entries: list[dict], variants: dict, rng_cls) -> dict[str, str]:
    questions: dict[str, list] = {}
    annotations: dict[str, list] = {}
    pope: dict[str, list[str]] = {}
    prefix = {}
    for entry in entries:
        match = re.fullmatch(r"(.+)-(\d+)", entry["imgid"])
        if match is None:  # pragma: no cover - generate_synthetic writes "<variant>-s<seed>-<index>"
            raise DataError(f"synthetic image id {entry['imgid']!r} has no numeric index")
        subtype, index = match.group(1), int(match.group(2))
        split = entry["split"]
        prefix.setdefault(split, subtype)
        shapes = entry["scene"]["shapes"]
        kinds = [s["shape"] for s in shapes]
        vocab = variants[entry["imgid"].split("-")[0]]
        rng = rng_cls("synthetic-qa", QA_GENERATOR_VERSION, entry["imgid"])
        absent = [k for k in vocab.shapes if k not in kinds]
        asked = rng.choice(kinds) if index % 2 == 0 or not absent else rng.choice(absent)
        qa = [
            ("how many shapes are there?", str(len(shapes)), "number", "how many"),
            (f"is there a {asked} in the image?", "yes" if asked in kinds else "no", "yes/no", "is there a"),
        ]
        for s in shapes:
            if kinds.count(s["shape"]) == 1:
                qa.append((f"what colour is the {s['shape']}?", s["colour"], "other", "what color is the"))
        for k, (text, answer, kind, qtype) in enumerate(qa):
            qid = index * 10 + k
            questions.setdefault(split, []).append({"image_id": index, "question": text, "question_id": qid})
            annotations.setdefault(split, []).append({
                "question_id": qid, "image_id": index, "question_type": qtype, "answer_type": kind,
                "multiple_choice_answer": answer,
                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": j} for j in range(1, 11)],
            })  # fmt: skip
        lines = pope.setdefault(split, [])
        # at most 2 of the >= 3 kinds of a vocabulary are drawn, so an absent kind always exists
        for k, (kind, label) in enumerate(((rng.choice(kinds), "yes"), (rng.choice(absent), "no"))):
            row = {"question_id": index * 10 + k, "image": entry["filename"],
                   "text": f"Is there a {kind} in the image?", "label": label}  # fmt: skip
            lines.append(json.dumps(row))
    files = {}
    for split in questions:
        files[f"vqa_{split}_questions.json"] = json.dumps(
            {"data_subtype": prefix[split], "task_type": "OpenEnded", "questions": questions[split]}, indent=1
        )
        files[f"vqa_{split}_annotations.json"] = json.dumps(
            {"data_subtype": prefix[split], "annotations": annotations[split]}, indent=1
        )
        files[f"pope_{split}.jsonl"] = "".join(line + "\n" for line in pope[split])
    return files


# ------------------------------------------------------------------------------------- helpers
def _list_key(path: str, data: Any, key: str, shape: str) -> list:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a top-level {key!r} list (official format: {shape})")
    return value


def _id(path: str, value: Any, where: str, seen: set[str] | None = None) -> str:
    """A question / image id as a string; with ``seen``, also a question id not met before."""
    qid = _image_id(path, value, where, "id")
    if seen is not None:
        if qid in seen:
            raise DataError(f"{path}: {where}: question id {qid} appears twice; question ids must be unique")
        seen.add(qid)
    return qid


def _natural(text: str) -> tuple:
    parts = re.split(r"([0-9]+)", text)
    return tuple((int(p), p) if k % 2 else p for k, p in enumerate(parts))
