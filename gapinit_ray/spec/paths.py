"""Local paths in a spec: which are relative, and the spec with all of them made absolute."""

from __future__ import annotations

import os
from pathlib import Path

from gapinit_ray.spec.sweep_model import SweepSpec


def _is_uri(value: str) -> bool:
    return "://" in value


def _absolute(value: str, base: Path) -> str:
    """``value`` as an absolute, normalized local path (``~`` expanded; ``file://`` kept as a prefix)."""
    prefix = "file://" if value.startswith("file://") else ""
    path = os.path.expanduser(value.removeprefix(prefix))
    return prefix + os.path.normpath(os.path.join(base, path))


def _looks_local(path: str, base: Path) -> bool:
    """A backbone ``path`` is a local checkpoint dir (not a hub id) when it is written as one (``/``,
    ``~``, ``./``, ``../``) or exists relative to ``base`` (transformers loads an existing dir first)."""
    return path.startswith(("/", "~", "./", "../")) or path in (".", "..") or (base / path).exists()


def relative_paths(spec: SweepSpec) -> list[tuple[str, str]]:
    """(field, value) of every local path in ``spec`` that is relative (hub ids and URIs are not)."""
    out: list[tuple[str, str]] = []
    if not _is_uri(spec.storage) and not os.path.isabs(os.path.expanduser(spec.storage)):
        out.append(("storage", spec.storage))
    for name, src in spec.data.sources.items():
        for f in ("annotations", "questions", "images"):
            v = getattr(src, f)
            if v and not _is_uri(v) and not os.path.isabs(os.path.expanduser(v)):
                out.append((f"data.sources.{name}.{f}", v))
    for i, b in enumerate(spec.backbones):
        if b.path and _looks_local(b.path, Path.cwd()) and not os.path.isabs(os.path.expanduser(b.path)):
            out.append((f"backbones[{i}].path", b.path))
    return out


def absolute_paths(spec: SweepSpec, base: str | Path | None = None) -> SweepSpec:
    """The spec with every relative local path made absolute against ``base`` (default: the current
    directory): ``storage``, the data sources' ``annotations`` / ``questions`` / ``images``, and
    backbone ``path``s that name a local dir (hub ids stay as they are).

    Paths are resolved once, here, at the edge: Ray Tune runs each trainable in its own working
    directory and Ray workers start wherever their node puts them, so nothing downstream may depend on
    the cwd. ``spec.json`` stores the resolved values. URIs (``s3://``...) are left alone."""
    base = Path(base) if base is not None else Path.cwd()
    raw = spec.model_dump(mode="json")
    if not _is_uri(raw["storage"]) or raw["storage"].startswith("file://"):
        raw["storage"] = _absolute(raw["storage"], base)
    for src in raw["data"]["sources"].values():
        for f in ("annotations", "questions", "images"):
            v = src.get(f)
            if v and (not _is_uri(v) or v.startswith("file://")):
                src[f] = _absolute(v, base)
    for b in raw["backbones"]:
        if b.get("path") and _looks_local(b["path"], base):
            b["path"] = _absolute(b["path"], base)
    return SweepSpec.model_validate(raw)
