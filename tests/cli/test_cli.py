"""The `gapinit` command: real subprocesses, exit codes and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def gapinit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "gapinit_ray.cli", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_validate_accepts_every_shipped_spec() -> None:
    for path in SWEEPS:
        r = gapinit("validate", str(path))
        assert r.returncode == 0, f"{path.name}: {r.stderr}"
        assert f"{path}: OK" in r.stdout


def test_validate_rejects_with_exit_2_and_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "sweeps" / "quickstart.yaml").read_text().replace("rank: 1", "rank: 0"))
    r = gapinit("validate", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml" in lines[0] and "lora.rank" in lines[0]
    assert "Traceback" not in r.stderr


def test_overrides_on_the_command_line(tmp_path: Path) -> None:
    r = gapinit("validate", str(ROOT / "sweeps" / "quickstart.yaml"), "search.seed=[1,2,3,4]")
    assert r.returncode == 0 and "12 trial(s)" in r.stdout  # 3 inits × 4 seeds
    r = gapinit("validate", str(ROOT / "sweeps" / "quickstart.yaml"), "train.lr=-1")
    assert r.returncode == 2 and "train.lr" in r.stderr and "Traceback" not in r.stderr


def test_missing_spec_file() -> None:
    r = gapinit("validate", "does-not-exist.yaml")
    assert r.returncode == 2 and "does-not-exist.yaml: spec file not found" in r.stderr


def _commands() -> list[str]:
    import argparse

    from gapinit_ray.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_top_level_help() -> None:
    """`gapinit --help` lists every command (argparse %-formats help strings: a bare `%` once broke it)."""
    r = gapinit("--help")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("usage: gapinit")
    for cmd in _commands():
        assert cmd in r.stdout


@pytest.mark.parametrize("cmd", _commands())
def test_help_on_every_command(cmd: str) -> None:
    r = gapinit(cmd, "--help")
    assert r.returncode == 0 and "usage: gapinit" in r.stdout, r.stderr


def test_calibrate_prints_the_per_layer_table(tmp_path: Path) -> None:
    args = [
        "calibrate",
        str(ROOT / "sweeps" / "quickstart.yaml"),
        f"storage={tmp_path / 'store'}",
        "backbones=[{name: tiny-blip2, pretrain: false}]",
        "calibration.num_samples=12",
        "data.sources.shapes.num_images=40",
        "--no-ray",
    ]
    r = gapinit(*args)
    assert r.returncode == 0, r.stderr
    assert "GapArtifact" in r.stdout and "spot_score" in r.stdout and "first_share" in r.stdout
    assert "cache hit" in gapinit(*args).stdout


def test_results_of_a_missing_sweep_is_one_line(tmp_path: Path) -> None:
    r = gapinit("results", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no results here" in r.stderr and "Traceback" not in r.stderr


def test_the_end_of_sweep_table_has_one_row_per_configuration(tmp_path: Path) -> None:
    """Axes a sweep varies besides backbone / init / rank (a case's calibration.passes, a searched lr)
    get their own column in the table `run` prints, so configurations are never pooled; constant
    axes and the seed do not."""
    from gapinit_ray.cli import default_by
    from gapinit_ray.results import ResultsStore

    store = ResultsStore(str(tmp_path), "s")
    for i, (passes, seed) in enumerate([("separate", 1), ("separate", 2), ("joint", 1), ("joint", 2)]):
        cfg = {"init": "gap", "seed": seed, "calibration.passes": passes, "train.epochs": 3}
        store.write_report(f"t{i}", cfg, {"epoch": 1.0, "val_cider": 0.5})
    by = default_by(store.metrics())
    assert by == ["backbone", "init", "rank", "ax_calibration__passes"]  # not train.epochs, not seed


def test_every_command_is_registered_by_name() -> None:
    """The parser is built from the registry: each command's own module registered its run function."""
    from gapinit_ray.cli import COMMANDS

    assert sorted(COMMANDS) == _commands()
    for name, cmd in COMMANDS.items():
        assert cmd.name == name and cmd.run.__module__.startswith("gapinit_ray.cli.")
