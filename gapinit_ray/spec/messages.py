"""Validation errors as lines for people: ``file:line: field: what is wrong (allowed: ...)``."""

from __future__ import annotations

import re

from pydantic import ValidationError

from gapinit_ray.spec.sweep_model import SweepSpec


def _allowed_hint(err: dict) -> str:
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error" and "expected" in ctx:
        return f" (allowed: {ctx['expected']})"
    return ""


def format_errors(exc: ValidationError, source: str, lines: dict[tuple, int]) -> list[str]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic tags union members (`list[any]`, `Choice`...) in loc; drop them for people.
        loc = tuple(p for p in loc if not (isinstance(p, str) and (p[:1].isupper() or "[" in p)))
        field = ".".join(str(p) for p in loc) or "<top level>"
        msg = err["msg"].removeprefix("Value error, ")
        head = msg.split(" ", 1)[0].rstrip(":")
        if not loc and head.split(".")[0].split("[")[0] in SweepSpec.model_fields:
            # a cross-field check names its field first ("scheduler.metric 'x' is never reported"):
            # point at that field and its line, not at the top level
            loc = tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", head) if p)
            field, msg = head, msg[len(head) :].lstrip(" :")
        line = None
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        where = f"{source}:{line}" if line else source
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `gapinit validate --help` for the schema)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        out.append(f"{where}: {field}: {msg}{_allowed_hint(err)}")
    return list(dict.fromkeys(out))
