"""Bad input, table-driven: every case runs the real `gapinit` command in a subprocess and must exit 2
with exactly one `gapinit: error:` line naming the file / field / id concerned, no traceback, and
nothing written to the results store. Specs are validated (`validate --check-data` where data is
involved, no training); the few `run` / `calibrate` cases fail before any trial starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"


def gapinit(
    tmp: Path, *args: object, timeout: float = 60, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp), "PYTHONWARNINGS": "ignore"}
    # a user's shell: nothing of the test session's own Ray (its address, the auth settings Ray puts in
    # the environment of the process that started it)
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "gapinit_ray.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
        timeout=timeout,
    )


def dataset(tmp: Path, n: int = 6) -> Path:
    """A tiny Karpathy-format caption set: ``ds/dataset.json`` + ``ds/images/<i>.png``, 4 train, 2 val."""
    root = tmp / "ds"
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        Image.new("RGB", (32, 32), (40 * i % 256, 90, 200)).save(root / "images" / f"{i}.png")
        entries.append(
            {
                "filename": f"{i}.png",
                "imgid": i,
                "split": "train" if i < n - 2 else "val",
                "sentences": [{"raw": f"a red circle in the corner {i}"}],
            }
        )
    (root / "dataset.json").write_text(json.dumps({"images": entries}))
    return root


def raw_spec(tmp: Path, **over) -> dict:
    """The quickstart spec on the tiny data set above, storage under tmp, no pretraining."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    ds = dataset(tmp)
    raw["storage"] = str(tmp / "store")
    raw["backbones"] = [{"name": "tiny-blip2", "pretrain": False}]
    raw["data"] = {
        "sources": {
            "ds": {
                "format": "karpathy",
                "annotations": str(ds / "dataset.json"),
                "images": str(ds / "images"),
            }
        },
        "train": {"source": "ds", "split": "train"},
        "val": {"source": "ds", "split": "val"},
    }
    raw["calibration"].update(
        {"sources": [{"source": "ds", "split": "train"}], "num_samples": 4, "workers": 1}
    )
    raw.update(over)
    return raw


def write_spec(tmp: Path, raw: dict | str, name: str = "spec.yaml") -> Path:
    path = tmp / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


def edit_captions(tmp: Path, index: int, raw: str) -> None:
    path = tmp / "ds" / "dataset.json"
    data = json.loads(path.read_text())
    data["images"][index]["sentences"] = [{"raw": raw}]
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------ cases
# Each setup builds its inputs under tmp and returns (command line, substrings the error line must hold)
# and, for a few, the environment variables to set as a third element.

Setup = Callable[[Path], tuple]


def _validate(*overrides: str, check_data: bool = False, **raw_over) -> Setup:
    def setup(tmp: Path) -> tuple[list, list[str]]:
        spec = write_spec(tmp, raw_spec(tmp, **raw_over))
        return ["validate", spec, *overrides, *(["--check-data"] if check_data else [])], ["spec.yaml"]

    return setup


def _spec_case(*overrides: str, expect: list[str], check_data: bool = False, **raw_over) -> Setup:
    base = _validate(*overrides, check_data=check_data, **raw_over)

    def setup(tmp: Path) -> tuple[list, list[str]]:
        args, _ = base(tmp)
        return args, expect

    return setup


def missing_spec(tmp):
    return ["validate", "does-not-exist.yaml"], ["does-not-exist.yaml", "not found"]


def broken_yaml(tmp):
    return ["validate", write_spec(tmp, "name: x\nstorage: [unclosed\n")], ["spec.yaml", "invalid YAML"]


def duplicate_section(tmp):
    text = yaml.safe_dump(raw_spec(tmp), sort_keys=False) + "lora:\n  rank: 4\n"
    return ["validate", write_spec(tmp, text)], ["spec.yaml:", "duplicate key 'lora'", "first on line"]


def binary_spec(tmp):
    path = tmp / "spec.yaml"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(128, 256)))
    return ["validate", path], ["spec.yaml", "not a UTF-8 text file"]


def storage_is_a_file_validate(tmp):
    (tmp / "taken").write_text("a file")
    spec = write_spec(tmp, raw_spec(tmp, storage=str(tmp / "taken" / "store")))
    return ["validate", spec], ["storage", "taken", "is a file, not a directory"]


def _run_asking(*overrides: str, expect: list[str]) -> Setup:
    """`run` on the embedded local Ray (2 CPUs, no GPU) with a resource request it can never grant."""

    def setup(tmp: Path) -> tuple[list, list[str]]:
        spec = write_spec(tmp, raw_spec(tmp))
        return ["run", spec, *overrides, "--num-cpus", "2", "--quiet"], expect

    return setup


def not_a_mapping(tmp):
    return ["validate", write_spec(tmp, "- name: x\n- storage: y\n")], ["spec.yaml", "YAML mapping"]


def unknown_nested_key(tmp):
    raw = raw_spec(tmp)
    raw["train"]["learning_rate"] = 1e-3
    return ["validate", write_spec(tmp, raw)], ["spec.yaml:", "train.learning_rate", "unknown key"]


def source_not_defined(tmp):
    raw = raw_spec(tmp)
    raw["data"]["val"]["source"] = "coco"
    return ["validate", write_spec(tmp, raw)], ["spec.yaml", "data.val.source", "'coco'"]


def missing_image(tmp):
    args, _ = _validate(check_data=True)(tmp)
    (tmp / "ds" / "images" / "1.png").unlink()
    return args, ["image file not found", "1.png", "image id 1"]


def corrupt_image(tmp):
    args, _ = _validate(check_data=True)(tmp)
    (tmp / "ds" / "images" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return args, ["corrupt or unreadable image", "2.png", "image id 2"]


def images_dir_missing(tmp):
    raw = raw_spec(tmp)
    raw["data"]["sources"]["ds"]["images"] = str(tmp / "nowhere")
    return ["validate", write_spec(tmp, raw), "--check-data"], ["image directory not found", "nowhere"]


def not_coco_format(tmp):
    raw = raw_spec(tmp)  # a Karpathy file declared as COCO captions
    raw["data"]["sources"]["ds"].update(format="coco", split="train")
    raw["data"]["val"]["split"] = "train"
    return ["validate", write_spec(tmp, raw), "--check-data"], [
        "dataset.json",
        "'annotations'",
        "coco format",
    ]


def annotations_not_json(tmp):
    raw = raw_spec(tmp)
    (tmp / "ds" / "dataset.json").write_text("{'images': [")
    return ["validate", write_spec(tmp, raw), "--check-data"], ["dataset.json", "not valid JSON"]


def empty_caption(tmp):
    args, _ = _validate(check_data=True)(tmp)
    edit_captions(tmp, 1, " \t ")  # nothing left to tokenize
    return args, ["dataset.json", "image id 1", "empty caption"]


def calibration_too_many(tmp):
    args, _ = _validate("calibration.num_samples=50", check_data=True)(tmp)
    return args, ["calibration.num_samples=50", "calibration.sources[0]", "ds/train", "only 4 images"]


def storage_under_file_validate(tmp):
    (tmp / "file.txt").write_text("not a directory")
    args, _ = _validate(f"storage={tmp / 'file.txt' / 'sub'}", check_data=True)(tmp)
    return args, ["storage", "file.txt", "not a directory"]


def storage_under_file_synthetic(tmp):
    (tmp / "file.txt").write_text("not a directory")
    raw = yaml.safe_load(QUICKSTART.read_text())  # the synthetic set is generated under the storage cache
    return (
        ["validate", write_spec(tmp, raw), f"storage={tmp / 'file.txt' / 'sub'}", "--check-data"],
        ["storage", "file.txt", "not a directory"],
    )


def storage_under_file_run(tmp):
    (tmp / "file.txt").write_text("not a directory")
    spec = write_spec(tmp, raw_spec(tmp))
    return (
        ["run", spec, f"storage={tmp / 'file.txt' / 'sub'}", "--num-cpus", "1", "--quiet"],
        ["storage", "file.txt", "not a directory"],
    )


def other_sweeps_dir(tmp):
    from gapinit_ray.spec import spec_from_dict

    other = spec_from_dict(raw_spec(tmp, train={**raw_spec(tmp)["train"], "lr": 0.5}))
    sweep = tmp / "store" / "quickstart"
    sweep.mkdir(parents=True)
    (sweep / "spec.json").write_text(json.dumps(other.model_dump(mode="json")))
    spec = write_spec(tmp, raw_spec(tmp))
    return ["run", spec, "--num-cpus", "1", "--quiet"], [str(sweep), "different spec", "train"]


def corrupt_sweep_spec_json(tmp):
    sweep = tmp / "store" / "quickstart"
    sweep.mkdir(parents=True)
    (sweep / "spec.json").write_text("{ half a file")
    spec = write_spec(tmp, raw_spec(tmp))
    return ["run", spec, "--num-cpus", "1", "--quiet"], [str(sweep / "spec.json"), "not a gapinit"]


def _laughs(levels: int = 10) -> str:
    """Nested anchors, each list nine aliases of the one before: 9**levels strings from ~40 bytes a level."""
    rows = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(rows)


def billion_laughs(tmp):
    text = yaml.safe_dump(raw_spec(tmp), sort_keys=False) + "x_laughs:\n  " + _laughs().replace("\n", "\n  ")
    return ["validate", write_spec(tmp, text)], ["spec.yaml:", "aliases expand to more than"]


def billion_laughs_override(tmp):
    args, _ = _validate()(tmp)
    flow = (
        "["
        + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}" if i else "1"] * 9) + "]" for i in range(8))
        + "]"
    )
    return [*args, f"search.seed={flow}"], ["override 'search.seed=", "aliases expand to more than"]


def deep_nesting(tmp):
    text = yaml.safe_dump(raw_spec(tmp), sort_keys=False) + "x_deep: " + "[" * 1000 + "]" * 1000 + "\n"
    return ["validate", write_spec(tmp, text)], ["spec.yaml:", "nested more than 64 levels"]


def recursive_alias(tmp):
    text = yaml.safe_dump(raw_spec(tmp), sort_keys=False) + "x_loop: &loop [1, *loop]\n"
    return ["validate", write_spec(tmp, text)], ["spec.yaml:", "recursive alias"]


def huge_spec(tmp):
    text = yaml.safe_dump(raw_spec(tmp), sort_keys=False) + "#" * (5 * 2**20) + "\n"
    return ["validate", write_spec(tmp, text)], ["spec.yaml", "larger than 4 MiB"]


def python_tag_override(tmp):
    args, _ = _validate()(tmp)  # a string field takes any text: the tag must not pass as a path
    return [*args, "storage=!!python/name:os.system"], ["override 'storage=", "!!python/name:os.system"]


def python_tag_trial(tmp):
    spec = write_spec(tmp, raw_spec(tmp))
    return ["run", spec, "--trial", "init=!!python/name:os.system"], [
        "--trial",
        "!!python/name",
        "not allowed",
    ]


def empty_trial(tmp):
    spec = write_spec(tmp, raw_spec(tmp))
    return ["run", spec, "--trial", ",", "--num-cpus", "1", "--quiet"], ["--trial ','", "no KEY=VALUE"]


def small_store(tmp: Path) -> Path:
    """A results store written directly (no training): 2 inits x 3 seeds, epochs 0-2; returns the
    sweep dir."""
    from gapinit_ray.results import ResultsStore

    store = ResultsStore(str(tmp / "store"), "sw")
    for init in ("gap", "random"):
        for seed in (1, 2, 3):
            cfg = {"backbone": "tiny-blip2", "init": init, "seed": seed, "lora.rank": 1}
            store.write_trial(f"{init}-s{seed}", cfg, status="TERMINATED")
            for epoch in (0, 1, 2):
                value = 1.0 + epoch + 0.1 * seed + (init == "gap")
                store.write_report(f"{init}-s{seed}", cfg, {"epoch": float(epoch), "val_cider": value})
    return tmp / "store" / "sw"


def _on_store(*args: str, expect: list[str]) -> Setup:
    """``args`` with ``SWEEP`` standing for a small store's sweep dir and ``FILE`` for a plain file."""

    def setup(tmp: Path) -> tuple[list, list[str]]:
        sweep = small_store(tmp)
        (tmp / "afile").write_text("a file, not a directory")
        subst = {"SWEEP": str(sweep), "FILE": str(tmp / "afile")}
        return [subst.get(a, a) for a in args], expect

    return setup


def export_sweep_slash_trial(tmp):
    """`export --help` offers <sweep>/<trial>: it resolves to <sweep>/train/<trial> (here without a
    checkpoint, so the error is about that, not 'no such trial')."""
    (tmp / "store" / "sw" / "train" / "tid-1").mkdir(parents=True)
    return ["export", tmp / "store" / "sw" / "tid-1", "--out", tmp / "new"], ["tid-1", "no checkpoint"]


def evaluate_default_split(tmp):
    """The quickstart spec has no data.test: evaluate's default split is then val, not an error about
    --split test (the adapter dir here has no weights: that is the error)."""
    (tmp / "adapter").mkdir()
    (tmp / "adapter" / "adapter_config.json").write_text("{}")
    spec = write_spec(tmp, raw_spec(tmp))
    return ["evaluate", tmp / "adapter", "--spec", spec], ["adapter", "missing adapter weights"]


def resume_corrupt_spec_json(tmp):
    sweep = small_store(tmp)
    (sweep / "spec.json").write_text("{ half a file")
    return ["resume", sweep, "--num-cpus", "1", "--quiet"], ["spec.json", "corrupt"]


def resume_spec_json_not_object(tmp):
    sweep = small_store(tmp)
    (sweep / "spec.json").write_text("[1, 2]")
    return ["resume", sweep, "--num-cpus", "1", "--quiet"], ["spec.json", "not a JSON object"]


def resume_renamed_dir(tmp):
    """A sweep dir renamed: its spec.json names another sweep; resuming it under the new name would
    start a second sweep's Tune state beside the first's results."""
    from gapinit_ray.spec import load_spec

    spec = load_spec(write_spec(tmp, raw_spec(tmp)))
    renamed = tmp / "store" / "renamed"
    renamed.mkdir(parents=True)
    (renamed / "spec.json").write_text(json.dumps(spec.model_dump(mode="json")))
    return ["resume", renamed, "--num-cpus", "1", "--quiet"], [
        "renamed",
        "names sweep 'quickstart'",
        "rename it back",
    ]


#: sockets bound (never listening) for the test session: their ports refuse connections, and no other
#: process (a cluster another test or test run starts on this machine) can take them meanwhile
_DEAD: list[socket.socket] = []


def dead_port() -> int:
    """A loopback port that refuses connections for the rest of the test session."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _DEAD.append(s)
    return s.getsockname()[1]


def run_dead_address(tmp):
    spec = write_spec(tmp, raw_spec(tmp))
    port = dead_port()
    return ["run", spec, "--address", f"127.0.0.1:{port}"], ["cannot reach the Ray cluster", str(port)]


def list_dead_address(tmp):
    port = dead_port()
    return ["list", "--address", f"http://127.0.0.1:{port}"], ["cannot reach", str(port)]


#: sockets listening (never accepting, never answering) for the test session: a connection to one
#: succeeds and then hears nothing, like a firewall or a wrong service that holds connections open
_SILENT: list[socket.socket] = []
#: what the cluster calls wait for an answer in these cases
QUICK_TIMEOUT = {"GAPINIT_CLUSTER_TIMEOUT_S": "1"}


def silent_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    _SILENT.append(s)
    return s.getsockname()[1]


def list_silent_address(tmp):
    port = silent_port()
    return (
        ["list", "--address", f"http://127.0.0.1:{port}"],
        [str(port), "did not answer within 1 s"],
        QUICK_TIMEOUT,
    )


def submit_silent_address(tmp):
    spec = write_spec(tmp, raw_spec(tmp))
    port = silent_port()
    return (
        ["submit", spec, "--address", f"http://127.0.0.1:{port}"],
        [str(port), "did not answer within 1 s"],
        QUICK_TIMEOUT,
    )


def validate_silent_address(tmp):
    spec = write_spec(tmp, raw_spec(tmp))
    port = silent_port()
    return (
        ["validate", spec, "--address", f"127.0.0.1:{port}"],
        [f"127.0.0.1:{port}", "did not answer within 1 s"],
        QUICK_TIMEOUT,
    )


def run_silent_address(tmp):
    spec = write_spec(tmp, raw_spec(tmp))
    port = silent_port()
    return (
        ["run", spec, "--address", f"127.0.0.1:{port}", "--quiet"],
        [f"127.0.0.1:{port}", "did not answer within 1 s"],
        QUICK_TIMEOUT,
    )


def run_with_jobs_api_address(tmp):
    """README has cluster users export RAY_ADDRESS=http://HEAD:8265 for `submit`; `run` cannot use it."""
    spec = write_spec(tmp, raw_spec(tmp))
    return (
        ["run", spec, "--num-cpus", "1", "--quiet"],
        ["RAY_ADDRESS http://127.0.0.1:8265", "gapinit submit", "unset RAY_ADDRESS"],
        {"RAY_ADDRESS": "http://127.0.0.1:8265"},
    )


def validate_with_jobs_api_address(tmp):
    spec = write_spec(tmp, raw_spec(tmp))
    return (
        ["validate", spec, "--address", "http://127.0.0.1:8265"],
        ["--address http://127.0.0.1:8265", "gapinit submit"],
    )


#: a token with a line break; no part of it may appear in any message
SECRET_TOKEN = "tok-first-half-s3cr3t\ntok-second-half-s3cr3t\n"


def token_file_with_line_break(tmp):
    (tmp / "token").write_text(SECRET_TOKEN)
    port = dead_port()
    return (
        ["list", "--address", f"http://127.0.0.1:{port}", "--token-file", tmp / "token"],
        ["--token-file", "token", "malformed"],
    )


def env_token_with_line_break(tmp):
    port = dead_port()
    return (
        ["list", "--address", f"http://127.0.0.1:{port}"],
        ["RAY_AUTH_TOKEN", "malformed"],
        {"RAY_AUTH_TOKEN": SECRET_TOKEN},
    )


def run_env_token_with_line_break(tmp):
    spec = write_spec(tmp, raw_spec(tmp))
    port = dead_port()
    return (
        ["run", spec, "--address", f"127.0.0.1:{port}"],
        ["RAY_AUTH_TOKEN", "malformed"],
        {"RAY_AUTH_TOKEN": SECRET_TOKEN},
    )


def dashboard_token_with_line_break(tmp):
    sweep = small_store(tmp)
    return ["dashboard", sweep, "--token", SECRET_TOKEN, "--port", "0"], ["--token", "malformed"]


def bad_trial_param(tmp):
    spec = write_spec(tmp, raw_spec(tmp))
    return ["run", spec, "--trial", "init=gap,seed"], ["--trial", "'seed'", "KEY=VALUE"]


def unknown_trial_field(tmp):
    spec = write_spec(tmp, raw_spec(tmp))
    return ["run", spec, "--trial", "init=gap,trian.lr=1"], ["trial parameter", "'trian.lr'"]


def results_no_results(tmp):
    (tmp / "store" / "empty").mkdir(parents=True)
    return ["results", tmp / "store" / "empty"], ["store/empty", "no results"]


def results_empty_store(tmp):
    (tmp / "store" / "empty" / "results").mkdir(parents=True)
    return ["results", tmp / "store" / "empty"], ["sweep empty", "no metric reports"]


def compare_empty_store(tmp):
    (tmp / "store" / "empty" / "results").mkdir(parents=True)
    return (
        ["results", tmp / "store" / "empty", "--compare", "init=gap,init=random"],
        ["sweep empty", "no metric reports"],
    )


def artifact_of_another_backbone(tmp):
    """A cache entry under this calibration's key whose meta says another backbone (copied or stale)
    must not pass for this backbone's gaps. The entry is written here, so no forward pass runs."""
    from gapinit_ray.calibration_job import artifact_parts
    from gapinit_ray.data.resolve import cache_dir, calibration_pairs
    from gapinit_ray.gap import GapArtifact, artifact_key
    from gapinit_ray.spec import spec_from_dict

    raw = raw_spec(tmp)
    spec = spec_from_dict(raw)
    parts = artifact_parts(spec, spec.backbones[0], calibration_pairs(spec))
    key = artifact_key(parts)
    meta = {**parts, "backbone": "tiny-qwen2-vl:seed=0", "num_samples": 4}
    GapArtifact(key, {}, meta).save(cache_dir(spec.storage) / "gaps")
    return (
        ["calibrate", write_spec(tmp, raw), "--no-ray"],
        ["GapArtifact", key, "tiny-qwen2-vl", "tiny-blip2", "delete that directory"],
    )


CASES: dict[str, Setup] = {
    "missing spec file": missing_spec,
    "broken YAML": broken_yaml,
    "spec not a mapping": not_a_mapping,
    "duplicate section": duplicate_section,
    "binary file as the spec": binary_spec,
    "validate: storage under a file": storage_is_a_file_validate,
    "unknown top-level key": _spec_case("bogus=1", expect=["spec.yaml:", "bogus", "unknown key"]),
    "unknown nested key": unknown_nested_key,
    "wrong type (int)": _spec_case("train.epochs=abc", expect=["spec.yaml:", "train.epochs", "integer"]),
    "wrong type (list)": _spec_case("eval.metrics=5", expect=["spec.yaml:", "eval.metrics"]),
    "rank 0": _spec_case("lora.rank=0", expect=["spec.yaml:", "lora.rank", "greater than or equal to 1"]),
    "rank negative": _spec_case("lora.rank=-2", expect=["spec.yaml:", "lora.rank"]),
    "rank axis with 0": _spec_case("search.lora.rank=[1,0]", expect=["spec.yaml:", "search.lora.rank", "0"]),
    "lr 0": _spec_case("train.lr=0", expect=["spec.yaml:", "train.lr", "greater than 0"]),
    "lr negative": _spec_case("train.lr=-1e-4", expect=["spec.yaml:", "train.lr"]),
    "empty search axis": _spec_case("search.init=[]", expect=["spec.yaml:", "search.init", "empty axis"]),
    "duplicate seeds": _spec_case("search.seed=[1,2,1]", expect=["spec.yaml:", "search.seed", "duplicate"]),
    "seed past 2**32": _spec_case(
        "search.seed=[1,1180591620717411303424]", expect=["spec.yaml:", "search.seed", "less than or equal"]
    ),
    "seed negative": _spec_case("search.seed=[-1,2]", expect=["spec.yaml:", "search.seed", "greater than"]),
    "top-level seed negative": _spec_case("seed=-7", expect=["spec.yaml", "seed", "greater than"]),
    "unknown backbone": _spec_case(
        "backbones=[{name: llava-9000}]", expect=["spec.yaml:", "backbones.0.name", "llava-9000"]
    ),
    "unknown init": _spec_case("search.init=[gap,xavier]", expect=["spec.yaml:", "search.init", "'xavier'"]),
    "unknown scheduler": _spec_case(
        "scheduler.type=hyperband", expect=["spec.yaml:", "scheduler.type", "seed-group-asha"]
    ),
    "unknown metric": _spec_case(
        "eval.metrics=[cider,bleurt]", expect=["spec.yaml:", "eval.metrics", "bleurt"]
    ),
    "ASHA metric never reported": _spec_case(
        "scheduler.metric=val_spice", expect=["spec.yaml:", "scheduler.metric", "val_spice", "never reported"]
    ),
    "grace_period past the epochs": _spec_case(
        "scheduler.grace_period=5", expect=["spec.yaml:", "scheduler.grace_period: 5", "train.epochs 3"]
    ),
    "grace_period past max_t": _spec_case(
        "scheduler.grace_period=3",
        "scheduler.max_t=2",
        expect=["spec.yaml:", "scheduler.grace_period: 3", "scheduler.max_t 2"],
    ),
    "grace_period past a searched epochs value": _spec_case(
        "search.train.epochs=[4,1]", expect=["spec.yaml:", "search.train.epochs", "value 1", "grace_period"]
    ),
    "data source not defined": source_not_defined,
    "storage URI with unknown scheme": _spec_case(
        "storage=foo://bucket/x", expect=["spec.yaml:", "storage", "'foo'"]
    ),
    "sweep name with /": _spec_case("name=a/b", expect=["spec.yaml:", "name", "path separators"]),
    "sweep name ..": _spec_case("name=..", expect=["spec.yaml:", "name", "'..'"]),
    "override not KEY=VALUE": _spec_case("train.lr", expect=["override 'train.lr'", "KEY=VALUE"]),
    "unknown logger": _spec_case(
        "loggers=[neptune]", expect=["loggers.0.type", "'mlflow', 'tensorboard' or 'wandb'"]
    ),
    "override into a value": _spec_case("train.lr.x=1", expect=["override 'train.lr.x=1'", "'lr'"]),
    "calibration num_samples > data": calibration_too_many,
    "missing image file": missing_image,
    "corrupt image": corrupt_image,
    "image directory missing": images_dir_missing,
    "annotations not COCO format": not_coco_format,
    "annotations not JSON": annotations_not_json,
    "caption empty after tokenization": empty_caption,
    "storage under a file (validate)": storage_under_file_validate,
    "storage under a file (synthetic data)": storage_under_file_synthetic,
    "storage under a file (run)": storage_under_file_run,
    "sweep dir of another spec (run)": other_sweeps_dir,
    "sweep dir with corrupt spec.json (run)": corrupt_sweep_spec_json,
    "run: cluster address not answering": run_dead_address,
    "resume: a sweep dir renamed": resume_renamed_dir,
    "run: a worker larger than any node": _run_asking(
        "resources.cpus_per_worker=100",
        expect=["resources.cpus_per_worker=100", "no node can hold one worker", "2 CPU(s)"],
    ),
    "run: a GPU worker on a cluster without GPUs": _run_asking(
        "resources.gpus_per_worker=1",
        expect=["resources.gpus_per_worker=1", "no node can hold one worker", "0 GPU(s)"],
    ),
    "run: more workers per trial than the cluster holds": _run_asking(
        "resources.workers_per_trial=3",
        "resources.cpus_per_worker=1",
        expect=["resources.workers_per_trial=3", "holds 2 such worker(s)"],
    ),
    "list: cluster address not answering": list_dead_address,
    "run --trial not KEY=VALUE": bad_trial_param,
    "run --trial unknown field": unknown_trial_field,
    "results: dir with no results": results_no_results,
    "results: empty results store": results_empty_store,
    "results --compare: empty results store": compare_empty_store,
    "GapArtifact of another backbone (calibrate)": artifact_of_another_backbone,
    "lora.target_modules empty": _spec_case(
        "lora.target_modules=[]", expect=["spec.yaml:", "lora.target_modules", "omit the field"]
    ),
    "calibration.target_modules empty": _spec_case(
        "calibration.target_modules=[]", expect=["spec.yaml:", "calibration.target_modules", "omit the field"]
    ),
    "storage under /proc (validate)": _spec_case(
        "storage=/proc/gapinit", expect=["storage", "/proc", "proc"]
    ),
    "storage under /sys (run)": _run_asking("storage=/sys/gapinit", expect=["storage", "/sys", "sysfs"]),
    "results --at an epoch nobody reported": _on_store(
        "results", "SWEEP", "--at", "epoch=999", expect=["--at epoch=999", "epochs with reports: 0, 1, 2"]
    ),
    "results --compare --at an epoch nobody reported": _on_store(
        "results",
        "SWEEP",
        "--compare",
        "init=gap,init=random",
        "--at",
        "epoch=7",
        expect=["epoch=7", "0, 1, 2"],
    ),
    "results --min-effect negative": _on_store(
        "results",
        "SWEEP",
        "--compare",
        "init=gap,init=random",
        "--min-effect",
        "-1",
        expect=["--min-effect -1"],
    ),
    "results --min-effect 0": _on_store(
        "results",
        "SWEEP",
        "--compare",
        "init=gap,init=random",
        "--min-effect",
        "0",
        expect=["--min-effect 0"],
    ),
    "results --compare --by seed": _on_store(
        "results", "SWEEP", "--compare", "init=gap,init=random", "--by", "seed", expect=["by 'seed'"]
    ),
    "results --compare seed arms": _on_store(
        "results", "SWEEP", "--compare", "seed=1,seed=2", expect=["arm 'seed=1'", "over their seeds"]
    ),
    "report --out a file": _on_store(
        "report", "SWEEP", "--out", "FILE", expect=["--out", "afile", "is a file"]
    ),
    "export --out a file": _on_store(
        "export", "SWEEP/x", "--out", "FILE", expect=["--out", "afile", "is a file"]
    ),
    "diagnose --draws 0": _on_store(
        "diagnose", "--draws", "0", "--out", "d", expect=["--draws 0", "at least 2"]
    ),
    "diagnose --seed negative": _on_store("diagnose", "--seed", "-1", "--out", "d", expect=["--seed -1"]),
    "diagnose --out a file": _on_store(
        "diagnose", "--draws", "10", "--out", "FILE", expect=["--out", "is a file"]
    ),
    "dashboard --port out of range": _on_store(
        "dashboard", "SWEEP", "--port", "70000", expect=["--port 70000", "0 to 65535"]
    ),
    "list: address accepts and never answers": list_silent_address,
    "submit: address accepts and never answers": submit_silent_address,
    "validate --address: accepts and never answers": validate_silent_address,
    "run --address: accepts and never answers": run_silent_address,
    "run with RAY_ADDRESS a Jobs API address": run_with_jobs_api_address,
    "validate --address a Jobs API address": validate_with_jobs_api_address,
    "token file with a line break": token_file_with_line_break,
    "RAY_AUTH_TOKEN with a line break (list)": env_token_with_line_break,
    "RAY_AUTH_TOKEN with a line break (run --address)": run_env_token_with_line_break,
    "dashboard --token with a line break": dashboard_token_with_line_break,
    "export <sweep>/<trial> (the documented form)": export_sweep_slash_trial,
    "evaluate: default split on a spec without data.test": evaluate_default_split,
    "resume: corrupt spec.json": resume_corrupt_spec_json,
    "resume: spec.json not an object": resume_spec_json_not_object,
    "YAML: nested aliases (billion laughs)": billion_laughs,
    "YAML: nested aliases in an override": billion_laughs_override,
    "YAML: nested 1000 deep": deep_nesting,
    "YAML: recursive alias": recursive_alias,
    "YAML: spec over 4 MiB": huge_spec,
    "override with a !!python tag": python_tag_override,
    "--trial with a !!python tag": python_tag_trial,
    "--trial , (no pair)": empty_trial,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case: str, tmp_path: Path) -> None:
    args, expected, *env = CASES[case](tmp_path)
    before = set(tmp_path.rglob("results/**/*.parquet"))  # a case's own store, built above
    r = gapinit(tmp_path, *args, env_extra=env[0] if env else None)
    assert "s3cr3t" not in r.stdout + r.stderr, "a token (or part of it) was printed"
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.returncode == 2, f"exit {r.returncode}: {r.stderr}"
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{r.stderr}"
    assert lines[0].startswith("gapinit: error: "), lines[0]
    missing = [s for s in expected if s not in lines[0]]
    assert not missing, f"error line does not name {missing}: {lines[0]}"
    written = sorted(
        str(p.relative_to(tmp_path)) for p in set(tmp_path.rglob("results/**/*.parquet")) - before
    )
    assert not written, f"results written despite the error: {written}"


def test_at_least_30_cases() -> None:
    assert len(CASES) >= 30
