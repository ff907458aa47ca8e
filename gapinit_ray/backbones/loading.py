"""Loading a backbone's weights: dtype names, local dir vs hub id, offline mode, one-line load errors."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gapinit_ray.errors import BackboneError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from gapinit_ray.backbones.base import Backbone

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_dtype(dtype: str) -> torch.dtype | str:
    """``"auto"`` stays ``"auto"`` (checkpoint dtype; float32 for presets); names map to torch dtypes."""
    if dtype == "auto":
        return "auto"
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise BackboneError(
            f"unknown dtype {dtype!r}: use one of auto, {', '.join(sorted(set(_DTYPES)))}"
        ) from None


def offline_requested() -> bool:
    """True when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set to a true value."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def resolve_source(path: str | os.PathLike) -> tuple[str, bool]:
    """Decide whether ``path`` is a local checkpoint dir or a hub id.

    Returns:
        ``(path_or_id, local_files_only)``: a local dir is made absolute and always loads with
        ``local_files_only=True``; a hub id loads offline only when HF_HUB_OFFLINE is set.

    Raises:
        BackboneError: ``path`` names a local location that does not exist, or is a file.
    """
    text = os.fspath(path)
    p = Path(text).expanduser()
    if p.is_dir():
        return str(p.resolve()), True
    if p.exists():
        raise BackboneError(f"checkpoint path {text!r} is a file: pass the directory holding config.json")
    if _HUB_ID.match(text) and not text.startswith("."):
        return text, offline_requested()
    raise BackboneError(
        f"checkpoint directory {text!r} does not exist: check the path (or pass a hub id org/name)"
    )


def load_checkpoint(
    cls: type[Backbone],
    name: str,
    path: str | os.PathLike,
    *,
    revision: str | None,
    dtype: str,
    device: str,
) -> Backbone:
    """Load a saved backbone or a real checkpoint of family ``cls`` from a local dir or a hub id.

    Every failure (missing dir, offline and not cached, not a checkpoint of this family, broken files)
    becomes a :class:`BackboneError` naming the path.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    source, local_only = resolve_source(path)
    torch_dtype = parse_dtype(dtype)
    common = {"revision": revision, "local_files_only": local_only}
    where = f"{name} checkpoint {source!r}" + (f" (revision {revision})" if revision else "")
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except Exception as exc:  # OSError, ValueError, EnvironmentError from hub/cache/json
        if Path(source).is_dir():
            hint = "the directory must hold a config.json"
        elif local_only:
            hint = (
                "HF_HUB_OFFLINE is set and it is not in the HF cache: download it first or pass a local dir"
            )
        else:
            hint = "check the hub id, the revision and network access"
        raise BackboneError(f"cannot read the config of {where}: {hint} ({_one_line(exc)})") from exc
    model_type = getattr(config, "model_type", None)
    if model_type not in cls.model_types:
        raise BackboneError(
            f"{where} is a {model_type!r} model, not a {cls.family} one "
            f"(expected model_type {' or '.join(cls.model_types)}): pick the matching backbone name"
        )
    try:
        device_map = None if torch.device(device).type == "cpu" else device
    except RuntimeError as exc:
        raise BackboneError(f"invalid device {device!r} for {where}: use e.g. cpu, cuda, cuda:1") from exc
    try:
        model = cls.model_class().from_pretrained(source, dtype=torch_dtype, device_map=device_map, **common)
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        image_processor = AutoImageProcessor.from_pretrained(source, **common)
    except Exception as exc:
        raise BackboneError(f"cannot load {where}: {_one_line(exc)}") from exc
    model, tokenizer = cls.adapt_checkpoint(model, tokenizer)
    source_id = source if Path(source).is_dir() else f"{source}@{revision or 'main'}"
    return cls(name, model, tokenizer, image_processor, source_id)


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (HF errors span many lines; ours are one line)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def build_seeded(build_fn, seed: int, redraw=None):
    """Call ``build_fn()`` under ``torch.manual_seed(seed)`` without disturbing the caller's RNG.

    ``redraw(model)``, when given, names a parameter HF zero-initialises because pretrained weights are
    loaded over it; a tiny model built from scratch draws it from N(0, ``initializer_range``) instead, under
    the same seed (left at zero it would make the image span degenerate)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_fn()
        if redraw is not None:
            with torch.no_grad():
                redraw(model).normal_(0.0, model.config.initializer_range)
        return model


def tiny_tower(**extra: Any) -> dict[str, Any]:
    """The config of a tiny vision tower or Q-Former: width 32, 2 layers of 2 heads; ``extra`` adds keys."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        **extra,
    }


def tiny_lm(vocab_size: int, *, pad: int, bos: int, eos: int, **extra: Any) -> dict[str, Any]:
    """The config of a tiny language model: width 64, 2 layers of 2 heads, the given special-token ids;
    ``extra`` adds the family's own keys."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "pad_token_id": pad,
        "bos_token_id": bos,
        "eos_token_id": eos,
        **extra,
    }


def tiny_decoder_lm(vocab_size: int, *, pad: int, bos: int, eos: int, **extra: Any) -> dict[str, Any]:
    """:func:`tiny_lm` for the Llama-style decoders (Qwen2, Gemma 3): MLP width 128, one key/value head
    (grouped-query attention, as the real models), 512 positions."""
    base = {"intermediate_size": 128, "num_key_value_heads": 1, "max_position_embeddings": 512}
    return tiny_lm(vocab_size, pad=pad, bos=bos, eos=eos, **{**base, **extra})


def tiny_backbone(cls, name: str, seed: int, model, tokenizer, image_processor, *, pad: int, bos: int, eos):
    """The backbone of tiny preset ``name`` built from scratch with ``seed``: its generation config takes
    the tokenizer's special ids (``eos``: one id or a list) and its source id names the preset and seed."""
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = pad, bos, eos
    return cls(name, model, tokenizer, image_processor, source_id=f"{name}:seed={seed}")
