"""The Java processes of the COCO caption metrics: PTB tokenizer, METEOR and SPICE.

No leaked JVMs: METEOR's scorer keeps a ``java`` process alive until it is garbage collected, so it is
closed explicitly (:func:`close_meteor`) after every call; the tokenizer is run as a command whose
failure is an error, not a silent shift of captions between images.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from gapinit_ray.scoring.common import EvalError, last_line, notice


def tokenize_java(lines: list[str]) -> list[str]:
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
        why = last_line(proc.stderr) or f"{len(out) - 1} lines out for {len(lines)} in"
        raise EvalError(
            f"the PTB tokenizer failed (java exit {proc.returncode}: {why}); check the Java install"
        )
    punct = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in punct) for line in out[:-1]]


def start_meteor() -> Any:
    """pycocoevalcap's ``Meteor`` (its JVM starts now), or None with a notice if ``java`` cannot start."""
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        return Meteor()
    except OSError as exc:
        notice(f"meteor left out of the caption scores: cannot start java ({exc})")
        return None


def close_meteor(meteor: Any) -> str:
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
        why = last_line(proc.stderr.read())
        proc.stderr.close()
    if proc.stdout is not None:
        proc.stdout.close()
    if meteor.lock.locked():
        meteor.lock.release()
    return why


def missing_spice_files() -> list[str]:
    """The files SPICE needs that are absent (its jar, and the CoreNLP jars it would download)."""
    from pycocoevalcap.spice import get_stanford_models as gsm

    spice_dir = Path(gsm.__file__).parent
    needed = [spice_dir / "spice-1.0.jar"]
    needed += [spice_dir / gsm.SPICELIB / f"{gsm.JAR}{suffix}.jar" for suffix in ("", "-models")]
    return [str(p) for p in needed if not p.is_file()]


def run_spice(gts: dict[Any, list[str]], res: dict[Any, list[str]]) -> float | None:
    from pycocoevalcap.spice.spice import Spice

    try:
        return float(Spice().compute_score(gts, res)[0])
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        notice(f"spice left out of the caption scores: the SPICE process failed ({exc})")
        return None
