"""Bad sequential input through the real `gapinit` command: one `gapinit: error:` line naming the field,
exit 2, before any trial starts and with nothing written to the results store (as tests/test_bad_input.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..test_bad_input import gapinit, raw_spec, write_spec

SEQ = {"max_seeds": 6}


def _case(tmp: Path, seq: dict, command: str = "validate") -> tuple[list, Path]:
    raw = raw_spec(tmp)
    raw["search"] = {"init": ["gap", "random", "mica"], "seed": [1, 2, 3]}
    raw["scheduler"] = {"type": "fifo", "metric": "val_cider", "mode": "max"}
    raw["sequential"] = {**SEQ, **seq}
    spec = write_spec(tmp, raw)
    args = [command, spec] + (["--num-cpus", "2", "--quiet"] if command == "run" else [])
    return args, spec


CASES = {
    "alpha above 1": ({"alpha": 1.2}, ["spec.yaml", "sequential.alpha", "less than 1"]),
    "alpha 0": ({"alpha": 0}, ["spec.yaml", "sequential.alpha", "greater than 0"]),
    "max seeds below min": ({"min_seeds": 8}, ["sequential.max_seeds", "below min_seeds 8"]),
    "delta not positive": ({"min_effect": -0.05}, ["sequential.min_effect", "greater than 0"]),
    "arm no axis value produces": (
        {"compare": ["init=gap", "init=pissa"]},
        ["sequential.compare", "no trial has init=pissa", "gap, random, mica"],
    ),
    "arm on no axis": ({"compare": ["init=gap", "train.lr=0.1"]}, ["sequential.compare", "same axis"]),
    "budget not positive": ({"budget_device_hours": -1}, ["sequential.budget_device_hours"]),
}


def _check(tmp: Path, args: list, expected: list[str]) -> None:
    r = gapinit(tmp, *args)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.returncode == 2, f"exit {r.returncode}: {r.stderr}"
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gapinit: error: "), r.stderr
    missing = [s for s in expected if s not in lines[0]]
    assert not missing, f"error line does not name {missing}: {lines[0]}"
    assert not list(tmp.rglob("results/**/*.parquet"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_sequential_section(case: str, tmp_path: Path) -> None:
    seq, expected = CASES[case]
    args, _ = _case(tmp_path, seq)
    _check(tmp_path, args, expected)


def test_a_budget_over_reports_without_cost_is_refused_before_ray_starts(tmp_path: Path) -> None:
    """A sweep dir written by a version whose reports carried no device_s: a budget cannot be held."""
    from gapinit_ray.results import ResultsStore

    args, spec_path = _case(tmp_path, {"budget_device_hours": 1.0}, command="run")
    import json

    from gapinit_ray.spec import load_spec

    spec = load_spec(spec_path)
    sweep = tmp_path / "store" / spec.name
    sweep.mkdir(parents=True)
    (sweep / "spec.json").write_text(json.dumps(spec.model_dump(mode="json")))
    store = ResultsStore(spec.storage, spec.name)
    cfg = {"init": "gap", "seed": 1}
    store.write_trial("old", cfg, status="TERMINATED")
    store.write_report("old", cfg, {"epoch": 1.0, "val_cider": 0.5})
    r = gapinit(tmp_path, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.splitlines()
    assert "sequential.budget_device_hours" in line and "carry no cost" in line
