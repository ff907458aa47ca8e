"""Command-line overrides (``a.b.c=value``) and dotted-path assignment into a raw spec."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from gapinit_ray.errors import SpecError
from gapinit_ray.spec.yamlio import YamlLimitError, yaml_load


def parse_value(text: str, what: str) -> Any:
    """A ``KEY=VALUE`` value parsed as YAML; text that is not YAML (``name=@x``, ``lr=[1,``) is kept
    as text, which validation then judges. A tag the safe loader has no constructor for
    (``!!python/...``) and a value past the loader's bounds are errors naming ``what`` (the override)."""
    if text == "":
        return ""
    try:
        return yaml_load(text)
    except YamlLimitError as e:
        raise SpecError(f"{what}: YAML refused: {e.problem}") from None
    except yaml.constructor.ConstructorError as e:
        tag = e.problem.split()[-1].replace("tag:yaml.org,2002:", "!!") if e.problem else ""
        tag = f" {tag}" if "tag" in (e.problem or "") else ""
        raise SpecError(
            f"{what}: YAML tag{tag} is not allowed (only plain values: numbers, strings, lists, mappings)"
        ) from None
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply dotted `a.b.c=value` overrides (values parsed as YAML: `search.seed=[1,2]`)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise SpecError(f"override {item!r}: empty field name in {key!r}")
        # an axis name is itself dotted: `search.train.lr=[1e-4,2e-4]` sets axis `train.lr`
        if parts[0] == "search" and len(parts) > 2:
            parts = ["search", ".".join(parts[1:])]
        node = raw
        for p in parts[:-1]:
            nxt = node.get(p) if isinstance(node, dict) else None
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise SpecError(f"override {item!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = parse_value(value, f"override {item!r}")
    return raw


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict; KeyError when a section along the way does not exist."""
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        if not isinstance(node, dict) or p not in node or not isinstance(node[p], dict):
            raise KeyError(dotted)
        node = node[p]
    if not isinstance(node, dict) or (parts[-1] not in node):
        raise KeyError(dotted)
    node[parts[-1]] = value
