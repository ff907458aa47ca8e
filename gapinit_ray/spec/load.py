"""Reading a spec: file (or ``env:VAR``) -> YAML -> overrides -> validated :class:`SweepSpec`."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from gapinit_ray.errors import SpecError
from gapinit_ray.spec.messages import format_errors
from gapinit_ray.spec.overrides import apply_overrides
from gapinit_ray.spec.paths import absolute_paths
from gapinit_ray.spec.search import validate_search
from gapinit_ray.spec.sweep_model import SweepSpec
from gapinit_ray.spec.yamlio import MAX_SPEC_BYTES, YamlLimitError, yaml_load_with_lines


def load_spec(
    path: str | Path, overrides: list[str] | None = None, *, resolve_paths: bool = True
) -> SweepSpec:
    """Read, override and validate a spec file; raise SpecError listing every problem.

    ``env:VAR`` reads the spec's text from environment variable ``VAR`` (how `gapinit submit` hands a
    validated spec to its job without uploading files).

    ``resolve_paths``: make every relative local path the spec names absolute, relative to the
    directory the command runs in (:func:`absolute_paths`). Only ``submit`` turns it off: the cluster's
    filesystem is not the user's, so it refuses relative paths instead."""
    if str(path).startswith("env:"):
        var = str(path)[4:]
        if var not in os.environ:
            raise SpecError(f"{path}: environment variable {var} is not set")
        raw, _ = _parse(os.environ[var], str(path))
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: the spec must be a YAML mapping")
        spec = spec_from_dict(raw, source=f"${var}", overrides=overrides)
        return absolute_paths(spec) if resolve_paths else spec
    path = Path(path)
    try:
        with open(path, "rb") as f:  # a bounded read: a size from stat() may lie (/proc, a pipe)
            data = f.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            raise SpecError(
                f"{path}: larger than {MAX_SPEC_BYTES // 2**20} MiB; a spec is a short YAML file "
                "(is this the right file?)"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except UnicodeDecodeError as e:
        raise SpecError(
            f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason}); a spec is YAML text, see sweeps/"
        ) from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read spec file ({e.strerror})") from None
    raw, lines = _parse(text, str(path))
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the spec must be a YAML mapping (name: ..., storage: ..., ...)")
    spec = spec_from_dict(raw, source=str(path), overrides=overrides, lines=lines)
    return absolute_paths(spec) if resolve_paths else spec


def saved_spec(path: str | Path) -> SweepSpec:
    """The spec a sweep dir's ``spec.json`` holds (what ``run`` wrote), validated again; a file that is
    missing, unreadable, not JSON or not a spec is a SpecError naming it."""
    import json

    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: not found; pass the sweep's spec file") from None
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise SpecError(
            f"{path}: cannot read this sweep's saved spec ({type(e).__name__}); it is corrupt or not a "
            "gapinit spec.json: pass the sweep's spec file instead"
        ) from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: not a gapinit spec.json (not a JSON object); pass the sweep's spec file")
    return spec_from_dict(raw, source=str(path))


def _parse(text: str, source: str) -> tuple[object, dict]:
    """The spec's data and line map, or a SpecError naming ``source`` and the line."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: larger than {MAX_SPEC_BYTES // 2**20} MiB; a spec is a short YAML file")
    try:
        return yaml_load_with_lines(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        kind = "YAML refused" if isinstance(e, YamlLimitError) else "invalid YAML"
        raise SpecError(f"{where}: {kind}: {problem}") from None


def spec_from_dict(
    raw: dict, source: str = "<spec>", overrides: list[str] | None = None, lines: dict | None = None
) -> SweepSpec:
    raw = apply_overrides(raw, overrides or [])
    lines = lines or {}
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError("\n".join(format_errors(e, source, lines))) from None
    problems = validate_search(spec, source, lines)
    if problems:
        raise SpecError("\n".join(problems))
    return spec
