"""Registry of vision-language backbone families and their tiny, download-free presets.

Names:
    families  ``blip2`` (BLIP-2 + OPT), ``qwen2_vl`` (Qwen2-VL), ``gemma3`` (Gemma 3): real checkpoints,
              loaded with ``path=`` a local directory or a hub id.
    presets   ``tiny-blip2``, ``tiny-qwen2-vl``, ``tiny-gemma3``: 2-layer, hidden-64 models built from config
              with seeded random weights and an in-code tokenizer, for tests and the quickstart; or, with
              ``path=``, a preset previously written by :meth:`Backbone.save`.
    ``auto``  with ``path=`` a local checkpoint dir: the family is read from its ``config.json``.

This module imports neither torch nor transformers (so the CLI and spec validation stay fast): the family
modules are imported by :func:`load_backbone`, and ``Batch`` / ``Backbone`` on first attribute access.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gapinit_ray.errors import BackboneError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from gapinit_ray.backbones.base import Backbone, Batch

__all__ = [
    "FAMILIES",
    "PRESETS",
    "Backbone",
    "Batch",
    "backbone_class",
    "family_of",
    "known_backbones",
    "load_backbone",
]

FAMILIES: tuple[str, ...] = ("blip2", "qwen2_vl", "gemma3")
PRESETS: tuple[str, ...] = ("tiny-blip2", "tiny-qwen2-vl", "tiny-gemma3")
AUTO = "auto"

_PRESET_FAMILY = {"tiny-blip2": "blip2", "tiny-qwen2-vl": "qwen2_vl", "tiny-gemma3": "gemma3"}
_FAMILY_CLASS = {
    "blip2": ("gapinit_ray.backbones.blip2", "Blip2Backbone"),
    "qwen2_vl": ("gapinit_ray.backbones.qwen2_vl", "Qwen2VLBackbone"),
    "gemma3": ("gapinit_ray.backbones.gemma3", "Gemma3Backbone"),
}
#: ``config.model_type`` of each family's checkpoints (what ``auto`` reads).
MODEL_TYPE_FAMILY = {"blip-2": "blip2", "qwen2_vl": "qwen2_vl", "gemma3": "gemma3"}
EXAMPLE_CHECKPOINTS = {
    "blip2": "Salesforce/blip2-opt-2.7b",
    "qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct",
    "gemma3": "google/gemma-3-4b-it",
}


def known_backbones() -> list[str]:
    """Every name :func:`load_backbone` accepts besides ``auto``: the families, then the presets."""
    return [*FAMILIES, *PRESETS]


def family_of(name: str, path: str | os.PathLike | None = None) -> str:
    """The family of a backbone name: ``"tiny-blip2"`` → ``"blip2"``, ``"blip2"`` → ``"blip2"``.

    ``"auto"`` reads ``model_type`` from ``<path>/config.json`` (a local directory; no torch import).

    Raises:
        BackboneError: unknown name (the message lists the known ones), or ``auto`` without a readable
            local checkpoint of a known family.
    """
    if name in _PRESET_FAMILY:
        return _PRESET_FAMILY[name]
    if name in FAMILIES:
        return name
    if name == AUTO:
        return _family_from_config(path)
    known = known_backbones()
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise BackboneError(
        f"unknown backbone {name!r}{hint}: known backbones are {', '.join(known)}, "
        f"or {AUTO!r} with path= a local checkpoint dir"
    )


def _family_from_config(path: str | os.PathLike | None) -> str:
    if path is None:
        raise BackboneError(
            f"backbone {AUTO!r} needs path= a local checkpoint dir to read its config.json from"
        )
    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        raise BackboneError(
            f"backbone {AUTO!r}: {config} not found; pass a local checkpoint dir, or name the family "
            f"({', '.join(FAMILIES)}) to load a hub id"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise BackboneError(
            f"backbone {AUTO!r}: cannot read {config} ({exc}); is the checkpoint complete?"
        ) from exc
    if model_type not in MODEL_TYPE_FAMILY:
        raise BackboneError(
            f"{config} has model_type {model_type!r}, not one of the supported families "
            f"({', '.join(f'{t} → {f}' for t, f in MODEL_TYPE_FAMILY.items())})"
        )
    return MODEL_TYPE_FAMILY[model_type]


def _family_class(family: str) -> type[Backbone]:
    module, attr = _FAMILY_CLASS[family]
    return getattr(importlib.import_module(module), attr)


def backbone_class(name: str, path: str | os.PathLike | None = None) -> type[Backbone]:
    """The :class:`Backbone` subclass of a backbone name (class attributes such as ``lm_layers_path``
    and ``default_target_modules`` without loading any weights)."""
    return _family_class(family_of(name, path))


def load_backbone(
    name: str,
    path: str | os.PathLike | None = None,
    revision: str | None = None,
    dtype: str = "auto",
    seed: int = 0,
    device: str = "cpu",
) -> Backbone:
    """Load a backbone by registry name (model in eval mode on ``device``).

    Args:
        name: a family, a preset or ``auto`` (see the module docstring).
        path: for a family / ``auto``: a local checkpoint dir or a hub id (``org/name``); for a preset:
            optional dir written by :meth:`Backbone.save` (else the preset is built from config).
        revision: hub revision (branch, tag or commit) of a hub id; ignored for local dirs.
        dtype: ``auto`` (checkpoint dtype; float32 for built presets), ``float32``, ``bfloat16``, ``float16``.
        seed: weight seed of a built preset (same seed ⇒ identical weights and tokenizer).
        device: torch device string for the model; :meth:`Backbone.build_batch` puts tensors there too.

    Local dirs always load with ``local_files_only=True``; hub ids do when HF_HUB_OFFLINE is set.

    Raises:
        BackboneError: unknown name, a family without ``path``, a missing/invalid checkpoint (names the
            path), a checkpoint of another family, a bad dtype or device.
    """
    family = family_of(name, path)
    cls = _family_class(family)
    from gapinit_ray.backbones.base import load_checkpoint, parse_dtype

    if path is None:
        if name not in _PRESET_FAMILY:
            raise BackboneError(
                f"backbone {name!r} is a model family: pass path= a local checkpoint dir or a hub id "
                f"(e.g. {EXAMPLE_CHECKPOINTS[family]}), or use the preset tiny-{name.replace('_', '-')}"
            )
        torch_dtype = parse_dtype(dtype)
        backbone = cls.build_tiny(name, int(seed))
        if torch_dtype != "auto":
            backbone.model.to(torch_dtype)
    else:
        backbone = load_checkpoint(cls, name, path, revision=revision, dtype=dtype, device=device)
    _to_device(backbone, device)
    return backbone


def _to_device(backbone: Backbone, device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
        backbone.model.to(dev)
    except (RuntimeError, AssertionError) as exc:
        raise BackboneError(f"cannot put backbone {backbone.name!r} on device {device!r}: {exc}") from exc


def __getattr__(attr: str) -> Any:
    # PEP 562: expose Batch/Backbone without importing torch when the package is imported.
    if attr in ("Batch", "Backbone"):
        from gapinit_ray.backbones import base

        return getattr(base, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
