"""Caption scoring with the official COCO caption metrics (pycocoevalcap), unwrapped as little as possible.

Why pycocoevalcap: the paper's tables (and every captioning paper it compares with) report the official
COCO caption metrics, so the numbers here must be the ones its scorers produce. What this module adds
is what a sweep needs around them:

* one tokenization step shared by all metrics (the COCO evaluation tokenizes references and predictions
  with the Stanford PTB tokenizer and drops punctuation before any scorer sees them);
* metrics that cannot run here are left out with a :class:`MetricUnavailableWarning` instead of crashing
  a trial: METEOR needs ``java`` and SPICE also needs Stanford CoreNLP jars that pycocoevalcap downloads
  at first use, which cannot work on an offline worker (:func:`unavailable_metrics` tells a driver up
  front);
* no leaked JVMs (:mod:`gapinit_ray.scoring.java`).

Scores are fractions, pycocoevalcap's native scale: a perfect BLEU is 1.0 and CIDEr usually lies in
0..~2 (a CIDEr of 1.4 here is the "140" of papers, which multiply every metric by 100).
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gapinit_ray.errors import SpecError
from gapinit_ray.scoring import java as java_procs
from gapinit_ray.scoring.common import EvalError, MetricUnavailableWarning, id_key, notice, some_ids
from gapinit_ray.scoring.java_lease import java_lease
from gapinit_ray.spec import CAPTION_METRICS

__all__ = ["EvalError", "MetricUnavailableWarning", "score_captions", "unavailable_metrics"]

_BLEU = ("bleu1", "bleu2", "bleu3", "bleu4")

# One scoring at a time per process: each call starts JVMs (PTB tokenizer, METEOR with its 2 GB heap,
# SPICE with 8 GB), and pycocoevalcap's SPICE shares a cache directory inside its package.
_SCORING_LOCK = threading.Lock()
#: the metrics whose scorer is a long-lived JVM holding ~1 GiB (the PTB tokenizer's JVM is brief and small)
_HEAVY_JAVA = ("meteor", "spice")

# Only for the pure-Python fallback tokenizer: PTB rewrites brackets as -LRB- etc. (which survive
# pycocoevalcap's filter, lower-cased, since it lists them upper-case) and '"' as `` / '' (which do not).
_FALLBACK_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_FALLBACK_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|(?<=\w)'\w*|\w+(?:[-./,]\w+)*|[^\w\s]")


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
            missing = java_procs.missing_spice_files()
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
    java_max_concurrent: int | None = None,
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
        java_max_concurrent: at most this many METEOR / SPICE scorings at once on this machine, across processes
            (each holds a JVM of ~1 GiB; see :func:`~gapinit_ray.scoring.java_lease.java_lease`); None: no limit.

    Returns:
        metric name -> score, in the order of ``metrics``, minus the metrics left out.

    Raises:
        EvalError: the two sides cover different ids (the message names them), no images, a prediction
            that is not a string, an image without a usable reference.
        SpecError: an unknown metric name.
    """
    wanted = _check_metrics(metrics)
    ids = check_inputs(references, predictions)
    skipped = unavailable_metrics(wanted)
    for name, why in skipped.items():
        notice(f"{name} left out of the caption scores: {why}")
    runnable = [m for m in wanted if m not in skipped]
    if not runnable:
        return {}
    heavy_java = java_max_concurrent if any(m in _HEAVY_JAVA for m in runnable) else None
    with _SCORING_LOCK, java_lease(heavy_java):
        meteor = None
        try:
            if "meteor" in runnable:
                # Started before tokenizing so that its JVM loads the paraphrase table meanwhile.
                meteor = java_procs.start_meteor()
            gts, res = _tokenize_all(references, predictions, ids)
            scores = _run_scorers(runnable, gts, res, meteor)
        finally:
            if meteor is not None:
                java_procs.close_meteor(meteor)
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


def check_inputs(references: Mapping[Any, Sequence[str]], predictions: Mapping[Any, str]) -> list[Any]:
    """Validate both sides and return the image ids in natural order."""
    if not isinstance(references, Mapping) or not isinstance(predictions, Mapping):
        raise EvalError("references and predictions must be dicts keyed by image id")
    only_pred = sorted(set(predictions) - set(references), key=id_key)
    only_ref = sorted(set(references) - set(predictions), key=id_key)
    if only_pred or only_ref:
        parts = []
        if only_pred:
            parts.append(f"{len(only_pred)} predicted image id(s) have no references ({some_ids(only_pred)})")
        if only_ref:
            parts.append(f"{len(only_ref)} reference image id(s) have no prediction ({some_ids(only_ref)})")
        raise EvalError(
            "predictions and references cover different images: " + "; ".join(parts) + "; score the same set"
        )
    if not references:
        raise EvalError("no captions to score: references and predictions are empty")
    ids = sorted(references, key=id_key)
    not_str = [i for i in ids if not isinstance(predictions[i], str)]
    if not_str:
        raise EvalError(f"predictions must be strings; not for image id(s) {some_ids(not_str)}")
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
        raise EvalError(f"image id(s) {some_ids(no_refs)} have no non-empty reference caption")
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
            f"the references of image id(s) {some_ids(empty)} are empty after tokenization "
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
        notice(
            "`java` is not on PATH: captions are tokenized with a Python approximation of the Stanford "
            "PTB tokenizer, so scores can differ slightly from the official COCO ones"
        )
        return [_tokenize_python(line) for line in flat]
    return java_procs.tokenize_java(flat)


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
            why = java_procs.close_meteor(meteor) or str(exc)
            notice(f"meteor left out of the caption scores: the METEOR process failed ({why})")
    if "spice" in metrics:
        spice = java_procs.run_spice(gts, res)
        if spice is not None:
            scores["spice"] = spice
    return scores
