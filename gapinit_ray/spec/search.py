"""Checks of the search space against the spec's fields, and what a sweep will run."""

from __future__ import annotations

import copy
from collections import Counter
from functools import cache
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from gapinit_ray.spec.messages import format_errors
from gapinit_ray.spec.overrides import set_dotted
from gapinit_ray.spec.sweep_model import AXIS_ALIASES, AXIS_HELP, Axis, Choice, LogUniform, SweepSpec, Uniform


def _axis_target(name: str) -> str:
    return AXIS_ALIASES.get(name, name)


def _grid_values(axis: Axis) -> list[Any] | None:
    return axis if isinstance(axis, list) else None


#: Top-level fields that no model-level check reads: each value of an axis over one is checked against
#: the field alone (its type and bounds, microseconds a value), the whole spec with the first value only.
#: A seed list is the one axis that runs to thousands of values (validation was quadratic in it).
FIELD_ONLY_AXES = frozenset({"seed"})


@cache
def _field_adapter(name: str) -> TypeAdapter:
    info = SweepSpec.model_fields[name]
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)])


def validate_search(spec: SweepSpec, source: str = "<spec>", lines: dict | None = None) -> list[str]:
    """Check every search axis names a real field and every value is valid for that field."""
    problems: list[str] = []
    # the spec a trial sees, less the search space (copied per checked value: it must not grow with it)
    # a value of one axis is checked on the spec without its search space, hence without the sequential
    # section either (it is checked against the whole search space, with the spec)
    base = spec.model_dump(mode="python", exclude={"search", "sequential"})
    for name, axis in spec.search.axes.items():
        line = (lines or {}).get(("search", name))
        field = f"{source}:{line}: search.{name}" if line else f"{source}: search.{name}"
        grid = _grid_values(axis)
        if grid is not None and not grid:
            problems.append(f"{field}: empty axis; give at least one value")
            continue
        counts = Counter(repr(v) for v in grid) if grid is not None else Counter()
        if len(counts) != len(grid or ()):
            dup = sorted(r for r, n in counts.items() if n > 1)
            problems.append(f"{field}: duplicate values {', '.join(dup)} (each grid value must be distinct)")
            continue
        target = _axis_target(name)
        if target == "backbone":
            known = {b.key for b in spec.backbones}
            values = grid if grid is not None else (axis.choice if isinstance(axis, Choice) else [])
            bad = [v for v in values if v not in known]
            if bad or isinstance(axis, Uniform | LogUniform):
                problems.append(
                    f"{field}: values must be backbone keys from `backbones` ({', '.join(known)})"
                )
            continue
        if isinstance(axis, Uniform | LogUniform):
            lo, hi = axis.uniform if isinstance(axis, Uniform) else axis.loguniform
            if lo >= hi:
                problems.append(f"{field}: lower bound {lo} must be below upper bound {hi}")
                continue
            if isinstance(axis, LogUniform) and lo <= 0:
                problems.append(f"{field}: loguniform bounds must be > 0")
                continue
            candidates = [lo, hi]
        else:
            candidates = grid if grid is not None else axis.choice
        if target.split(".")[0] in ("search", "name", "storage", "backbones", "data"):
            problems.append(f"{field}: {target!r} cannot be searched over")
            continue
        if target in FIELD_ONLY_AXES and len(candidates) > 1:
            bad = _field_problem(target, candidates)
            if bad:
                problems.append(f"{field}: {bad}")
                continue
            candidates = candidates[:1]
        for value in candidates:
            trial = copy.deepcopy(base)
            try:
                set_dotted(trial, target, value)
            except KeyError:
                problems.append(
                    f"{field}: {target!r} is not a spec field (e.g. train.lr, lora.rank, seed, init); "
                    + AXIS_HELP
                )
                break
            try:
                SweepSpec.model_validate(trial)
            except ValidationError as e:
                msgs = format_errors(e, "", {})
                problems.append(f"{field}: value {value!r} is invalid: {msgs[0].lstrip(': ')}")
                break
    for i, case in enumerate(spec.search.cases):
        field = f"{source}: search.cases[{i}]"
        clash = sorted(set(case) & set(spec.search.axes))
        if clash:
            problems.append(f"{field}: {', '.join(clash)} is also a search axis; set it in one place")
            continue
        trial = copy.deepcopy(base)
        try:
            for name, value in case.items():
                if _axis_target(name) == "backbone":
                    if value not in {b.key for b in spec.backbones}:
                        raise ValueError(f"backbone {value!r} is not in `backbones`")
                    continue
                set_dotted(trial, _axis_target(name), value)
            SweepSpec.model_validate(trial)
        except KeyError as e:
            problems.append(
                f"{field}: {e.args[0]!r} is not a spec field (e.g. train.lr, lora.rank, seed, init)"
            )
        except ValueError as e:
            msg = format_errors(e, "", {})[0].lstrip(": ") if isinstance(e, ValidationError) else str(e)
            problems.append(f"{field}: {msg}")
    return problems


def _field_problem(name: str, values: list[Any]) -> str | None:
    """The first of ``values`` field ``name`` refuses, as 'value V is invalid: why' (None: all pass)."""
    adapter = _field_adapter(name)
    for value in values:
        try:
            adapter.validate_python(value)
        except ValidationError as e:
            return f"value {value!r} is invalid: {e.errors()[0]['msg']}"
    return None


def grid_size(spec: SweepSpec) -> int:
    """Number of trials the spec expands to (grid product × num_samples × backbones)."""
    n = 1
    for axis in spec.search.axes.values():
        if isinstance(axis, list):
            n *= len(axis)
    if "backbone" not in spec.search.axes:
        n *= len(spec.backbones)
    sampled = any(not isinstance(a, list) for a in spec.search.axes.values())
    return n * max(1, len(spec.search.cases)) * (spec.search.num_samples if sampled else 1)


def describe(spec: SweepSpec) -> str:
    """One paragraph a person can check before launching: what the sweep will run."""
    axes = (
        ", ".join(f"{k}={v if isinstance(v, list) else v.model_dump()}" for k, v in spec.search.axes.items())
        or "none"
    )
    seq = spec.sequential
    sequential = ""
    if seq is not None:
        sequential = (
            f"; then more seeds, up to {seq.max_seeds} per arm, while a comparison is open (anytime-valid, "
            f"alpha {seq.alpha:g} family-wise"
            + (f", equivalent within ±{seq.min_effect:g}" if seq.min_effect else "")
            + (f", budget {seq.budget_device_hours:g} device-hours" if seq.budget_device_hours else "")
            + ")"
        )
    return (
        f"sweep {spec.name!r}: {grid_size(spec)} trial(s) over {len(spec.backbones)} backbone(s) "
        f"[{', '.join(b.key for b in spec.backbones)}]; axes: {axes}; scheduler {spec.scheduler.type} on "
        f"{spec.scheduler.metric} ({spec.scheduler.mode}); {spec.train.epochs} epoch(s){sequential}; "
        f"storage {spec.storage}"
    )
