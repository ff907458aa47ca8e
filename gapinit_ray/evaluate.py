"""Caption evaluation: generate captions with a (LoRA-adapted) backbone, then score them.

This module is the evaluation stage's entry point (:func:`evaluate_split`) and its generation part:
sharded generation for data-parallel workers, with the merge, scoring and ``captions.json`` on rank 0.
Scoring lives in :mod:`gapinit_ray.scoring` (COCO caption metrics, their Java processes, VQA / POPE
answers); its public names are importable from here too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gapinit_ray.atomic import write_atomic
from gapinit_ray.data import CaptionRecord, QARecord, load_image
from gapinit_ray.errors import DataError, SpecError
from gapinit_ray.scoring.answers import ANSWERS_FILE, score_answers
from gapinit_ray.scoring.captions import (
    EvalError,
    MetricUnavailableWarning,
    check_inputs,
    score_captions,
    unavailable_metrics,
)
from gapinit_ray.scoring.common import id_key, some_ids

if TYPE_CHECKING:  # pragma: no cover - typing only
    from gapinit_ray.backbones.base import Backbone
    from gapinit_ray.spec import EvalSpec, GenerationSpec

__all__ = [
    "ANSWERS_FILE",
    "CAPTIONS_FILE",
    "EvalError",
    "MetricUnavailableWarning",
    "eval_records",
    "evaluate_split",
    "generate_captions",
    "score_answers",
    "score_captions",
    "unavailable_metrics",
]

#: File rank 0 writes into ``out_dir``: ``{image_id: {"prediction": str, "references": [str, ...]}}``.
CAPTIONS_FILE = "captions.json"


def eval_records(records: Iterable[CaptionRecord], subset: int | None) -> list[CaptionRecord]:
    """The records to evaluate, in natural image-id order: all of them, or the first ``subset``.

    Question records (:class:`~gapinit_ray.data.QARecord`, VQA / POPE) are ordered, counted and keyed by
    question id instead: ``subset`` is then the first N questions.

    The subset is the first N in id order, not a random sample, so it is the same for every trial,
    seed and worker count: every trial of a sweep is scored on the same images. A ``subset`` larger
    than the split gives the whole split. Applying it twice changes nothing.

    Raises:
        DataError: no records, or two records with the same image id (predictions are keyed by id).
        SpecError: ``subset`` is not a positive integer or None.
    """
    records = list(records)
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise SpecError(f"eval subset must be a positive number of images or null, got {subset!r}")
    if not records:
        raise DataError("no records to evaluate: the eval split is empty; check eval.split and the data set")
    _check_unique(records)
    ordered = sorted(records, key=lambda r: id_key(_record_key(r)))
    return ordered if subset is None else ordered[:subset]


def _record_key(record: CaptionRecord | QARecord) -> str:
    """What predictions are keyed by: the image id of a caption record, the question id of a question."""
    return record.question_id if isinstance(record, QARecord) else record.image_id


def generate_captions(
    model: Any,
    backbone: Backbone,
    records: Sequence[CaptionRecord],
    *,
    batch_size: int,
    generation: GenerationSpec,
    prompt: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    synced_gpus: bool | None = None,
) -> dict[str, str]:
    """Caption this rank's shard of ``records``: ``records[rank::world_size]``, in batches.

    Strided sharding gives every rank the same number of images (+-1) whatever their order, and the ranks
    together cover every record exactly once. Decoding is greedy when ``generation.num_beams == 1``
    (``do_sample=False`` always). ``model`` (the backbone's model or a PEFT wrapper of it) is put in eval
    mode under ``torch.no_grad`` and each of its modules gets its previous training flag back afterwards.

    Args:
        model: what ``.generate`` is called on.
        backbone: builds the left-padded prompt batches and decodes the new tokens.
        records: the *full* evaluation list, identical on every rank.
        batch_size: images per ``generate`` call.
        generation: decoding settings.
        prompt: text after the image (``None``: the family's default prompt); for question records, the
            question template (``None``: the family's :attr:`~Backbone.default_question_prompt`).
        rank, world_size: this worker's place among the data-parallel workers.
        synced_gpus: ZeRO-3 / FSDP shard the weights, so every ``generate`` step is a collective: then
            each rank must make the same number of ``generate`` calls (short shards run a discarded
            filler batch) and HF must keep stepping until all ranks are done. ``None`` turns this on when
            transformers sees DeepSpeed ZeRO-3 with ``world_size > 1``; pass ``True`` when the trainer
            set up ZeRO-3 without transformers' DeepSpeed integration.

    Returns:
        image id -> generated caption (stripped, may be empty) for this rank's shard; question id ->
        generated answer for question records.
    """
    import torch

    _check_rank(rank, world_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SpecError(f"eval batch_size must be a positive integer, got {batch_size!r}")
    records = list(records)
    _check_unique(records)
    shard = records[rank::world_size]
    kwargs = _generate_kwargs(model, backbone, generation)
    if synced_gpus is None:
        synced_gpus = world_size > 1 and _zero3_enabled()
    n_batches = math.ceil(len(shard) / batch_size)
    if synced_gpus:
        kwargs["synced_gpus"] = True
        n_batches = math.ceil(math.ceil(len(records) / world_size) / batch_size)
    out: dict[str, str] = {}
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for b in range(n_batches):
                chunk = shard[b * batch_size : (b + 1) * batch_size]
                filler = not chunk
                if filler:  # a short shard under synced_gpus: keep the collective in step, discard
                    chunk = [shard[0] if shard else records[0]]
                images = [load_image(r.image_path, r.image_id) for r in chunk]
                batch = backbone.build_generation_batch(images, _chunk_prompt(backbone, prompt, chunk))
                sequences = model.generate(**batch.inputs, **kwargs)
                if filler:
                    continue
                texts = backbone.decode(backbone.generated_ids(batch, sequences))
                out.update(zip((_record_key(r) for r in chunk), texts, strict=True))
    finally:
        for module, mode in modes:
            module.training = mode
    return out


def evaluate_split(
    model: Any,
    backbone: Backbone,
    records: Sequence[CaptionRecord],
    eval_spec: EvalSpec,
    *,
    prompt: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[dict[str, str]], list[dict[str, str]] | None] | None = None,
    out_dir: str | os.PathLike | None = None,
    synced_gpus: bool | None = None,
    question_prompt: str | None = None,
) -> dict[str, float] | None:
    """Generate captions for an eval split on all ranks and score them on rank 0.

    Question records (VQA / POPE) are answered instead, each with ``question_prompt`` (a template with
    ``{question}``; ``None``: the family's), and scored with :func:`score_answers` (``answers.json``).

    ``records`` go through :func:`eval_records` with ``eval_spec.subset`` first (idempotent, so passing
    an already reduced list is fine), then each rank captions its shard (:func:`generate_captions`).
    ``gather`` is called on *every* rank (it is a collective, e.g. a ``torch.distributed.
    all_gather_object`` wrapper) with this rank's dict and must return all ranks' dicts on rank 0; it may
    be None only when ``world_size == 1``. Rank 0 merges them, writes ``<out_dir>/captions.json``
    (``{image_id: {"prediction": ..., "references": [...]}}`` in id order, atomically) when ``out_dir``
    is given, *then* scores (so the captions survive a scoring failure) with ``eval_spec.metrics``.

    Returns:
        On rank 0 the scores of :func:`score_captions` (metrics that cannot run here left out); None on
        the other ranks.

    Raises:
        EvalError: the gathered captions do not cover the records exactly once.
    """
    _check_rank(rank, world_size)
    if gather is None and world_size > 1:
        raise ValueError(
            f"world_size is {world_size}: pass a gather callable that collects every rank's dict"
        )
    records = eval_records(records, eval_spec.subset)
    if isinstance(records[0], QARecord):
        prompt = question_prompt
    local = generate_captions(
        model,
        backbone,
        records,
        batch_size=eval_spec.batch_size,
        generation=eval_spec.generation,
        prompt=prompt,
        rank=rank,
        world_size=world_size,
        synced_gpus=synced_gpus,
    )
    parts = [local] if gather is None else gather(local)
    if rank != 0:
        return None
    if parts is None:
        raise ValueError("gather returned None on rank 0: it must return the list of every rank's captions")
    merged: dict[str, str] = {}
    twice = []
    for part in parts:
        for image_id, caption in part.items():
            if image_id in merged:
                twice.append(image_id)
            merged[image_id] = caption
    if twice:
        raise EvalError(
            f"image id(s) {some_ids(sorted(set(twice), key=id_key))} were captioned by more than one rank: "
            "every rank must shard the same record list"
        )
    if isinstance(records[0], QARecord):
        return score_answers(records, merged, out_dir)
    references = {r.image_id: list(r.captions) for r in records}
    check_inputs(references, merged)  # a lost or foreign id fails here, before a misleading file is written
    if out_dir is not None:
        _write_captions(Path(out_dir), references, merged)
    return score_captions(
        references, merged, eval_spec.metrics, java_max_concurrent=eval_spec.java_max_concurrent
    )


def _generate_kwargs(model: Any, backbone: Backbone, generation: GenerationSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "do_sample": False,
        "num_beams": generation.num_beams,
        "num_return_sequences": 1,
        "max_new_tokens": generation.max_new_tokens,
        "min_new_tokens": generation.min_new_tokens,
        "repetition_penalty": generation.repetition_penalty,
    }
    if generation.num_beams > 1:  # only beam search reads it; transformers warns about it otherwise
        kwargs["length_penalty"] = generation.length_penalty
    config = getattr(model, "generation_config", None)
    if getattr(config, "pad_token_id", None) is None:
        kwargs["pad_token_id"] = backbone.tokenizer.pad_token_id
    return kwargs


def _zero3_enabled() -> bool:
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - transformers moved it
        return False
    return bool(is_deepspeed_zero3_enabled())


def _check_rank(rank: int, world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")


def _check_unique(records: Sequence[CaptionRecord]) -> None:
    seen: set[str] = set()
    dup = []
    for r in records:
        if _record_key(r) in seen:
            dup.append(_record_key(r))
        seen.add(_record_key(r))
    if dup:
        raise DataError(
            f"image id(s) {some_ids(sorted(set(dup), key=id_key))} appear more than once in the eval records: "
            "captions are keyed by image id, evaluate one caption set at a time"
        )


def _chunk_prompt(backbone: Backbone, prompt: str | None, chunk: Sequence[CaptionRecord | QARecord]):
    """The prompt of a generation batch: ``prompt`` for captions, each question's filled template for
    question records (``prompt`` is then the template)."""
    if chunk and isinstance(chunk[0], QARecord):
        return [backbone.question_prompt(r.question, prompt) for r in chunk]
    return prompt


def _write_captions(out_dir: Path, references: dict[str, list[str]], predictions: dict[str, str]) -> None:
    """Write ``captions.json`` atomically, so readers never see half a file."""
    data = {
        i: {"prediction": predictions[i], "references": references[i]} for i in sorted(references, key=id_key)
    }
    write_atomic(out_dir / CAPTIONS_FILE, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
