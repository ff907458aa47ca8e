"""From a validated sweep spec to its trials: one home for "spec -> trials".

A trial is a point of the spec's search space: its *params* (axis -> value, e.g. ``{"init": "gap",
"seed": 42}``) applied to the sweep's base values give the trial's own spec, validated here once
(:func:`plan_trial`, cached per spec and params) and handed to the stages as a :class:`PlannedTrial`.

The same params are the Tune config of the trial (:func:`param_space` / :func:`params_of` translate
between them), name its results (:func:`trial_id`) and its seed group (the config minus its seed,
:func:`gapinit_ray.seedgroup.ids.group_id`).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from gapinit_ray.errors import SpecError
from gapinit_ray.spec import (
    AXIS_ALIASES,
    BackboneSpec,
    Choice,
    LogUniform,
    SweepSpec,
    Uniform,
    set_dotted,
    spec_from_dict,
)
from gapinit_ray.spec.overrides import parse_value

#: The Tune config key of the explicit ``search.cases``: a grid over their index (see :func:`params_of`).
CASE_KEY = "case"
#: The seed's key in Tune configs (the params call it ``seed``). Tune orders grid variants by the sorted
#: config keys, the first key varying fastest; "_seed" sorts before every spec field name, so a
#: configuration's seeds are created one after another and seed-group ASHA's groups fill up before the
#: next configuration starts.
SEED_KEY = "_seed"
#: The Tune config key of a trial given whole (a sequential round's trials are a list of params, not a
#: grid): its value is the params as sorted JSON (see :func:`params_of`).
TRIAL_KEY = "_trial"


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of a sweep, validated: what every stage needs to run it or to name its results."""

    params: dict[str, Any]  # axis -> value, as searched (``seed``, ``init``, ``train.lr``...)
    spec: SweepSpec  # the sweep's base values with ``params`` applied (search space emptied)
    backbone: BackboneSpec  # the backbone this trial trains
    trial_id: str  # :func:`trial_id` of ``params``: the results store's and Ray Train's run name
    group_id: str  # its seed group: :func:`~gapinit_ray.seedgroup.ids.group_id` of ``config``
    seed: int
    config: dict[str, Any]  # ``params`` plus the standard result columns (see :func:`result_config`)


# ------------------------------------------------------------------------------------ params


def parse_trial_params(text: str) -> dict[str, Any]:
    """``init=gap,seed=42,train.lr=1e-4`` -> dict (values parsed as YAML)."""
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise SpecError(f"--trial {text!r}: expected KEY=VALUE pairs separated by commas, got {item!r}")
        k, v = item.split("=", 1)
        # as in spec overrides: a `!!python/...` tag is an error, text that is not YAML stays text
        params[k.strip()] = parse_value(v, f"--trial {item!r}")
    if not params:
        raise SpecError(f"--trial {text!r}: no KEY=VALUE pair; give e.g. --trial init=gap,seed=42")
    return params


def trial_id(params: dict[str, Any]) -> str:
    """Readable, filesystem-safe, unique name of a trial's parameters (stable across runs)."""
    body = ",".join(f"{k}={params[k]}" for k in sorted(params))
    digest = hashlib.sha1(body.encode()).hexdigest()[:8]
    short = re.sub(r"[^A-Za-z0-9_.=,-]", "", body.replace("lora.", "").replace("train.", ""))[:80]
    return f"{short}_{digest}" if short else digest


# ------------------------------------------------------------------------------ the trial's spec

#: Trials validated in this process, by (spec, params) as JSON: a trial's spec is validated once, not
#: per Train run and per reported result. Bounded (a sweep driver sees every trial of a sampled space).
_PLANNED: OrderedDict[tuple[str, str], PlannedTrial] = OrderedDict()
_PLANNED_MAX = 4096


def _params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=repr)


def remember(spec: SweepSpec, trials: list[PlannedTrial]) -> None:
    """Take ``trials``, planned from ``spec`` in another process (the driver's :func:`plan`), as this
    process's own: :func:`plan_trial` then returns them without validating again."""
    base = spec.model_dump_json()  # once: a trial process takes the whole grid's plan
    for trial in trials:
        _PLANNED[(base, _params_key(trial.params))] = trial
    while len(_PLANNED) > _PLANNED_MAX:
        _PLANNED.popitem(last=False)


def plan_trial(spec: SweepSpec, params: dict[str, Any]) -> PlannedTrial:
    """The validated trial of ``params`` in ``spec`` (cached: the same spec and params are validated
    once per process, or never when the driver's plan was :func:`remember`-ed; a spec changed since
    is a new key)."""
    key = (spec.model_dump_json(), _params_key(params))
    hit = _PLANNED.get(key)
    if hit is not None:
        _PLANNED.move_to_end(key)
        return hit
    tspec, bspec = _validate_trial(spec, params)
    config = {"backbone": bspec.key, "lora.rank": tspec.lora.rank, "train.lr": tspec.train.lr, **params}
    from gapinit_ray.seedgroup.ids import group_id

    planned = PlannedTrial(
        params=dict(params),
        spec=tspec,
        backbone=bspec,
        trial_id=trial_id(params),
        group_id=group_id(config),
        seed=tspec.seed,
        config=config,
    )
    _PLANNED[key] = planned
    while len(_PLANNED) > _PLANNED_MAX:
        _PLANNED.popitem(last=False)
    return planned


def _validate_trial(spec: SweepSpec, params: dict[str, Any]) -> tuple[SweepSpec, BackboneSpec]:
    raw = spec.model_dump(mode="json")
    raw["search"] = {}
    raw["sequential"] = None  # how many seeds the sweep runs is the driver's concern, not a trial's
    key = params.get("backbone", spec.backbones[0].key)
    for name, value in params.items():
        if name == "backbone":
            continue
        try:
            set_dotted(raw, AXIS_ALIASES.get(name, name), copy.deepcopy(value))
        except KeyError:
            raise SpecError(
                f"trial parameter {name!r} is not a spec field (e.g. init, seed, lora.rank)"
            ) from None
    tspec = spec_from_dict(raw, source=f"trial {params}")
    bspec = next((b for b in tspec.backbones if b.key == key), None)
    if bspec is None:
        raise SpecError(
            f"trial backbone {key!r} is not in backbones ({', '.join(b.key for b in tspec.backbones)})"
        )
    return tspec, bspec


def trial_spec(spec: SweepSpec, params: dict[str, Any]) -> tuple[SweepSpec, BackboneSpec]:
    """The spec of one trial: the sweep's base values with this trial's axis values applied."""
    planned = plan_trial(spec, params)
    return planned.spec, planned.backbone


def result_config(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The trial's parameters plus the standard result columns (backbone, rank, lr) even when they are
    not searched, so every row says what it ran."""
    return dict(plan_trial(spec, params).config)


# ---------------------------------------------------------------------------------- search space


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every grid combination (cases × list axes × backbones), sampled axes left out."""
    axes = {k: v for k, v in spec.search.axes.items() if isinstance(v, list)}
    if "backbone" not in axes and len(spec.backbones) > 1:
        axes["backbone"] = [b.key for b in spec.backbones]
    cases = spec.search.cases or [{}]
    points = []
    for case in cases:
        for combo in itertools.product(*axes.values()):
            points.append({**dict(zip(axes, combo, strict=True)), **case})
    return points


def plan(spec: SweepSpec) -> list[PlannedTrial]:
    """The sweep's grid trials, validated (sampled axes are drawn by Tune, so they are not here)."""
    return [plan_trial(spec, point) for point in grid_points(spec)]


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's param space: grid axes as ``grid_search``, sampled axes as distributions, and the
    explicit cases as a grid over their index (merged back by :func:`params_of`)."""
    from ray import tune

    space: dict[str, Any] = {}
    seeds = spec.search.axes.get("seed")
    if isinstance(seeds, list):
        space[SEED_KEY] = tune.grid_search(seeds)
    for name, axis in spec.search.axes.items():
        if name == "seed":
            name = SEED_KEY
            if isinstance(axis, list):
                continue
        if isinstance(axis, list):
            space[name] = tune.grid_search(axis)
        elif isinstance(axis, Choice):
            space[name] = tune.choice(axis.choice)
        elif isinstance(axis, Uniform):
            space[name] = tune.uniform(*axis.uniform)
        elif isinstance(axis, LogUniform):
            space[name] = tune.loguniform(*axis.loguniform)
    if "backbone" not in space and len(spec.backbones) > 1:
        space["backbone"] = tune.grid_search([b.key for b in spec.backbones])
    if spec.search.cases:
        space[CASE_KEY] = tune.grid_search(list(range(len(spec.search.cases))))
    return space


def params_of(config: dict[str, Any], spec: SweepSpec) -> dict[str, Any]:
    """A trial's flat parameters (axis -> value) from its Tune config (cases expanded)."""
    if TRIAL_KEY in config:
        return json.loads(config[TRIAL_KEY])
    params = {("seed" if k == SEED_KEY else k): v for k, v in config.items() if k != CASE_KEY}
    if CASE_KEY in config:
        params.update(spec.search.cases[config[CASE_KEY]])
    return params
