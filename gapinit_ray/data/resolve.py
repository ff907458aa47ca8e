"""From a validated spec's data section to records: one place that knows where each source lives.

Synthetic sources are generated on first use under ``<storage>/_cache/data/`` (content-checked, atomic),
so every trial and every worker of a sweep reads the same files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gapinit_ray.data.calibration import largest_remainder, sample_calibration
from gapinit_ray.data.images import check_images
from gapinit_ray.data.qa import QARecord, calibration_records, generate_synthetic_qa, load_pope, load_vqa
from gapinit_ray.data.records import CaptionRecord, load_caption_set
from gapinit_ray.data.synthetic import generate_synthetic
from gapinit_ray.errors import DataError
from gapinit_ray.names import CACHE_DIR


def cache_dir(storage: str) -> Path:
    """Shared cache root of a storage location (data, gap artifacts, pretrained tiny backbones)."""
    if "://" in storage and not storage.startswith("file://"):
        raise DataError(
            f"storage {storage}: the shared cache needs a local or mounted path (NFS, a PVC); "
            "object-store URIs are supported for results only"
        )
    return Path(storage.removeprefix("file://")).expanduser().absolute() / CACHE_DIR


def check_storage(storage: str) -> None:
    """Refuse a local storage root that cannot be created or written, before anything is written.

    Creates nothing: walks up to the nearest existing ancestor and checks it is a writable directory.
    URIs (s3://, gs://, ...) are left to the filesystem that writes them."""
    if "://" in storage and not storage.startswith("file://"):
        return
    path = Path(storage.removeprefix("file://")).expanduser().absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise DataError(
            f"storage {storage}: {probe} is a file, not a directory, so the results root cannot be "
            "created there; set storage to a directory path"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DataError(
            f"storage {storage}: directory {probe} is not writable; set storage to a directory you can "
            "write to, or fix its permissions"
        )
    fs = _pseudo_filesystem(probe)
    if fs:
        raise DataError(
            f"storage {storage}: {probe} is on the kernel's {fs} filesystem, which holds no files of ours; "
            "set storage to a directory on a disk (or a URI)"
        )


#: Kernel filesystems that look writable (to root) but take no directories or files of ours.
_PSEUDO_FS = frozenset(
    {"proc", "sysfs", "cgroup", "cgroup2", "debugfs", "securityfs", "tracefs", "configfs", "bpf", "pstore"}
    | {"efivarfs", "fusectl", "binfmt_misc", "devpts", "mqueue", "autofs", "nsfs", "rpc_pipefs"}
)


def _pseudo_filesystem(path: Path) -> str | None:
    """The type of the kernel pseudo filesystem ``path`` is on (Linux's mount table), else None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, fstype = "", None
    for line in mounts:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, rest.split()[0]
    return fstype if fstype in _PSEUDO_FS else None


def source_records(name: str, source, split: str, storage: str) -> list[CaptionRecord]:
    """All caption records of one split of a named source (``source`` is a ``spec.SourceSpec``).

    A VQA source gives one record per image whose "captions" are its "question answer" texts (what
    calibration pools on the text side, see :func:`~gapinit_ray.data.qa.calibration_records`).
    """
    if source.kind == "vqa":
        return calibration_records(source_qa_records(name, source, split, storage))
    if source.kind != "caption":
        raise DataError(f"data.sources.{name} holds {source.kind} questions, not image-text pairs")
    if source.format == "synthetic":
        dataset = _synthetic(source, storage)
        return load_caption_set("karpathy", dataset, os.path.dirname(dataset), split)
    if source.format == "coco" and source.split != split:
        raise DataError(
            f"data.sources.{name}: this COCO captions file is the {source.split!r} split, "
            f"but the spec reads its {split!r} split; add a source for that split"
        )
    return load_caption_set(source.format, source.annotations, source.images, split)


def source_qa_records(name: str, source, split: str, storage: str) -> list[QARecord]:
    """All question records of one split of a ``vqa`` / ``pope`` (or synthetic) source."""
    if source.format == "synthetic":
        dataset = _synthetic(source, storage)
        qa_dir, images = generate_synthetic_qa(dataset), os.path.join(os.path.dirname(dataset), "images")
        if source.kind == "pope":
            return load_pope(os.path.join(qa_dir, f"pope_{split}.jsonl"), images, split)
        q, a = (os.path.join(qa_dir, f"vqa_{split}_{part}.json") for part in ("questions", "annotations"))
        return load_vqa(q, a, images, split, "{data_subtype}-{image_id:06d}.png")
    if source.split != split:
        raise DataError(
            f"data.sources.{name}: this {source.format} file is the {source.split!r} split, "
            f"but the spec reads its {split!r} split; add a source for that split"
        )
    if source.format == "pope":
        return load_pope(source.annotations, source.images, split)
    return load_vqa(source.questions, source.annotations, source.images, split, source.image_template)


def _synthetic(source, storage: str) -> str:
    """The synthetic set's ``dataset.json``, generated under the storage cache on first use."""
    name = f"shapes-{source.variant}-s{source.seed}-n{source.num_images}-px{source.image_size}"
    if source.captions_per_image != 2:  # the default keeps the name sets generated before it existed had
        name += f"-c{source.captions_per_image}"
    return generate_synthetic(
        str(cache_dir(storage) / "data" / name),
        variant=source.variant,
        num_images=source.num_images,
        seed=source.seed,
        image_size=source.image_size,
        captions_per_image=source.captions_per_image,
    )


def split_records(data, ref, storage: str) -> list[CaptionRecord] | list[QARecord]:
    """Records a stage reads (``ref`` is a ``spec.SplitRef``), limited to the first ``limit``: caption
    records (``limit`` images) from caption sources, question records (``limit`` questions, in question id
    order) from vqa / pope sources."""
    source = data.sources[ref.source]
    if source.kind == "caption":
        records = source_records(ref.source, source, ref.split, storage)
    else:
        records = source_qa_records(ref.source, source, ref.split, storage)
    return records[: ref.limit] if ref.limit else records


def calibration_pairs(spec, storage: str | None = None) -> list[tuple[CaptionRecord, str]]:
    """The calibration set D_cal: ``num_samples`` (record, caption) pairs drawn by seed, mixed by source."""
    storage = storage or spec.storage
    sources = [
        (source_records(r.source, spec.data.sources[r.source], r.split, storage), r.fraction)
        for r in spec.calibration.sources
    ]
    counts = largest_remainder([f for _, f in sources], spec.calibration.num_samples)
    for i, (ref, (records, _), count) in enumerate(
        zip(spec.calibration.sources, sources, counts, strict=True)
    ):
        if count > len(records):
            raise DataError(
                f"calibration.num_samples={spec.calibration.num_samples} asks for {count} pairs from "
                f"calibration.sources[{i}] ({ref.source}/{ref.split}), which has only {len(records)} images; "
                "lower calibration.num_samples or that source's fraction, or add images"
            )
    return sample_calibration(sources, spec.calibration.num_samples, spec.calibration.seed)


def check_spec_data(spec) -> list[str]:
    """`validate --check-data`: every split the spec reads loads and decodes; D_cal can be drawn."""
    check_storage(spec.storage)
    lines = []
    seen = set()
    stages = [(f"data.{s}", getattr(spec.data, s)) for s in ("train", "val", "test")]
    stages += [(f"eval.transfer.{name}", ref) for name, ref in spec.eval.transfer.items()]
    for stage, ref in stages:
        if ref is None:
            continue
        records = split_records(spec.data, ref, spec.storage)
        key = (ref.source, ref.split, ref.limit)
        if key not in seen:
            check_images(list({r.image_path: r for r in records}.values()))
            seen.add(key)
        what = "images" if spec.data.sources[ref.source].kind == "caption" else "questions"
        lines.append(f"{stage}: {len(records)} {what} from {ref.source}/{ref.split}, all readable")
    pairs = calibration_pairs(spec)
    check_images([p[0] for p in pairs])
    lines.append(f"calibration: {len(pairs)} pairs drawn (seed {spec.calibration.seed}), all images readable")
    for b in spec.backbones:
        if b.path and (b.path.startswith(("/", ".", "~")) or os.path.isdir(b.path)):
            if not os.path.isdir(os.path.expanduser(b.path)):
                raise DataError(f"backbones[{b.name}].path {b.path}: checkpoint directory not found")
            lines.append(f"backbone {b.name}: checkpoint dir {b.path} exists")
    return lines
