"""Caption evaluation: generate captions with a (LoRA-adapted) backbone and score them with the COCO metrics.

Why pycocoevalcap, unwrapped as little as possible: the paper's tables (and every captioning paper it
compares with) report the official COCO caption metrics, so the numbers here must be the ones its
scorers produce. What this module adds is what a sweep needs around them:

* one tokenization step shared by all metrics (the COCO evaluation tokenizes references and predictions
  with the Stanford PTB tokenizer and drops punctuation before any scorer sees them);
* metrics that cannot run here are left out with a :class:`MetricUnavailableWarning` instead of crashing
  a trial: METEOR needs ``java`` and SPICE also needs Stanford CoreNLP jars that pycocoevalcap downloads
  at first use, which cannot work on an offline worker (:func:`unavailable_metrics` tells a driver up
  front);
* no leaked JVMs: METEOR's scorer keeps a ``java`` process alive until it is garbage collected, so it is
  closed explicitly after every call;
* sharded generation for data-parallel workers, with the merge, scoring and ``captions.json`` on rank 0.

Scores are fractions, pycocoevalcap's native scale: a perfect BLEU is 1.0 and CIDEr usually lies in
0..~2 (a CIDEr of 1.4 here is the "140" of papers, which multiply every metric by 100).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gapinit_ray.atomic import write_atomic
from gapinit_ray.data import CaptionRecord, QARecord, load_image
from gapinit_ray.errors import DataError, GapinitError, SpecError
from gapinit_ray.spec import CAPTION_METRICS

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
#: Its question-answering counterpart: ``{question_id: {"question", "prediction", "answer", "answers"}}``.
ANSWERS_FILE = "answers.json"

_BLEU = ("bleu1", "bleu2", "bleu3", "bleu4")
_SHOWN = 5  # offending ids spelled out in an error message; the rest are only counted

# One scoring at a time per process: each call starts JVMs (PTB tokenizer, METEOR with its 2 GB heap,
# SPICE with 8 GB), and pycocoevalcap's SPICE shares a cache directory inside its package.
_SCORING_LOCK = threading.Lock()
#: the metrics whose scorer is a long-lived JVM holding ~1 GiB (the PTB tokenizer's JVM is brief and small)
_HEAVY_JAVA = ("meteor", "spice")
#: how often an evaluation waiting for a free Java slot tries again
JAVA_SLOT_POLL_S = 0.2


@contextlib.contextmanager
def machine_slot(name: str, slots: int | None, poll_s: float = JAVA_SLOT_POLL_S):
    """Hold one of ``slots`` machine-wide slots called ``name`` (None: no limit) for the block.

    A slot is an exclusive ``flock`` on one of ``slots`` files in a per-user directory under the temp
    dir, so the limit holds across every process on this machine (every Train worker of every sweep),
    and a slot is freed when its holder leaves the block or dies (the kernel drops the lock). A caller
    finding every slot taken retries every ``poll_s`` seconds.
    """
    if slots is None:
        yield
        return
    import fcntl
    import time

    root = Path(tempfile.gettempdir()) / f"gapinit-{os.getuid()}-{name}-slots"
    root.mkdir(exist_ok=True)
    while True:
        for i in range(slots):
            fd = os.open(root / f"{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        time.sleep(poll_s)


# Only for the pure-Python fallback tokenizer: PTB rewrites brackets as -LRB- etc. (which survive
# pycocoevalcap's filter, lower-cased, since it lists them upper-case) and '"' as `` / '' (which do not).
_FALLBACK_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_FALLBACK_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|(?<=\w)'\w*|\w+(?:[-./,]\w+)*|[^\w\s]")


class EvalError(GapinitError):
    """Predictions and references of a caption evaluation do not fit together (ids, types, emptiness)."""


class MetricUnavailableWarning(RuntimeWarning):
    """A caption metric (or the official tokenizer) cannot run on this machine and was left out."""


# ---------------------------------------------------------------------------------------- scoring
def unavailable_metrics(metrics: Iterable[str]) -> dict[str, str]:
    """The metrics of ``metrics`` that cannot run here, each with the reason (empty dict: all can).

    A driver can call this before launching a sweep whose scheduler optimizes, say, ``val_meteor``,
    because :func:`score_captions` leaves such metrics out of its result rather than failing a trial.

    Raises:
        SpecError: an unknown metric name.
    """
    wanted = _check_metrics(metrics)
    import importlib.util

    if importlib.util.find_spec("pycocoevalcap") is None:
        why = "pycocoevalcap is not installed (pip install pycocoevalcap, or gapinit-ray's dependencies)"
        return dict.fromkeys(wanted, why)
    java = shutil.which("java") is not None
    out = {}
    for name in wanted:
        if name == "meteor" and not java:
            out[name] = "METEOR needs Java and `java` is not on PATH; install a JRE (>= 8) to get it"
        elif name == "spice":
            missing = _missing_spice_files()
            if not java:
                out[name] = "SPICE needs Java and `java` is not on PATH; install a JRE (>= 8) to get it"
            elif missing:
                out[name] = (
                    f"SPICE needs Stanford CoreNLP jars that are not installed ({', '.join(missing)}); "
                    "run `python -m pycocoevalcap.spice.get_stanford_models` once with network access"
                )
    return out


def score_captions(
    references: Mapping[Any, Sequence[str]],
    predictions: Mapping[Any, str],
    metrics: Sequence[str],
    java_slots: int | None = None,
) -> dict[str, float]:
    """Score predicted captions against references with the official COCO caption metrics.

    Both sides are tokenized with pycocoevalcap's Stanford PTB tokenizer (lower-cased, punctuation
    dropped), then scored with pycocoevalcap: ``Bleu(4)`` gives ``bleu1``..``bleu4`` (corpus-level BLEU,
    brevity penalty against the reference length *closest* to each prediction), ``Meteor`` gives
    ``meteor``, ``Rouge`` gives ``rouge_l`` (mean per-image LCS F-measure, beta = 1.2), ``Cider`` gives
    ``cider`` (CIDEr-D: idf from *these* references, so a one-image set always scores 0, and small sets
    are noisy), ``Spice`` gives ``spice``. Values are fractions, the scorers' native scale (CIDEr 1.4 is
    the "140" of papers).

    Metrics that cannot run here are left out of the result with a :class:`MetricUnavailableWarning`:
    METEOR and SPICE without ``java``, SPICE without its CoreNLP jars (pycocoevalcap would try to download
    them), and a METEOR / SPICE process that fails. Without ``java`` the tokenizer itself falls back to a
    pure-Python approximation of PTB (also warned about): scores are then close to, but not exactly, the
    official ones, so do not mix them with scores from a machine with Java.

    An empty prediction is allowed and simply scores 0. A reference that is empty after tokenization
    (e.g. only punctuation) is ignored. Images are scored in a fixed (natural id) order and calls are
    serialized within the process, so the same inputs always give the same numbers.

    Args:
        references: image id -> its reference captions (at least one non-empty each).
        predictions: image id -> the predicted caption; exactly the ids of ``references``.
        metrics: names from :data:`gapinit_ray.spec.CAPTION_METRICS`.
        java_slots: at most this many METEOR / SPICE scorings at once on this machine, across processes
            (each holds a JVM of ~1 GiB; see :func:`machine_slot`); None: no limit.

    Returns:
        metric name -> score, in the order of ``metrics``, minus the metrics left out.

    Raises:
        EvalError: the two sides cover different ids (the message names them), no images, a prediction
            that is not a string, an image without a usable reference.
        SpecError: an unknown metric name.
    """
    wanted = _check_metrics(metrics)
    ids = _check_inputs(references, predictions)
    skipped = unavailable_metrics(wanted)
    for name, why in skipped.items():
        _notice(f"{name} left out of the caption scores: {why}")
    runnable = [m for m in wanted if m not in skipped]
    if not runnable:
        return {}
    heavy_java = java_slots if any(m in _HEAVY_JAVA for m in runnable) else None
    with _SCORING_LOCK, machine_slot("java", heavy_java):
        meteor = None
        try:
            if "meteor" in runnable:
                # Started before tokenizing so that its JVM loads the paraphrase table meanwhile.
                meteor = _start_meteor()
            gts, res = _tokenize_all(references, predictions, ids)
            scores = _run_scorers(runnable, gts, res, meteor)
        finally:
            if meteor is not None:
                _close_meteor(meteor)
    return {m: scores[m] for m in runnable if m in scores}


def _check_metrics(metrics: Iterable[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    wanted = list(dict.fromkeys(metrics))
    bad = [m for m in wanted if m not in CAPTION_METRICS]
    if bad:
        raise SpecError(
            f"unknown caption metric(s) {', '.join(map(repr, bad))}; known: {', '.join(CAPTION_METRICS)}"
        )
    return wanted


def _check_inputs(references: Mapping[Any, Sequence[str]], predictions: Mapping[Any, str]) -> list[Any]:
    """Validate both sides and return the image ids in natural order."""
    if not isinstance(references, Mapping) or not isinstance(predictions, Mapping):
        raise EvalError("references and predictions must be dicts keyed by image id")
    only_pred = sorted(set(predictions) - set(references), key=_id_key)
    only_ref = sorted(set(references) - set(predictions), key=_id_key)
    if only_pred or only_ref:
        parts = []
        if only_pred:
            parts.append(f"{len(only_pred)} predicted image id(s) have no references ({_some(only_pred)})")
        if only_ref:
            parts.append(f"{len(only_ref)} reference image id(s) have no prediction ({_some(only_ref)})")
        raise EvalError(
            "predictions and references cover different images: " + "; ".join(parts) + "; score the same set"
        )
    if not references:
        raise EvalError("no captions to score: references and predictions are empty")
    ids = sorted(references, key=_id_key)
    not_str = [i for i in ids if not isinstance(predictions[i], str)]
    if not_str:
        raise EvalError(f"predictions must be strings; not for image id(s) {_some(not_str)}")
    no_refs = []
    for i in ids:
        refs = references[i]
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise EvalError(f"references of image {i!r} must be a list of strings, got {type(refs).__name__}")
        if not all(isinstance(r, str) for r in refs):
            raise EvalError(f"references of image {i!r} must all be strings")
        if not any(r.strip() for r in refs):
            no_refs.append(i)
    if no_refs:
        raise EvalError(f"image id(s) {_some(no_refs)} have no non-empty reference caption")
    return ids


def _tokenize_all(
    references: Mapping[Any, Sequence[str]], predictions: Mapping[Any, str], ids: list[Any]
) -> tuple[dict[Any, list[str]], dict[Any, list[str]]]:
    """Tokenize references and predictions in one tokenizer run; drop references left empty."""
    lines = [predictions[i] for i in ids]
    for i in ids:
        lines.extend(references[i])
    tokens = _tokenize(lines)
    res = {i: [tokens[k]] for k, i in enumerate(ids)}
    gts: dict[Any, list[str]] = {}
    pos = len(ids)
    for i in ids:
        n = len(references[i])
        gts[i] = [t for t in tokens[pos : pos + n] if t]
        pos += n
    empty = [i for i in ids if not gts[i]]
    if empty:
        raise EvalError(
            f"the references of image id(s) {_some(empty)} are empty after tokenization "
            "(punctuation only?): fix those captions"
        )
    return gts, res


def _tokenize(lines: list[str]) -> list[str]:
    """PTB-tokenize captions, lower-cased, with pycocoevalcap's punctuation tokens removed.

    Any whitespace run (newlines, U+2028, ...) becomes one space first: the tokenizer works line by line
    and pycocoevalcap's own wrapper silently misaligns captions and ids on an embedded line break.
    """
    flat = [" ".join(line.split()) for line in lines]
    if shutil.which("java") is None:
        _notice(
            "`java` is not on PATH: captions are tokenized with a Python approximation of the Stanford "
            "PTB tokenizer, so scores can differ slightly from the official COCO ones"
        )
        return [_tokenize_python(line) for line in flat]
    return _tokenize_java(flat)


def _tokenize_java(lines: list[str]) -> list[str]:
    """pycocoevalcap's ``PTBTokenizer`` command (same jar, flags and punctuation filter), run in a temp dir.

    Not ``PTBTokenizer.tokenize`` itself: it writes its temp file into the (possibly read-only) package
    directory and ignores a failing ``java``, which would silently shift captions between images.
    """
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    with tempfile.TemporaryDirectory(prefix="gapinit-ptb-") as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer"]
        cmd += ["-preserveLines", "-lowerCase", "-encoding", "UTF-8", str(path)]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    out = proc.stdout.decode("utf-8", errors="replace").split("\n")
    if proc.returncode != 0 or len(out) != len(lines) + 1 or out[-1]:
        why = _last_line(proc.stderr) or f"{len(out) - 1} lines out for {len(lines)} in"
        raise EvalError(
            f"the PTB tokenizer failed (java exit {proc.returncode}: {why}); check the Java install"
        )
    punct = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in punct) for line in out[:-1]]


def _tokenize_python(line: str) -> str:
    """Rough PTB: lower-case, split off punctuation and clitics (``n't``, ``'s``), drop punctuation."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    drop = {'"', *PUNCTUATIONS}
    tokens = (_FALLBACK_BRACKETS.get(t, t) for t in _FALLBACK_TOKEN.findall(line.lower()))
    return " ".join(t for t in tokens if t not in drop)


def _run_scorers(
    metrics: list[str], gts: dict[Any, list[str]], res: dict[Any, list[str]], meteor: Any
) -> dict[str, float]:
    scores: dict[str, float] = {}
    if any(m in _BLEU for m in metrics):
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({name: float(v) for name, v in zip(_BLEU, bleu, strict=True)})
    if "rouge_l" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider

        scores["cider"] = float(Cider().compute_score(gts, res)[0])
    if meteor is not None:
        try:
            scores["meteor"] = float(meteor.compute_score(gts, res)[0])
        except (OSError, ValueError) as exc:  # a dead JVM: BrokenPipeError, or float(b"") at EOF
            why = _close_meteor(meteor) or str(exc)
            _notice(f"meteor left out of the caption scores: the METEOR process failed ({why})")
    if "spice" in metrics:
        spice = _run_spice(gts, res)
        if spice is not None:
            scores["spice"] = spice
    return scores


def _start_meteor() -> Any:
    """pycocoevalcap's ``Meteor`` (its JVM starts now), or None with a notice if ``java`` cannot start."""
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        return Meteor()
    except OSError as exc:
        _notice(f"meteor left out of the caption scores: cannot start java ({exc})")
        return None


def _close_meteor(meteor: Any) -> str:
    """End METEOR's JVM now (pycocoevalcap only does so in ``__del__``, i.e. whenever GC gets to it).

    Idempotent; returns the last line the JVM wrote to stderr (why it died, if it did). Also releases the
    scorer's lock if ``compute_score`` failed holding it, so that its later ``__del__`` (which takes that
    lock) cannot hang the garbage collector.
    """
    proc = meteor.meteor_p
    with contextlib.suppress(OSError):  # unflushed input to a dead process
        proc.stdin.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    why = ""
    if proc.stderr is not None and not proc.stderr.closed:
        why = _last_line(proc.stderr.read())
        proc.stderr.close()
    if proc.stdout is not None:
        proc.stdout.close()
    if meteor.lock.locked():
        meteor.lock.release()
    return why


def _missing_spice_files() -> list[str]:
    """The files SPICE needs that are absent (its jar, and the CoreNLP jars it would download)."""
    from pycocoevalcap.spice import get_stanford_models as gsm

    spice_dir = Path(gsm.__file__).parent
    needed = [spice_dir / "spice-1.0.jar"]
    needed += [spice_dir / gsm.SPICELIB / f"{gsm.JAR}{suffix}.jar" for suffix in ("", "-models")]
    return [str(p) for p in needed if not p.is_file()]


def _run_spice(gts: dict[Any, list[str]], res: dict[Any, list[str]]) -> float | None:
    from pycocoevalcap.spice.spice import Spice

    try:
        return float(Spice().compute_score(gts, res)[0])
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        _notice(f"spice left out of the caption scores: the SPICE process failed ({exc})")
        return None


def _notice(message: str) -> None:
    warnings.warn(message, MetricUnavailableWarning, stacklevel=2)


def _last_line(data: bytes | str | None) -> str:
    if not data:
        return ""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _id_key(image_id: Any) -> tuple:
    """Natural order of ids: digit runs compare as numbers ("img2" < "img10", COCO 9 < 25 < 100)."""
    parts = re.split(r"([0-9]+)", str(image_id))
    return tuple((int(p), p) if k % 2 else p for k, p in enumerate(parts))


def _some(ids: Sequence[Any]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN])
    return shown + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")


# ------------------------------------------------------------------------------------- generation
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
    ordered = sorted(records, key=lambda r: _id_key(_record_key(r)))
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
            f"image id(s) {_some(sorted(set(twice), key=_id_key))} were captioned by more than one rank: "
            "every rank must shard the same record list"
        )
    if isinstance(records[0], QARecord):
        return score_answers(records, merged, out_dir)
    references = {r.image_id: list(r.captions) for r in records}
    _check_inputs(references, merged)  # a lost or foreign id fails here, before a misleading file is written
    if out_dir is not None:
        _write_captions(Path(out_dir), references, merged)
    return score_captions(references, merged, eval_spec.metrics, java_slots=eval_spec.java_max_concurrent)


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
            f"image id(s) {_some(sorted(set(dup), key=_id_key))} appear more than once in the eval records: "
            "captions are keyed by image id, evaluate one caption set at a time"
        )


def _chunk_prompt(backbone: Backbone, prompt: str | None, chunk: Sequence[CaptionRecord | QARecord]):
    """The prompt of a generation batch: ``prompt`` for captions, each question's filled template for
    question records (``prompt`` is then the template)."""
    if chunk and isinstance(chunk[0], QARecord):
        return [backbone.question_prompt(r.question, prompt) for r in chunk]
    return prompt


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
        lost = sorted(set(truth) ^ set(predictions), key=_id_key)
        raise EvalError(f"answers and questions differ in question id(s) {_some(lost)}; score the same set")
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


def _write_captions(out_dir: Path, references: dict[str, list[str]], predictions: dict[str, str]) -> None:
    """Write ``captions.json`` atomically, so readers never see half a file."""
    data = {
        i: {"prediction": predictions[i], "references": references[i]}
        for i in sorted(references, key=_id_key)
    }
    write_atomic(out_dir / CAPTIONS_FILE, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
