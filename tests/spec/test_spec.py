"""The sweep spec: every shipped spec validates; every kind of mistake gets an actionable message."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from gapinit_ray import spec as S
from gapinit_ray.errors import SpecError
from gapinit_ray.spec import apply_overrides, grid_size, load_spec, spec_from_dict

SWEEPS = sorted((Path(__file__).parents[2] / "sweeps").glob("*.yaml"))
QUICKSTART = Path(__file__).parents[2] / "sweeps" / "quickstart.yaml"


def quickstart_raw() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_shipped_spec_validates_and_starts_with_its_command(path: Path) -> None:
    spec = load_spec(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# gapinit ") and path.name in first, (
        f"{path.name}: first line must be its command"
    )
    assert grid_size(spec) >= 1


def test_shipped_specs_cover_the_paper_tables() -> None:
    names = " ".join(p.name for p in SWEEPS)
    for table in ("table2", "table7", "table9", "table10", "table11", "table8_12"):
        assert table in names


def test_quickstart_expands_to_gap_random_and_control_times_three_seeds() -> None:
    spec = load_spec(QUICKSTART)
    assert spec.search.axes["init"] == ["gap", "random", "random-direction"]
    assert grid_size(spec) == 9
    assert spec.scheduler.type == "seed-group-asha"
    assert spec.backbones[0].name == "tiny-blip2"


def test_paper_defaults() -> None:
    spec = load_spec(SWEEPS[[p.name for p in SWEEPS].index("table7_multiseed.yaml")])
    assert spec.lora.rank == 1 and spec.lora.effective_alpha == 2
    assert spec.calibration.num_samples == 256
    assert spec.train.lr == 2e-4 and spec.train.batch_size * spec.train.grad_accum == 64
    assert spec.search.axes["seed"] == list(S.PAPER_SEEDS)
    assert S.LoraSpec(rank=8).effective_alpha == 16


def test_table2_cases_cross_the_seed_grid() -> None:
    spec = load_spec(Path(__file__).parents[2] / "sweeps" / "table2_5_init_layers.yaml")
    assert len(spec.search.cases) == 7
    assert grid_size(spec) == 7


# (name, mutation of the quickstart dict, fragments the single message must contain)
def _set(path: str, value):
    def mutate(raw: dict) -> None:
        node = raw
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value

    return mutate


def _del(path: str):
    def mutate(raw: dict) -> None:
        node = raw
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[p]
        del node[parts[-1]]

    return mutate


BAD = [
    ("unknown top-level key", _set("trian", {"lr": 1}), ["trian", "unknown key"]),
    ("unknown nested key", _set("lora.rnk", 2), ["lora.rnk", "unknown key"]),
    ("rank zero", _set("lora.rank", 0), ["lora.rank", "greater than or equal to 1"]),
    ("negative rank", _set("lora.rank", -3), ["lora.rank"]),
    ("rank wrong type", _set("lora.rank", "one"), ["lora.rank", "integer"]),
    ("lr zero", _set("train.lr", 0), ["train.lr", "greater than 0"]),
    ("lr negative", _set("train.lr", -1e-4), ["train.lr"]),
    ("lr not a number", _set("train.lr", "fast"), ["train.lr"]),
    ("lr infinite", _set("train.lr", float("inf")), ["train.lr"]),
    ("empty search axis", _set("search.seed", []), ["search.seed", "empty axis"]),
    ("duplicate seeds", _set("search.seed", [1, 2, 1]), ["search.seed", "duplicate"]),
    ("unknown backbone", _set("backbones", [{"name": "tiny-llava"}]), ["backbones.0.name", "tiny-blip2"]),
    ("family without path", _set("backbones", [{"name": "blip2"}]), ["backbones.0", "path"]),
    ("unknown init", _set("lora.init", "xavier"), ["lora.init", "known: gap"]),
    ("unknown init on an axis", _set("search.init", ["gap", "xavier"]), ["search.init", "xavier"]),
    ("unknown scheduler", _set("scheduler.type", "hyperband"), ["scheduler.type", "seed-group-asha"]),
    ("unknown metric", _set("eval.metrics", ["cider", "bertscore"]), ["eval.metrics", "bertscore", "known"]),
    (
        "scheduler metric never reported",
        _set("scheduler.metric", "val_spice"),
        ["val_spice", "never reported", "eval.metrics"],
    ),
    (
        "scheduler metric computed at the last report only",
        _set("scheduler.metric", "val_meteor"),  # the quickstart keeps meteor for the last epoch
        ["val_meteor", "last report", "eval.final_metrics", "move it to eval.metrics"],
    ),
    (
        "unknown final metric",
        _set("eval.final_metrics", ["spice", "bertscore"]),
        ["eval.final_metrics", "bertscore", "known"],
    ),
    ("unknown task", _set("task", "ocr"), ["task", "coco_caption"]),
    ("zero stage 5", _set("train.zero.stage", 5), ["train.zero.stage", "allowed"]),
    ("offload params below stage 3", _set("train.zero", {"stage": 2, "offload_param": "cpu"}), ["stage 3"]),
    ("name with separator", _set("name", "a/b"), ["name", "path separators"]),
    ("name with dotdot", _set("name", ".."), ["name"]),
    ("unknown storage scheme", _set("storage", "ftp://host/x"), ["storage", "ftp"]),
    ("data ref to unknown source", _set("data.train.source", "coco"), ["coco", "data.sources"]),
    (
        "calibration ref to unknown source",
        _set("calibration.sources", [{"source": "nope"}]),
        ["calibration.sources[0]", "nope"],
    ),
    (
        "calibration fractions",
        _set("calibration.sources", [{"source": "shapes", "fraction": 0.5}]),
        ["fractions sum to 0.5"],
    ),
    ("missing required section", _del("data"), ["data", "required"]),
    ("axis on a non-field", _set("search.train.lrr", [1e-3]), ["search.train.lrr", "not a spec field"]),
    ("axis value invalid for its field", _set("search.lora.rank", [1, 0]), ["search.lora.rank", "0"]),
    ("bad sampler", _set("search.train.lr", {"gaussian": [0, 1]}), ["search", "loguniform"]),
    ("loguniform nonpositive", _set("search.train.lr", {"loguniform": [0, 1e-3]}), ["> 0"]),
    ("uniform reversed", _set("search.lora.dropout", {"uniform": [0.2, 0.1]}), ["lower bound"]),
    ("max_t beyond epochs", _set("scheduler.max_t", 99), ["max_t", "exceeds"]),
    ("case sets an axis twice", _set("search.cases", [{"init": "gap"}]), ["cases[0]", "also a search axis"]),
    (
        "coco format without split",
        _set("data.sources.x", {"format": "coco", "annotations": "a", "images": "b"}),
        ["split"],
    ),
]


@pytest.mark.parametrize("name,mutate,fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_is_rejected_with_a_message_naming_the_field(name, mutate, fragments) -> None:
    raw = quickstart_raw()
    mutate(raw)
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw, source="q.yaml")
    msg = str(info.value)
    assert "q.yaml" in msg
    for frag in fragments:
        assert frag in msg, f"{name}: {frag!r} not in {msg!r}"
    assert "Traceback" not in msg


def test_all_errors_are_reported_at_once_with_line_numbers(tmp_path: Path) -> None:
    text = QUICKSTART.read_text().replace("rank: 1", "rank: 0").replace("lr: 2.0e-3", "lr: -1")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    rank_line = next(i + 1 for i, ln in enumerate(text.splitlines()) if "rank: 0" in ln)
    assert any(f"bad.yaml:{rank_line}: lora.rank" in line for line in lines)
    assert any("train.lr" in line for line in lines)


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\nstorage: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken.yaml:\d+: invalid YAML"):
        load_spec(bad)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="YAML mapping"):
        load_spec(lst)


def test_yaml_is_parsed_safely(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(evil)


def test_dotted_overrides() -> None:
    spec = load_spec(
        QUICKSTART, ["train.lr=1e-4", "search.seed=[1,2]", "lora.rank=8", "search.train.lr=[1e-4,1e-3]"]
    )
    assert spec.train.lr == 1e-4
    assert spec.search.axes["seed"] == [1, 2]
    assert spec.search.axes["train.lr"] == [1e-4, 1e-3]
    assert spec.lora.rank == 8
    assert grid_size(spec) == 3 * 2 * 2  # init × seed × lr


def test_bad_overrides() -> None:
    with pytest.raises(SpecError, match="KEY=VALUE"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(SpecError, match="is not a section"):
        apply_overrides({"train": {"lr": 1}}, ["train.lr.x=2"])
    with pytest.raises(SpecError, match=r"lora\.rank"):
        load_spec(QUICKSTART, ["lora.rank=0"])


def test_sampled_axes() -> None:
    raw = quickstart_raw()
    raw["search"]["train.lr"] = {"loguniform": [1e-5, 1e-3]}
    raw["search"]["num_samples"] = 4
    spec = spec_from_dict(copy.deepcopy(raw))
    assert isinstance(spec.search.axes["train.lr"], S.LogUniform)
    assert grid_size(spec) == 9 * 4  # (3 inits × 3 seeds) × 4 samples


def test_spec_backbone_names_come_from_the_registry() -> None:
    from gapinit_ray.backbones import PRESETS, known_backbones

    assert set(PRESETS) <= set(known_backbones())


def test_seed_list_validation_is_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long seed axis costs no whole-spec validation per value (that, with a copy of the spec holding
    the whole list each time, was quadratic: 16,000 seeds took 33 s); its values are still all checked."""
    from gapinit_ray.spec import search

    calls = {"n": 0}
    real = search.SweepSpec.model_validate

    def counting(obj, *a, **k):
        calls["n"] += 1
        return real(obj, *a, **k)

    monkeypatch.setattr(search.SweepSpec, "model_validate", counting)
    counts = []
    for n in (10, 5_000):
        raw = quickstart_raw()
        raw["search"]["seed"] = list(range(n))
        calls["n"] = 0
        spec_from_dict(raw)
        counts.append(calls["n"])
    assert counts[0] == counts[1] <= 8, counts  # the spec, the 3 inits, the first seed
    raw = quickstart_raw()
    raw["search"]["seed"] = [*range(5_000), 2**70]
    with pytest.raises(SpecError, match=r"search\.seed: value 1180591620717411303424 is invalid"):
        spec_from_dict(raw)


def test_fifty_thousand_seeds_load_in_seconds(tmp_path: Path) -> None:
    import time

    raw = quickstart_raw()
    raw["search"]["seed"] = list(range(50_000))
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    t0 = time.perf_counter()
    spec = load_spec(path)
    took = time.perf_counter() - t0
    assert grid_size(spec) == 150_000
    assert took < 30, f"{took:.1f} s (about 0.5 s with libyaml, 5 s without; quadratic was minutes)"
