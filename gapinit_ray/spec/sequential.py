"""The ``sequential`` section: run seeds until each comparison is decided (anytime-valid), within a
budget. What the fields mean and why the method is valid: :mod:`gapinit_ray.sequential` and
:mod:`gapinit_ray.results.anytime`; the checks against the rest of the spec: :func:`check_sequential`.

```yaml
sequential:
  compare: [init=gap, init=random, init=mica]   # the first arm against each other (default: the init axis)
  alpha: 0.05             # family-wise error over all comparisons (Bonferroni)
  min_effect: 0.05        # δ in metric units: "equal within ±δ" is a verdict too (optional)
  min_seeds: 3            # no verdict before this many seeds (default: the search.seed list's length)
  max_seeds: 12           # no arm gets more seeds than this
  budget_device_hours: 4  # the sequential phase starts no round that would exceed it (optional)
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field

from gapinit_ray.spec.sections import StrictModel

if TYPE_CHECKING:
    from gapinit_ray.spec.sweep_model import SweepSpec


class SequentialSpec(StrictModel):
    """Seeds until the answer is known: after every finished seed each comparison's anytime-valid
    confidence sequence is updated; a comparison ends as higher / lower / equivalent within ±δ, or
    unresolved at the maximum seeds or the budget. New seeds go only to the arms of open comparisons."""

    compare: list[str] | None = Field(
        None,
        description="arms as axis=value, the first against each other (default: the first value of the "
        "init axis against each other value), within every combination of the other axes",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise error rate over all comparisons")
    min_effect: float | None = Field(
        None, gt=0, description="smallest difference that matters (metric units): enables 'equivalent'"
    )
    min_seeds: int | None = Field(
        None, ge=2, description="seeds per arm before any verdict (default: len(search.seed))"
    )
    max_seeds: int = Field(ge=2, description="most seeds any arm gets")
    budget_device_hours: float | None = Field(
        None,
        gt=0,
        description="device-hours (GPU-hours on GPU, CPU-hours on CPU) the whole sweep may use; a "
        "sequential round starts only when its estimated cost fits",
    )
    metric: str | None = Field(None, description="metric compared (default: scheduler.metric)")
    mode: Literal["max", "min"] | None = Field(None, description="default: scheduler.mode")
    seeds_per_round: int = Field(
        1,
        ge=1,
        description="seeds each open arm gets per round (looks still happen after every seed, in seed "
        "order; more seeds per round use a large cluster better and may train seeds a look did not need)",
    )
    prior_scale: float | None = Field(
        None, gt=0, description="g, the prior variance of the standardized effect (default: the module's)"
    )


def parse_arm(text: str) -> tuple[str, Any]:
    """``init=gap`` -> ("init", "gap"); ``lora.rank=8`` -> ("lora.rank", 8) (value read as YAML)."""
    axis, sep, raw = str(text).partition("=")
    axis, raw = axis.strip(), raw.strip()
    if not sep or not axis or not raw:
        raise ValueError(f"sequential.compare: arm {text!r} is not axis=value (e.g. init=gap, lora.rank=8)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict | list) or value is None:
        value = raw
    return axis, value


def arms(spec: SweepSpec) -> tuple[str, list[Any]]:
    """The compared axis and its values (as the search axis holds them), the first compared against
    each other. Raises ValueError naming ``sequential.compare`` when an arm matches no axis value."""
    seq = spec.sequential
    assert seq is not None
    if seq.compare is None:
        init = spec.search.axes.get("init")
        if not isinstance(init, list) or len(init) < 2:
            raise ValueError(
                "sequential.compare: give the arms (e.g. [init=gap, init=random]); the search has no "
                "init axis with two or more values to default to"
            )
        return "init", list(init)
    if len(seq.compare) < 2:
        raise ValueError("sequential.compare needs at least two arms (axis=value)")
    parsed = [parse_arm(a) for a in seq.compare]
    axes = {a for a, _ in parsed}
    if len(axes) > 1:
        raise ValueError(
            f"sequential.compare: every arm must vary the same axis (got {', '.join(sorted(axes))}); the "
            "other axes form the strata compared within"
        )
    (axis,) = axes
    if axis == "seed":
        raise ValueError("sequential.compare: seed is what is paired, not an arm; compare another axis")
    values = spec.search.axes.get(axis)
    if not isinstance(values, list):
        values = list(dict.fromkeys(c[axis] for c in spec.search.cases if axis in c))
    if not values:
        raise ValueError(
            f"sequential.compare: {axis!r} is not a search axis; axes: "
            f"{', '.join(k for k in spec.search.axes if k != 'seed') or 'none'}"
        )
    out = []
    for (_, v), text in zip(parsed, seq.compare, strict=True):
        match = [w for w in values if _same(v, w)]
        if not match:
            raise ValueError(
                f"sequential.compare: no trial has {text} (search.{axis} values: "
                f"{', '.join(str(w) for w in values)})"
            )
        out.append(match[0])
    if len({repr(v) for v in out}) != len(out):
        raise ValueError("sequential.compare: an arm is given twice")
    return axis, out


def _same(v: Any, w: Any) -> bool:
    if str(v) == str(w):
        return True
    try:
        return not isinstance(w, bool) and float(v) == float(w)
    except (TypeError, ValueError):
        return False


def initial_seeds(spec: SweepSpec) -> list[int]:
    seeds = spec.search.axes.get("seed")
    return list(seeds) if isinstance(seeds, list) else [spec.seed]


def check_sequential(spec: SweepSpec) -> None:
    """The ``sequential`` section against the rest of the spec; raises ValueError naming the field."""
    seq = spec.sequential
    if seq is None:
        return
    from gapinit_ray.names import ASHA

    sampled = [k for k, a in spec.search.axes.items() if not isinstance(a, list)]
    if sampled:
        raise ValueError(
            f"sequential.compare needs a grid search; axis {sampled[0]!r} is sampled: list its values"
        )
    seeds = spec.search.axes.get("seed")
    if not isinstance(seeds, list) or not seeds:
        raise ValueError("sequential.max_seeds needs search.seed: the list of seeds every arm runs first")
    if any(not isinstance(s, int) or isinstance(s, bool) for s in seeds):
        raise ValueError("sequential.max_seeds: search.seed values must be integers")
    if seq.max_seeds < len(seeds):
        raise ValueError(
            f"sequential.max_seeds {seq.max_seeds} is below the {len(seeds)} seeds search.seed runs first"
        )
    low = seq.min_seeds if seq.min_seeds is not None else max(2, len(seeds))
    if seq.max_seeds < low:
        raise ValueError(f"sequential.max_seeds {seq.max_seeds} is below min_seeds {low}")
    if spec.scheduler.type == ASHA:
        raise ValueError(
            "sequential.compare needs whole seed groups: scheduler.type asha stops single seeds, which "
            "breaks the pairing of seeds across arms; use seed-group-asha or fifo"
        )
    metric = seq.metric or spec.scheduler.metric
    from gapinit_ray.names import val_metric

    known = [*spec.reported_metrics(), *(val_metric(m) for m in spec.eval.final_metrics)]
    if metric not in known:
        raise ValueError(f"sequential.metric {metric!r} is never reported; reported: {', '.join(known)}")
    arms(spec)


def min_seeds(spec: SweepSpec) -> int:
    """Seeds per arm before any verdict: ``sequential.min_seeds``, else the initial seeds (at least 2)."""
    seq = spec.sequential
    assert seq is not None
    return seq.min_seeds if seq.min_seeds is not None else max(2, len(initial_seeds(spec)))


def seed_sequence(spec: SweepSpec) -> list[int]:
    """The seeds every arm runs, in order, up to ``max_seeds``: ``search.seed`` first, then
    max(search.seed) + 1, + 2, ... (deterministic, so a resumed or repeated sweep adds the same seeds)."""
    seq = spec.sequential
    assert seq is not None
    seeds = initial_seeds(spec)
    nxt = max(seeds) + 1
    while len(seeds) < seq.max_seeds:
        seeds.append(nxt)
        nxt += 1
    return seeds
