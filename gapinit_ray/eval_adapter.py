"""`gapinit evaluate`: a saved adapter (or a trial's) on its backbone, scored like the sweep scores it.

The paper's ``eval_master``: load the adapter onto a fresh base, generate with the spec's ``eval``
settings (the same :func:`~gapinit_ray.evaluate.evaluate_split` a trial's reports run, with the
trial's final metrics added as at its last report) on ``--split`` (``val``: ``data.val``; ``test``:
``data.test``), and score. The result is one row of kind ``evaluation`` in the sweep's store::

    <storage>/<sweep>/results/evaluations/<trial or adapter>_<split>.parquet

(its own directory: the per-epoch metric rows ``gapinit results`` aggregates are untouched), and the
same values as JSON on stdout; with no sweep directory for the spec, JSON only.

The adapter is checked against the spec before anything loads: a missing adapter, an adapter of another
backbone (``gapinit_export.json``'s source id, or any module whose shape does not fit), target modules
that differ from the spec's, and an unconverted CorDA / LoRA-GA adapter (their base rewrite cannot be
recomputed from the adapter: export it first) are each one line naming the mismatch (exit code 2).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gapinit_ray.export import EXPORT_META, ExportError, load_trained, quiet_transformers, resolve_trial
from gapinit_ray.names import RESULTS_DIR

TASK_KINDS = {"caption": "caption", "vqa": "vqa", "pope": "pope"}
EVAL_DIR = "evaluations"


def eval_spec_for(spec):
    """The eval settings of a trial's last report: ``eval.metrics`` + ``eval.final_metrics``."""
    extra = [m for m in spec.eval.final_metrics if m not in spec.eval.metrics]
    return spec.eval.model_copy(update={"metrics": [*spec.eval.metrics, *extra]})


def split_ref(spec, split: str):
    if split == "val":
        return spec.data.val
    if split == "test":
        if spec.data.test is None:
            raise ExportError("--split test: the spec has no data.test; add one or use --split val")
        return spec.data.test
    raise ExportError(f"--split {split!r}: use val or test")


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    f = adapter_dir / "adapter_config.json"
    if not f.is_file():
        raise ExportError(f"{adapter_dir}: missing adapter (no adapter_config.json); pass a peft adapter dir")
    if not any((adapter_dir / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ExportError(f"{adapter_dir}: missing adapter weights (no adapter_model.safetensors)")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        raise ExportError(f"{f} is corrupt (not JSON)") from None


def check_adapter(adapter_dir: Path, spec, bspec, source_id: str) -> None:
    """Refuse, in one line and before any model loads, an adapter whose files, export record, init or
    target modules do not fit the spec's backbone (``source_id``: its weights' identity)."""
    from gapinit_ray.backbones import backbone_class

    cfg = _adapter_config(adapter_dir)
    meta_file = adapter_dir / EXPORT_META
    if meta_file.is_file():
        have = json.loads(meta_file.read_text()).get("backbone", {})
        if have.get("source_id") and have["source_id"] != source_id:
            raise ExportError(
                f"{adapter_dir}: adapter from another backbone: exported from {have.get('key')} "
                f"({have['source_id']}), the spec's backbone {bspec.key} is {source_id}"
            )
    init = str(cfg.get("init_lora_weights")).lower()
    if init in ("corda", "lora_ga"):
        raise ExportError(
            f"{adapter_dir}: an unconverted {init} adapter (its base rewrite W₀ − s·B₀A₀ cannot be recomputed "
            "from it); export the trial with `gapinit export` (converts it to plain LoRA) and evaluate that"
        )
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    leaves = sorted({t.rsplit(".", 1)[-1] for t in targets})
    want = sorted(set(spec.lora.target_modules or backbone_class(bspec.name).default_target_modules))
    if leaves and leaves != want:
        raise ExportError(
            f"{adapter_dir}: adapter targets {', '.join(leaves)} but the spec's lora.target_modules are "
            f"{', '.join(want)}; pass the spec the adapter was trained with"
        )


def check_adapter_shapes(adapter_dir: Path, bspec, backbone) -> None:
    """Refuse an adapter with a module the loaded backbone lacks, or of another shape (another backbone)."""
    from safetensors.torch import safe_open

    from gapinit_ray.inits.adapters import PEFT_PREFIX

    modules = dict(backbone.model.named_modules())
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            name, _, rest = key.removeprefix(PEFT_PREFIX).partition(".lora_")
            mod = modules.get(name)
            if mod is None:
                raise ExportError(
                    f"{adapter_dir}: adapter from another backbone: module {name} does not exist in "
                    f"{bspec.key} ({backbone.source_id})"
                )
            shape = f.get_slice(key).get_shape()
            d_in, d_out = getattr(mod, "in_features", None), getattr(mod, "out_features", None)
            if (rest.startswith("A") and shape[-1] != d_in) or (rest.startswith("B") and shape[0] != d_out):
                raise ExportError(
                    f"{adapter_dir}: adapter from another backbone: {key} has shape {tuple(shape)}, module "
                    f"{name} of {bspec.key} is ({d_out}, {d_in})"
                )


def evaluate_target(
    target: str,
    spec_path: str | None,
    split: str | None = None,
    task: str | None = None,
    which: str = "last",
    backbone_key: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a trial (its run / checkpoint dir) or a peft adapter dir on ``split`` (default: test
    when the spec has ``data.test``, else val); returns the evaluation row
    (``metrics`` under ``<split>_<name>``) and writes it to the sweep's store when there is one."""
    from gapinit_ray.data.resolve import split_records
    from gapinit_ray.evaluate import eval_records, evaluate_split
    from gapinit_ray.spec import load_spec

    quiet_transformers()
    path = Path(target).expanduser()
    if not path.exists():
        raise ExportError(f"{target}: no such adapter or trial directory (missing adapter)")
    is_adapter = (path / "adapter_config.json").is_file()
    if is_adapter:
        if not spec_path:
            raise ExportError(f"{target}: a peft adapter dir needs --spec SPEC (its backbone, data and eval)")
        spec = load_spec(spec_path, overrides)
        bspec = _backbone(spec, backbone_key)
        tspec, ref = spec, None
    else:
        ref = resolve_trial(target, spec_path, which, overrides)
        spec, tspec, bspec = ref.spec, ref.tspec, ref.bspec
    if split is None:  # the spec's held-out test split when it has one, else its val split
        split = "test" if tspec.data.test is not None else "val"
    ref_split = split_ref(tspec, split)
    kind = tspec.data.sources[ref_split.source].kind
    if task is not None and TASK_KINDS.get(task) != kind:
        raise ExportError(
            f"--task {task}: data.{split} ({ref_split.source}) holds {kind} data; use --task "
            f"{'caption' if kind == 'caption' else kind} or another --split"
        )
    records = eval_records(split_records(tspec.data, ref_split, tspec.storage), tspec.eval.subset)
    started = time.perf_counter()
    if is_adapter:
        backbone, model = _load_adapter(path, spec, bspec)
        exported = json.loads((path / EXPORT_META).read_text()) if (path / EXPORT_META).is_file() else {}
        init = exported.get("init", _adapter_config(path).get("init_lora_weights"))
        epoch, name = exported.get("epoch"), path.resolve().name
    else:
        backbone, model, method = load_trained(ref)
        init, epoch, name = method.name, ref.metrics.get("epoch"), ref.trial_id
    scores = evaluate_split(
        model,
        backbone,
        records,
        eval_spec_for(tspec),
        prompt=tspec.train.prompt,
        question_prompt=tspec.train.question_prompt,
    )
    row = {
        "kind": "evaluation",
        "sweep": spec.name,
        "trial_id": ref.trial_id if ref else None,
        "adapter": str(path.resolve() if is_adapter else ref.adapter_dir),
        "backbone": bspec.key,
        "init": str(init),
        "epoch": epoch,
        "split": split,
        "task": task or kind,
        "num_records": len(records),
        "seconds": round(time.perf_counter() - started, 3),
        "metrics": {f"{split}_{k}": v for k, v in (scores or {}).items()},
    }
    row["stored"] = _store_row(spec, name, row)
    return row


def _backbone(spec, key: str | None):
    if key is None:
        return spec.backbones[0]
    for b in spec.backbones:
        if b.key == key:
            return b
    raise ExportError(
        f"--backbone {key}: the spec's backbones are {', '.join(b.key for b in spec.backbones)}"
    )


def _load_adapter(path: Path, spec, bspec):
    from peft import PeftModel

    from gapinit_ray.backbones import load_backbone
    from gapinit_ray.calibration_job import backbone_source_id
    from gapinit_ray.trial import prepare_backbone

    bpath = prepare_backbone(spec, bspec, progress=False)
    check_adapter(path, spec, bspec, backbone_source_id(bspec, bpath))
    backbone = load_backbone(bspec.name, path=bpath, revision=bspec.revision, dtype=bspec.dtype)
    check_adapter_shapes(path, bspec, backbone)
    model = PeftModel.from_pretrained(backbone.model, str(path))
    model.eval()
    return backbone, model


def _store_row(spec, name: str, row: dict[str, Any]) -> str | None:
    """Write the row under the sweep's results dir when that sweep exists; returns the path or None."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from gapinit_ray.results._fs import write_bytes
    from gapinit_ray.results.store import ResultsStore

    store = ResultsStore(spec.storage, spec.name)
    sweep_dir = Path(spec.storage).expanduser() / spec.name
    if not store.loc.local or not (sweep_dir / RESULTS_DIR).is_dir():
        return None
    flat = {k: v for k, v in row.items() if k != "metrics"}
    flat.update({k: float(v) for k, v in row["metrics"].items()})
    flat["timestamp"] = time.time()
    table = pa.Table.from_pylist([flat])
    buf = io.BytesIO()
    pq.write_table(table, buf)
    safe = "".join(c if c.isalnum() or c in "._=,-" else "_" for c in name)
    out = f"{store.base}/{EVAL_DIR}/{safe}_{row['split']}.parquet"
    write_bytes(store.loc, out, buf.getvalue())
    return out


def read_evaluations(storage: str, sweep: str):
    """Every evaluation row of a sweep as a pyarrow Table (empty when none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = Path(storage).expanduser() / sweep / RESULTS_DIR / EVAL_DIR
    files = sorted(d.glob("*.parquet")) if d.is_dir() else []
    return (
        pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
        if files
        else pa.table({})
    )
