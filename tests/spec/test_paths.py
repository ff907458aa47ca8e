"""Relative paths in a spec are resolved once, at the edge, against the directory the command runs in."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gapinit_ray.cluster import ClusterError, check_submittable
from gapinit_ray.spec import absolute_paths, load_spec, relative_paths

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"

SPEC = """
name: paths
storage: ./results
backbones:
  - {name: tiny-blip2, pretrain: false}
  - {name: blip2, path: ./checkpoints/blip2}
  - {name: qwen2_vl, path: Qwen/Qwen2-VL-2B-Instruct}
data:
  sources:
    coco: {format: karpathy, annotations: data/dataset_coco.json, images: ~/coco/images}
    abs: {format: karpathy, annotations: /abs/ann.json, images: s3://bucket/images}
  train: {source: coco}
  val: {source: coco, split: val}
calibration:
  sources: [{source: coco}]
"""


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "specs" / "s.yaml"
    path.parent.mkdir()
    path.write_text(SPEC)
    return path


def test_relative_paths_resolve_against_the_current_directory(
    spec_file: Path, tmp_path: Path, monkeypatch
) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    spec = load_spec(spec_file)
    assert spec.storage == str(cwd / "results")  # the cwd, not the spec file's directory
    coco = spec.data.sources["coco"]
    assert coco.annotations == str(cwd / "data" / "dataset_coco.json")
    assert coco.images == os.path.expanduser("~/coco/images")
    assert spec.data.sources["abs"].annotations == "/abs/ann.json"
    assert spec.data.sources["abs"].images == "s3://bucket/images"  # URIs are left alone
    paths = {b.name: b.path for b in spec.backbones}
    assert paths["blip2"] == str(cwd / "checkpoints" / "blip2")
    assert paths["qwen2_vl"] == "Qwen/Qwen2-VL-2B-Instruct"  # a hub id, not a local dir
    assert relative_paths(spec) == []


def test_a_hub_like_path_that_exists_locally_is_a_local_dir(tmp_path: Path, monkeypatch) -> None:
    """transformers loads an existing local dir before it asks the hub; so does the resolution."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Qwen" / "Qwen2-VL-2B-Instruct").mkdir(parents=True)
    spec = load_spec(QUICKSTART, ["backbones=[{name: qwen2_vl, path: Qwen/Qwen2-VL-2B-Instruct}]"])
    assert spec.backbones[0].path == str(tmp_path / "Qwen" / "Qwen2-VL-2B-Instruct")


def test_overrides_are_resolved_too(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_spec(QUICKSTART, ["storage=out/../store"])
    assert spec.storage == str(tmp_path / "store")


def test_resolution_is_idempotent_and_keeps_uris(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_spec(QUICKSTART)
    assert absolute_paths(spec, base="/elsewhere") == spec
    s3 = load_spec(QUICKSTART, ["storage=s3://bucket/gapinit"])
    assert s3.storage == "s3://bucket/gapinit"


def test_spec_json_stores_the_resolved_storage(tmp_path: Path, monkeypatch) -> None:
    from gapinit_ray.sweep import _check_same_sweep
    from gapinit_ray.trial import sweep_dir

    monkeypatch.chdir(tmp_path)
    spec = load_spec(QUICKSTART)
    root = sweep_dir(spec)
    _check_same_sweep(spec, root)
    saved = json.loads((root / "spec.json").read_text())
    assert saved["storage"] == str(tmp_path / "gapinit_results")
    assert root == tmp_path / "gapinit_results" / "quickstart"


def test_submit_refuses_relative_paths_instead_of_resolving_them(spec_file: Path) -> None:
    spec = load_spec(spec_file, resolve_paths=False)
    with pytest.raises(ClusterError, match=r"storage: './results' is relative"):
        check_submittable(spec, "s.yaml")
    spec = load_spec(spec_file, ["storage=/mnt/shared"], resolve_paths=False)
    with pytest.raises(ClusterError, match=r"data\.sources\.coco\.annotations: 'data/dataset_coco\.json'"):
        check_submittable(spec, "s.yaml")
