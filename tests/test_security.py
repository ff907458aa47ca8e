"""Security properties, checked for real: YAML is loaded safely (a code-running tag is an error and runs
nothing), no unsafe deserialization in the package's source, names that end up in paths cannot escape
their directory, and the embedded local Ray listens on loopback only."""

from __future__ import annotations

import ast
import contextlib
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from gapinit_ray.errors import GapinitError, SpecError
from gapinit_ray.plan import trial_id
from gapinit_ray.results import ResultsStore
from gapinit_ray.spec import spec_from_dict

from .conftest import ROOT
from .test_bad_input import gapinit, raw_spec, write_spec
from .test_sweep import _kill_tree

PACKAGE = ROOT / "gapinit_ray"

# ------------------------------------------------------------------------------------------- YAML

CODE_TAGS = {
    "apply": "!!python/object/apply:os.system ['touch {marker}']",
    "new": "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "name": "!!python/name:os.system",
}


@pytest.mark.parametrize("tag", list(CODE_TAGS))
@pytest.mark.parametrize("where", ["spec file (validate)", "spec file (run)", "override", "--trial"])
def test_yaml_tags_that_run_code_are_refused_and_run_nothing(tmp_path: Path, tag: str, where: str) -> None:
    marker = tmp_path / "pwned"
    value = CODE_TAGS[tag].format(marker=marker)
    clean = write_spec(tmp_path, raw_spec(tmp_path))
    if where.startswith("spec file"):
        text = yaml.safe_dump(raw_spec(tmp_path), sort_keys=False).replace(
            "name: quickstart", f"name: {value}"
        )
        assert value in text
        spec = write_spec(tmp_path, text, "evil.yaml")
        args = ["validate", spec] if "validate" in where else ["run", spec, "--num-cpus", "1"]
        expect = ["evil.yaml", "invalid YAML"]
    elif where == "override":
        args, expect = ["validate", clean, f"train.lr={value}"], ["train.lr"]
    else:
        args, expect = ["run", clean, "--trial", f"init={value}", "--num-cpus", "1"], ["trial"]
    r = gapinit(tmp_path, *args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gapinit: error: "), r.stderr
    assert all(e in lines[0] for e in expect), lines[0]
    assert not marker.exists(), "a YAML tag ran code"
    assert not list(tmp_path.rglob("*.parquet"))


# --------------------------------------------------------------------------- unsafe deserialization


UNPICKLERS = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "marshal", "shelve"}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` of a Name / Attribute chain ('' for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def _kw_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords
    )


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Every place ``source`` may deserialize code-carrying data: pickle-family loads (also imported by
    name), ``torch.load`` without ``weights_only=True``, ``numpy.load(allow_pickle=True)``,
    ``pandas.read_pickle``, non-safe YAML loaders, ``eval`` / ``exec``, ``trust_remote_code=True``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLERS:
            found += [
                f"{where}: from {node.module} import {a.name}" for a in node.names if "load" in a.name.lower()
            ]
        if isinstance(node, ast.Attribute) and _dotted(node) in (
            "yaml.Loader",
            "yaml.UnsafeLoader",
            "yaml.FullLoader",
        ):
            found.append(f"{where}: {_dotted(node)}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, leaf = name.rpartition(".")
        if head.split(".")[0] in UNPICKLERS and ("load" in leaf.lower() or leaf in ("Unpickler", "open")):
            found.append(f"{where}: {name}()")
        elif name == "torch.load" and not _kw_is(node, "weights_only", True):
            found.append(f"{where}: torch.load() without weights_only=True")
        elif leaf == "load" and head in ("np", "numpy") and _kw_is(node, "allow_pickle", True):
            found.append(f"{where}: {name}(allow_pickle=True)")
        elif leaf == "read_pickle" or name in (
            "yaml.load",
            "yaml.unsafe_load",
            "yaml.full_load",
            "eval",
            "exec",
        ):
            found.append(f"{where}: {name}()")
        if _kw_is(node, "trust_remote_code", True):
            found.append(f"{where}: {name}(trust_remote_code=True)")
    return found


def test_the_scanner_finds_each_kind_of_unsafe_load() -> None:
    bad = """
import pickle, torch, yaml, numpy as np, pandas as pd
from cloudpickle import loads
pickle.load(f); pickle.loads(b); pickle.Unpickler(f)
torch.load(p); torch.load(p, weights_only=False)
np.load(p, allow_pickle=True); pd.read_pickle(p)
yaml.load(t, Loader=yaml.Loader); yaml.unsafe_load(t)
eval(s); AutoModel.from_pretrained(p, trust_remote_code=True)
"""
    assert len(unsafe_loads(bad)) == 13, unsafe_loads(bad)
    good = """
import torch, yaml, numpy as np
torch.load(p, weights_only=True); np.load(p); yaml.safe_load(t); model.eval(); json.loads(s)
"""
    assert unsafe_loads(good) == []


def test_no_unsafe_deserialization_in_the_package() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    found = [hit for f in files for hit in unsafe_loads(f.read_text(), str(f.relative_to(ROOT)))]
    assert found == [], "\n".join(found)


# ------------------------------------------------------------------------------------ path names


@pytest.mark.parametrize(
    "name",
    ["a/b", "../x", "..", ".", ".hidden", "a\\b", "/abs", "", "a b", "x" * 101, "-rf", "a\x00b", "a..b"],
)
def test_sweep_names_that_could_leave_the_storage_dir_are_refused(tmp_path: Path, name: str) -> None:
    raw = raw_spec(tmp_path, name=name)
    with pytest.raises(SpecError, match="name"):
        spec_from_dict(raw)


def test_plain_sweep_names_are_accepted(tmp_path: Path) -> None:
    for name in ("quickstart", "gap-vs-default_r8.v2", "2026-01-sweep"):
        assert spec_from_dict(raw_spec(tmp_path, name=name)).name == name


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", "a\\b"])
def test_results_store_refuses_sweep_names_with_path_parts(tmp_path: Path, name: str) -> None:
    with pytest.raises(GapinitError, match="sweep"):
        ResultsStore(str(tmp_path), name)


HOSTILE = [
    "../../etc/passwd",
    "/abs/path",
    "..",
    ".",
    "a/../../b",
    "..\\..\\win",
    "_hidden",
    ".dot",
    "é/" * 20,
]


@pytest.mark.parametrize("value", [*HOSTILE, "x" * 300])
def test_trial_ids_from_any_parameter_value_are_one_safe_path_part(value: str) -> None:
    tid = trial_id({"train.prompt": value, "seed": 1})
    assert "/" not in tid and "\\" not in tid and tid not in (".", "..") and "\x00" not in tid
    assert len(tid) <= 120
    assert (Path("/root/sweep") / "train" / tid).parent == Path("/root/sweep/train")


def test_results_store_keeps_any_trial_id_inside_its_directory(tmp_path: Path) -> None:
    """A trial id is only ever a file or directory *name* in the store (escaped): whatever it holds,
    nothing is written outside ``<root>/<sweep>/results``, and it reads back unchanged."""
    root = tmp_path / "root"
    store = ResultsStore(str(root), "s")
    config = {"init": "gap", "seed": 1}
    for tid in HOSTILE:
        store.write_trial(tid, config, status="RUNNING")
        store.write_report(tid, config, {"epoch": 1.0, "val_cider": 1.0})
    results = (root / "s" / "results").resolve()
    written = [p.resolve() for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(results in p.parents for p in written), written
    assert sorted(store.metrics()["trial_id"].to_pylist()) == sorted(HOSTILE)
    assert sorted(store.trials()["trial_id"].to_pylist()) == sorted(HOSTILE)
    # an id too long to be a file name is refused by name, before anything is written
    with pytest.raises(GapinitError, match="too long for a file name"):
        store.write_report("x" * 300, config, {"epoch": 1.0})
    assert [p.resolve() for p in tmp_path.rglob("*") if p.is_file()] == written


# ------------------------------------------------------------------------- embedded Ray: loopback

EMBEDDED = """
import json, os, sys
from gapinit_ray.cluster import LOCAL_ONLY_ENV, ray_session
with ray_session(num_cpus=1):
    import ray
    assert ray.get(ray.remote(lambda: 41).remote()) + 1 == 42  # a task ran: the node works on loopback
    print("READY", flush=True)
    sys.stdin.readline()
from ray._private import ray_constants
print(json.dumps([ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(LOCAL_ONLY_ENV)]), flush=True)
"""


def _listening(pids: set[int]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of ``pids``."""
    out = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                out.append((c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()))
    return out


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@pytest.mark.slow
def test_embedded_local_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    """The Ray the CLI starts for a local run (``ray_session`` without an address), started for real:
    every listening socket of its process tree (GCS, raylet, workers, dashboard and Jobs API, agents)
    is on a loopback address, none on 0.0.0.0 / :: / the machine's address."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", EMBEDDED],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    driver = psutil.Process(proc.pid)
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()[-3000:]
        pids = {driver.pid, *(p.pid for p in driver.children(recursive=True))}
        sockets = _listening(pids)
        names = {name for _, _, name in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets  # the servers were found
        exposed = [s for s in sockets if not _loopback(s[0])]
        assert exposed == [], f"listening beyond loopback: {exposed}"
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
    except BaseException:
        _kill_tree(driver)
        raise
    assert proc.returncode == 0, err[-3000:]
    # the switch is Ray's single-machine mode, for the embedded start only: afterwards it is off again
    assert json.loads(out.splitlines()[-1]) == [True, None]
