"""Tests for gapinit_ray.data: caption-set loading, synthetic sets, image checks, calibration sampling."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from gapinit_ray.data import (
    CaptionRecord,
    calibration_set_hash,
    check_images,
    generate_synthetic,
    load_caption_set,
    load_image,
    sample_calibration,
)
from gapinit_ray.data.shapes import COLOURS
from gapinit_ray.errors import DataError

SMALL = {"num_images": 40, "image_size": 32}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _words(dataset_json: str) -> set[str]:
    records = load_caption_set("karpathy", dataset_json, None)
    return {w for r in records for c in r.captions for w in re.findall(r"[a-z]+", c)}


def _raises(match_parts: list[str], fn, *args, **kwargs) -> str:
    """Call fn, expect a one-line DataError whose message contains every part."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for part in match_parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("synthetic")
    return {
        "pretrain": generate_synthetic(str(root / "pre"), variant="pretrain", **SMALL),
        "downstream": generate_synthetic(str(root / "down"), variant="downstream", **SMALL),
    }


# --- synthetic sets ---------------------------------------------------------------------------------


def test_synthetic_is_byte_identical_for_same_seed_and_differs_for_another(tmp_path):
    a = Path(generate_synthetic(str(tmp_path / "a"), seed=7, **SMALL)).parent
    b = Path(generate_synthetic(str(tmp_path / "b"), seed=7, **SMALL)).parent
    c = Path(generate_synthetic(str(tmp_path / "c"), seed=8, **SMALL)).parent
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert files_a == files_b
    assert len([k for k in files_a if k.startswith("images/")]) == SMALL["num_images"]
    assert files_a["dataset.json"] != files_c["dataset.json"]
    pixels_a = sorted(v for k, v in files_a.items() if k.endswith(".png"))
    pixels_c = sorted(v for k, v in files_c.items() if k.endswith(".png"))
    assert pixels_a != pixels_c


def test_downstream_vocabulary_differs_from_pretrain(synthetic):
    pre, down = _words(synthetic["pretrain"]), _words(synthetic["downstream"])
    new_words = down - pre
    assert {"picture", "located", "part"} <= new_words
    assert new_words & {"purple", "orange"}
    assert new_words & {"star", "diamond"}
    assert pre - down  # pretrain phrasing ("at the top left of the image") is not reused either


def test_split_counts(tmp_path, synthetic):
    records = load_caption_set("karpathy", synthetic["pretrain"], None)
    assert [sum(r.split == s for r in records) for s in ("train", "val", "test")] == [32, 4, 4]
    assert all(len(r.captions) == 2 for r in records)
    path = generate_synthetic(
        str(tmp_path / "s"), num_images=10, splits=(0.5, 0.25, 0.25), captions_per_image=3
    )
    records = load_caption_set("karpathy", path, None)
    assert [sum(r.split == s for r in records) for s in ("train", "val", "test")] == [5, 3, 2]
    assert all(len(set(r.captions)) == 3 for r in records)
    assert len(load_caption_set("karpathy", path, None, split="test")) == 2


def test_regenerating_a_complete_set_is_a_noop_and_other_args_replace_it(tmp_path):
    out = tmp_path / "set"
    path = generate_synthetic(str(out), **SMALL)
    watched = [
        out,
        out / "dataset.json",
        out / "manifest.json",
        out / "images",
        *list((out / "images").iterdir())[:3],
    ]
    before = [p.stat().st_mtime_ns for p in watched]
    inodes = [p.stat().st_ino for p in watched]
    assert generate_synthetic(str(out), **SMALL) == path
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert [p.stat().st_ino for p in watched] == inodes

    # A damaged set is rebuilt; a set for other arguments is replaced; leftovers are cleaned up.
    (out / "images" / "pretrain-s0-000003.png").write_bytes(b"oops")
    generate_synthetic(str(out), **SMALL)
    assert (out / "images" / "pretrain-s0-000003.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    generate_synthetic(str(out), num_images=5, image_size=32)
    assert len(list((out / "images").iterdir())) == 5
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["set"]


def test_synthetic_refuses_a_directory_with_foreign_files_and_bad_args(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    _raises([str(tmp_path / "mine"), "notes.txt"], generate_synthetic, str(tmp_path / "mine"), **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    _raises(["variant"], generate_synthetic, str(tmp_path / "x"), variant="finetune")
    _raises(["splits"], generate_synthetic, str(tmp_path / "x"), splits=(0.5, 0.5, 0.5))


# Position phrase -> grid cell, written independently of the generator's own tables.
PRETRAIN_CELLS = {
    "at the top left": (0, 0), "at the top": (0, 1), "at the top right": (0, 2),
    "on the left": (1, 0), "in the center": (1, 1), "on the right": (1, 2),
    "at the bottom left": (2, 0), "at the bottom": (2, 1), "at the bottom right": (2, 2),
}  # fmt: skip


def test_images_show_what_the_captions_say(synthetic):
    records = load_caption_set("karpathy", synthetic["pretrain"], None)
    single = re.compile(r"^a (small|large) (red|green|blue|yellow) (circle|square|triangle) (.+)$")
    checked = 0
    for record in records:
        image = load_image(record)
        assert image.getpixel((0, 0)) == (0, 0, 0)  # black pretrain background
        for caption in record.captions:
            match = single.match(caption)
            if not match or " and " in caption:
                continue
            _, colour, _, where = match.groups()
            # All drawn pixels sit in the named grid cell and have exactly the named colour.
            drawn = {
                (min(2, y * 3 // 32), min(2, x * 3 // 32), image.getpixel((x, y)))
                for y in range(32)
                for x in range(32)
                if image.getpixel((x, y)) != (0, 0, 0)
            }
            assert drawn == {(*PRETRAIN_CELLS[where], COLOURS[colour])}, (record.image_id, caption)
            checked += 1
    assert checked >= 5

    # Every shape recorded in the scene is drawn at its centre, and every caption names it.
    entries = json.loads(Path(synthetic["downstream"]).read_text())["images"]
    for entry, record in zip(
        entries, load_caption_set("karpathy", synthetic["downstream"], None), strict=True
    ):
        image = load_image(record)
        assert image.getpixel((0, 0)) == (255, 255, 255)
        for shape in entry["scene"]["shapes"]:
            assert image.getpixel(tuple(shape["center"])) == COLOURS[shape["colour"]]
            assert all(shape["colour"] in c and shape["shape"] in c for c in record.captions)


# --- hand-written Karpathy and COCO files ------------------------------------------------------------


def _image(path: Path, colour=(10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _karpathy(tmp_path: Path, images: list[dict] | None = None) -> str:
    if images is None:
        _image(tmp_path / "img" / "train2014" / "a.jpg")
        _image(tmp_path / "img" / "val2014" / "b.jpg")
        _image(tmp_path / "img" / "c.png")
        images = [
            {"filepath": "train2014", "filename": "a.jpg", "cocoid": 11, "imgid": 0, "split": "train",
             "sentences": [{"raw": " A dog runs. "}, {"raw": "a brown dog"}]},
            {"filepath": "val2014", "filename": "b.jpg", "cocoid": 12, "imgid": 1, "split": "restval",
             "sentences": [{"raw": "A cat\n sleeps."}]},
            {"filename": "c.png", "imgid": 2, "split": "val", "sentences": [{"raw": "a red car"}]},
        ]  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return str(path)


def test_karpathy_file_loads_with_restval_counted_as_train(tmp_path):
    path = _karpathy(tmp_path)
    root = tmp_path / "img"
    records = load_caption_set("karpathy", path, str(root))
    assert records == [
        CaptionRecord("11", str(root / "train2014" / "a.jpg"), ("A dog runs.", "a brown dog"), "train"),
        CaptionRecord("12", str(root / "val2014" / "b.jpg"), ("A cat sleeps.",), "restval"),
        CaptionRecord("2", str(root / "c.png"), ("a red car",), "val"),
    ]
    assert [r.image_id for r in load_caption_set("karpathy", path, str(root), split="train")] == ["11", "12"]
    assert [r.image_id for r in load_caption_set("karpathy", path, str(root), split="restval")] == ["12"]
    assert [r.image_id for r in load_caption_set("karpathy", path, str(root), split="val")] == ["2"]
    _raises([path, "'test'", "restval, train, val"], load_caption_set, "karpathy", path, str(root), "test")
    check_images(records)
    assert load_image(records[0]).mode == "RGB"


def _coco(tmp_path: Path, data: dict | None = None, name: str = "captions_val2017.json") -> str:
    if data is None:
        for n in ("000000000042.jpg", "000000000007.jpg", "000000000100.jpg"):
            _image(tmp_path / "val2017" / n)
        data = {
            "info": {}, "licenses": [],
            "images": [{"id": 42, "file_name": "000000000042.jpg"}, {"id": 7, "file_name": "000000000007.jpg"},
                       {"id": 100, "file_name": "000000000100.jpg"}],
            "annotations": [{"id": 1, "image_id": 42, "caption": "A bus."}, {"id": 2, "image_id": 7, "caption": "A man"},
                            {"id": 3, "image_id": 42, "caption": "a red  bus "}, {"id": 4, "image_id": 100, "caption": "Two cats."}],
        }  # fmt: skip
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_coco_file_loads_sorted_by_image_id(tmp_path):
    path = _coco(tmp_path)
    root = tmp_path / "val2017"
    records = load_caption_set("coco", path, str(root))
    assert records == [
        CaptionRecord("7", str(root / "000000000007.jpg"), ("A man",), "val"),
        CaptionRecord("42", str(root / "000000000042.jpg"), ("A bus.", "a red bus"), "val"),
        CaptionRecord("100", str(root / "000000000100.jpg"), ("Two cats.",), "val"),
    ]
    assert {r.split for r in load_caption_set("coco", path, str(root), split="train")} == {"train"}
    check_images(records)


def test_synthetic_set_loads_with_default_image_root(synthetic):
    records = load_caption_set("karpathy", synthetic["downstream"], None)
    assert len(records) == SMALL["num_images"] and len({r.image_id for r in records}) == len(records)
    assert all(os.path.isfile(r.image_path) for r in records)
    check_images(records)


# --- errors -----------------------------------------------------------------------------------------


def test_missing_and_invalid_annotation_files(tmp_path):
    missing = str(tmp_path / "nope.json")
    _raises(["not found", missing], load_caption_set, "coco", missing, None)
    bad = tmp_path / "captions_train2017.json"
    bad.write_text('{"images": [')
    _raises([str(bad), "not valid JSON"], load_caption_set, "coco", str(bad), None)
    _raises(["'flickr'", "karpathy"], load_caption_set, "flickr", str(bad), None)


def test_format_errors_name_the_missing_key(tmp_path):
    path = _coco(tmp_path, {"images": [{"id": 1, "file_name": "a.jpg"}]})
    _raises([path, "'annotations'", "coco"], load_caption_set, "coco", path, None)
    # A COCO file read as Karpathy says which fmt to use.
    path = _coco(
        tmp_path, {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}, "captions_x.json"
    )
    _raises([path, "fmt='coco'"], load_caption_set, "karpathy", path, None)
    path = _karpathy(tmp_path, [{"filename": "a.jpg", "imgid": 5, "split": "train"}])
    _raises([path, "image id 5", "'sentences'", "karpathy"], load_caption_set, "karpathy", path, None)


@pytest.mark.parametrize("caption", ["", "   \n "])
def test_empty_captions(tmp_path, caption):
    path = _karpathy(tmp_path, [{"filename": "a.jpg", "cocoid": 9, "split": "train",
                                 "sentences": [{"raw": "ok"}, {"raw": caption}]}])  # fmt: skip
    _raises([path, "image id 9", "empty caption"], load_caption_set, "karpathy", path, None)
    path = _coco(
        tmp_path,
        {"images": [{"id": 3, "file_name": "a.jpg"}], "annotations": [{"image_id": 3, "caption": caption}]},
    )
    _raises([path, "image id 3", "empty caption"], load_caption_set, "coco", path, None)


def test_images_without_captions(tmp_path):
    path = _karpathy(tmp_path, [{"filename": "a.jpg", "imgid": 4, "split": "val", "sentences": []}])
    _raises([path, "image id 4", "no captions"], load_caption_set, "karpathy", path, None)
    path = _coco(tmp_path, {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
                            "annotations": [{"image_id": 1, "caption": "a cat"}]})  # fmt: skip
    _raises([path, "image id 2", "no captions"], load_caption_set, "coco", path, None)


def test_duplicate_image_ids(tmp_path):
    entry = {"filename": "a.jpg", "cocoid": 8, "split": "train", "sentences": [{"raw": "x"}]}
    path = _karpathy(tmp_path, [entry, {**entry, "filename": "b.jpg"}])
    _raises([path, "image id 8", "twice"], load_caption_set, "karpathy", path, None)
    path = _coco(tmp_path, {"images": [{"id": 6, "file_name": "a.jpg"}, {"id": 6, "file_name": "b.jpg"}],
                            "annotations": [{"image_id": 6, "caption": "x"}]})  # fmt: skip
    _raises([path, "image id 6", "twice"], load_caption_set, "coco", path, None)


def test_missing_and_corrupt_images(tmp_path):
    path = _karpathy(tmp_path)
    records = load_caption_set("karpathy", path, str(tmp_path / "img"))
    missing = records[1].image_path
    os.remove(missing)
    _raises([f"image file not found: {missing} (image id 12)", "1 of 3"], check_images, records)
    _raises([f"image file not found: {missing} (image id 12)"], load_image, records[1])

    corrupt = tmp_path / "img" / "c.png"
    corrupt.write_bytes(b"this is not a png at all")
    message = _raises([str(corrupt), "image id 2", "2 of 3"], check_images, records, max_workers=2)
    assert message.index(missing) < message.index(str(corrupt))  # record order, not completion order
    _raises([str(corrupt), "image id 2"], load_image, records[2])
    _raises([str(corrupt), "image id c"], load_image, str(corrupt), "c")
    truncated = tmp_path / "img" / "train2014" / "a.jpg"
    truncated.write_bytes(truncated.read_bytes()[:40])
    _raises([str(truncated), "image id 11", "3 of 3"], check_images, records)


# --- calibration ------------------------------------------------------------------------------------


def test_sample_calibration_is_seeded_and_mixes_exactly(synthetic):
    pre = load_caption_set("karpathy", synthetic["pretrain"], None)
    down = load_caption_set("karpathy", synthetic["downstream"], None)
    pairs = sample_calibration([(pre, 0.5), (down, 0.5)], 21, seed=3)
    assert pairs == sample_calibration([(pre, 0.5), (down, 0.5)], 21, seed=3)
    assert pairs == sample_calibration([(pre[::-1], 0.5), (down[::-1], 0.5)], 21, seed=3)  # order-free
    assert pairs != sample_calibration([(pre, 0.5), (down, 0.5)], 21, seed=4)
    assert len(pairs) == 21
    assert sum(r.image_id.startswith("pretrain") for r, _ in pairs) == 11
    assert sum(r.image_id.startswith("downstream") for r, _ in pairs) == 10
    assert len({r.image_path for r, _ in pairs}) == 21
    assert all(caption in record.captions for record, caption in pairs)
    assert len(sample_calibration([(pre, 0.5), (down, 0.5)], 80, seed=0)) == 80  # every image
    assert {r.image_id for r, _ in sample_calibration([(pre, 1.0), (down, 0.0)], 5, seed=0)} <= {
        r.image_id for r in pre
    }


def test_sample_calibration_errors(synthetic):
    pre = load_caption_set("karpathy", synthetic["pretrain"], None)
    down = load_caption_set("karpathy", synthetic["downstream"], None)
    _raises(
        ["asks for 30 samples from source #1", "only 10 images"],
        sample_calibration,
        [(pre, 0.5), (down[:10], 0.5)],
        60,
        0,
    )
    _raises(["sum to 0.9"], sample_calibration, [(pre, 0.5), (down, 0.4)], 10, 0)
    _raises(
        ["source #0", "source #1", pre[0].image_path], sample_calibration, [(pre, 0.5), (pre, 0.5)], 10, 0
    )
    _raises(["num_samples"], sample_calibration, [(pre, 1.0)], 0, 0)


def test_calibration_set_hash_tracks_image_bytes_and_captions(tmp_path, synthetic):
    copy = tmp_path / "copy"
    shutil.copytree(Path(synthetic["pretrain"]).parent, copy)
    records = load_caption_set("karpathy", str(copy / "dataset.json"), None)
    pairs = sample_calibration([(records, 1.0)], 8, seed=0)
    first = calibration_set_hash(pairs)
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert calibration_set_hash(pairs) == first
    assert calibration_set_hash(list(reversed(pairs))) != first
    record, caption = pairs[0]
    assert calibration_set_hash([(record, caption + " x"), *pairs[1:]]) != first
    Image.new("RGB", (32, 32), (1, 2, 3)).save(record.image_path)
    assert calibration_set_hash(pairs) != first
    os.remove(record.image_path)
    _raises([record.image_path, f"image id {record.image_id}"], calibration_set_hash, pairs)


def test_spec_captions_per_image_reaches_the_generated_set(tmp_path):
    """``captions_per_image`` of a synthetic source: that many captions (training samples) per image, in
    a cache dir of its own; the default keeps the dir name sets generated before the field existed."""
    from gapinit_ray.data.resolve import split_records
    from gapinit_ray.spec import DataSpec

    def records(**extra):
        data = DataSpec.model_validate(
            {
                "sources": {"s": {"format": "synthetic", "num_images": 10, **extra}},
                "train": {"source": "s", "split": "train"},
                "val": {"source": "s", "split": "val"},
            }
        )
        return split_records(data, data.train, str(tmp_path))

    assert {len(r.captions) for r in records()} == {2}
    five = records(captions_per_image=5)
    assert {len(r.captions) for r in five} == {5} and len(five) == 8
    names = sorted(p.name for p in (tmp_path / "_cache" / "data").iterdir() if p.is_dir())
    assert names == ["shapes-downstream-s0-n10-px32", "shapes-downstream-s0-n10-px32-c5"]


def test_tiny_backbone_pretraining_is_bit_identical_whatever_the_thread_settings(tmp_path) -> None:
    """The pretrained tiny preset is content-addressed by its settings: two processes configured
    differently (1 vs 2 torch threads) must build the very same weights, or a shared storage would hold
    two models under one key."""
    import hashlib
    import subprocess
    import sys

    code = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[2])); from pathlib import Path; "
        "from gapinit_ray.pretrain import PretrainSettings, ensure_pretrained; "
        "s = PretrainSettings(num_images=48, epochs=2, batch_size=16, warmup_steps=2); "
        "print(ensure_pretrained('tiny-blip2', Path(sys.argv[1]), s, progress=False))"
    )
    digests = []
    for threads in ("1", "2"):
        r = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / f"t{threads}"), threads],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": threads},
        )
        assert r.returncode == 0, r.stderr[-2000:]
        out = Path(r.stdout.strip().splitlines()[-1])
        digests.append(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
