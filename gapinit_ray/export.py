"""`gapinit export`: a trained trial's adapter as a standalone peft adapter dir, or merged into its base.

A trial's checkpoints (``<sweep>/train/<trial>/checkpoint_*/adapter/``) hold what peft's
``save_pretrained`` wrote inside the trial. Exported, that directory must load with
``PeftModel.from_pretrained(base, DIR)`` in a process that never imported gapinit_ray, on the *original*
base weights. For most inits the checkpoint already is that (its ``adapter_config.json`` gets the base's
path as ``base_model_name_or_path``). The inits that rewrite the base (PiSSA, OLoRA, CorDA, LoRA-GA store
W_res = W₀ − s·B₀A₀ in the frozen weight) are converted as peft documents it: the initial adapter is
rebuilt (same spec, seed and cached statistics ⇒ the same B₀, A₀ and W_res), saved with
``init_lora_weights=True``, and ``save_pretrained(out, path_initial_model_for_weight_conversion=...)``
writes ΔW = s·(BA − B₀A₀) as a plain rank-2r LoRA adapter on W₀ (``[A; A₀]``, ``[B, −B₀]``, α doubled).

``--merge`` writes a transformers checkpoint instead (``merge_and_unload`` + ``save_pretrained``, with
the tokenizer and image processor), loadable with the family's model class alone.

Every export also writes ``gapinit_export.json`` (backbone name, path, source id, dtype, trial, init,
which checkpoint): ``gapinit evaluate`` checks an adapter against the spec's backbone with it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapinit_ray.errors import GapinitError
from gapinit_ray.names import SPEC_FILE, TRAIN_DIR

EXPORT_META = "gapinit_export.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


class ExportError(GapinitError):
    """A trial, checkpoint or adapter that cannot be found, read or matched to its backbone."""


@dataclass
class TrialRef:
    """A trained trial, resolved: its spec (axis values applied), parameters and chosen checkpoint."""

    spec: Any  # the sweep's SweepSpec
    tspec: Any  # the trial's SweepSpec
    bspec: Any  # the trial's BackboneSpec
    params: dict[str, Any]
    trial_id: str
    sweep_dir: Path | None
    checkpoint: Path  # a checkpoint dir holding adapter/
    metrics: dict[str, Any]  # the checkpoint's report (trainer_state.json), {} if absent

    @property
    def adapter_dir(self) -> Path:
        from gapinit_ray.train import ADAPTER_DIR

        return self.checkpoint / ADAPTER_DIR


def _find_sweep_dir(path: Path) -> Path | None:
    for p in [path, *path.parents]:
        if (p / SPEC_FILE).is_file():
            return p
    return None


def _checkpoints(run_dir: Path) -> list[Path]:
    from gapinit_ray.train import ADAPTER_DIR

    return sorted(
        (c for c in run_dir.glob("checkpoint_*") if (c / ADAPTER_DIR).is_dir()), key=lambda c: c.name
    )


def _state(checkpoint: Path) -> dict[str, Any]:
    from gapinit_ray.train import TRAINER_STATE

    f = checkpoint / TRAINER_STATE
    try:
        return json.loads(f.read_text()).get("metrics", {}) if f.is_file() else {}
    except json.JSONDecodeError:
        raise ExportError(f"{f} is corrupt (not JSON); pick another checkpoint") from None


def resolve_trial(
    target: str, spec_path: str | None = None, which: str = "last", overrides: list[str] | None = None
) -> TrialRef:
    """``target``: a trial's run dir (``<sweep>/train/<trial>``), one of its checkpoint dirs, or
    ``<sweep>/<trial id>``. The spec comes from ``spec_path`` or the sweep's ``spec.json``; the trial's
    parameters from the grid point whose :func:`~gapinit_ray.plan.trial_id` it is. ``which``: ``last``
    checkpoint, or ``best`` by the spec's scheduler metric among the checkpoints kept."""
    from gapinit_ray.plan import grid_points, trial_id, trial_spec
    from gapinit_ray.spec import load_spec, saved_spec
    from gapinit_ray.train import ADAPTER_DIR

    path = Path(target).expanduser()
    if not path.exists() and (path.parent / TRAIN_DIR / path.name).is_dir():
        path = path.parent / TRAIN_DIR / path.name  # <sweep>/<trial id>: its run dir under train/
    if not path.exists():
        raise ExportError(f"{target}: no such trial or checkpoint directory")
    path = path.resolve()
    if (path / ADAPTER_DIR).is_dir():
        checkpoints, run_dir = [path], path.parent
    else:
        run_dir = path
        if not _checkpoints(run_dir) and (path.parent / TRAIN_DIR / path.name).is_dir():
            run_dir = path.parent / TRAIN_DIR / path.name  # <sweep>/<trial id>
        checkpoints = _checkpoints(run_dir)
    if not checkpoints:
        raise ExportError(
            f"{target}: no checkpoint with an adapter/ dir here (missing adapter); pass <sweep>/train/<trial> "
            "of a trial that reported at least once"
        )
    tid = run_dir.name
    sweep_dir = _find_sweep_dir(run_dir)
    if spec_path:
        spec = load_spec(spec_path, overrides)
    elif sweep_dir is not None:
        spec = saved_spec(sweep_dir / SPEC_FILE)
    else:
        raise ExportError(f"{target}: not inside a sweep directory (no spec.json above it); pass --spec SPEC")
    params = next((p for p in grid_points(spec) if trial_id(p) == tid), None)
    if params is None:
        raise ExportError(
            f"{target}: trial id {tid!r} is not a grid point of sweep {spec.name!r} (a sampled axis, or "
            "another spec); pass the sweep's own spec with --spec"
        )
    tspec, bspec = trial_spec(spec, params)
    if which == "best":
        metric, mode = spec.scheduler.metric, spec.scheduler.mode
        scored = [(c, _state(c).get(metric)) for c in checkpoints]
        scored = [(c, v) for c, v in scored if isinstance(v, int | float)]
        if not scored:
            raise ExportError(f"{run_dir}: no checkpoint records {metric!r}; use --which last")
        chosen = (max if mode == "max" else min)(scored, key=lambda cv: cv[1])[0]
    elif which == "last":
        chosen = max(checkpoints, key=lambda c: _state(c).get("epoch", -1) if _state(c) else -1)
        chosen = chosen if _state(chosen) else checkpoints[-1]
    else:
        raise ExportError(f"--which {which!r}: use last or best")
    return TrialRef(spec, tspec, bspec, params, tid, sweep_dir, chosen, _state(chosen))


def quiet_transformers() -> None:
    """No per-load progress bars on stderr: a command's stderr is its one-line errors."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def backbone_path_of(ref: TrialRef) -> str | None:
    """Where the trial's base weights come from (the pretrained tiny preset's cache dir or the spec's path)."""
    from gapinit_ray.trial import prepare_backbone

    return prepare_backbone(ref.tspec, ref.bspec, progress=False)


def load_trained(ref: TrialRef, backbone_path: str | None = None):
    """(backbone, PeftModel with the trained adapter, InitMethod), on a fresh base, in eval mode.

    Base-rewriting inits rebuild the initial state first (their W_res cannot be recomputed by peft
    from the saved config alone for CorDA / LoRA-GA), then load the trained A, B into it."""
    from peft import PeftModel, set_peft_model_state_dict

    from gapinit_ray.backbones import load_backbone
    from gapinit_ray.inits.apply import apply_lora
    from gapinit_ray.inits.registry import get_init_method

    b = ref.bspec
    path = backbone_path if backbone_path is not None else backbone_path_of(ref)
    backbone = load_backbone(b.name, path=path, revision=b.revision, dtype=b.dtype)
    method = get_init_method(ref.tspec.lora.init)
    if method.mutates_base:
        artifact = _artifact(ref, path)
        model, _ = apply_lora(backbone, ref.tspec.lora, artifact, ref.tspec.seed)
        result = set_peft_model_state_dict(model, _adapter_state(ref.adapter_dir))
        if getattr(result, "unexpected_keys", None):
            raise ExportError(
                f"{ref.adapter_dir}: adapter weights {result.unexpected_keys[0]} do not fit trial "
                f"{ref.trial_id}'s spec (lora.target_modules / layers / rank differ)"
            )
    else:
        model = PeftModel.from_pretrained(backbone.model, str(ref.adapter_dir))
    model.eval()
    return backbone, model, method


def _artifact(ref: TrialRef, backbone_path: str | None):
    from gapinit_ray.gap import GapArtifact
    from gapinit_ray.trial import prepare_artifact

    return GapArtifact.load(
        prepare_artifact(ref.tspec, ref.bspec, backbone_path, progress=False, use_ray=False)
    )


def _adapter_state(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    f = adapter_dir / "adapter_model.safetensors"
    if not f.is_file():
        raise ExportError(f"{adapter_dir}: missing adapter_model.safetensors (missing adapter)")
    return load_file(str(f))


def export_trial(ref: TrialRef, out: str | Path, merge: bool = False) -> dict[str, Any]:
    """Write the trial's adapter (or the merged model with ``merge``) to ``out``; returns the export meta."""
    quiet_transformers()
    out = Path(out).expanduser().absolute()
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"--out {out}: directory exists and is not empty; pass a new directory")
    path = backbone_path_of(ref)
    backbone, model, method = load_trained(ref, path)
    meta = {
        "kind": "merged" if merge else "adapter",
        "trial_id": ref.trial_id,
        "sweep": ref.spec.name,
        "checkpoint": str(ref.checkpoint),
        "epoch": ref.metrics.get("epoch"),
        "init": method.name,
        "converted": bool(method.mutates_base) and not merge,
        "backbone": {
            "name": ref.bspec.name,
            "key": ref.bspec.key,
            "path": path,
            "source_id": backbone.source_id,
            "dtype": ref.bspec.dtype,
            "revision": ref.bspec.revision,
        },
    }
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(str(tmp))
        backbone.tokenizer.save_pretrained(str(tmp))
        backbone.image_processor.save_pretrained(str(tmp))
    elif method.mutates_base:
        with tempfile.TemporaryDirectory(prefix="gapinit-export-") as work:
            init_dir = Path(work) / "initial"
            _save_initial(ref, path, init_dir)
            with warnings.catch_warnings():  # peft warns that the base was changed: what this converts
                warnings.filterwarnings("ignore", message=".*changes the base weights of the model")
                model.save_pretrained(str(tmp), path_initial_model_for_weight_conversion=str(init_dir))
    else:
        for name in ADAPTER_FILES:
            if (ref.adapter_dir / name).is_file():
                shutil.copy2(ref.adapter_dir / name, tmp / name)
    if not merge:
        cfg_file = tmp / "adapter_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["base_model_name_or_path"] = path  # None for a preset built from config
        if cfg.get("init_lora_weights") is True:  # converted: the init's own config no longer applies
            cfg.update({k: None for k in ("corda_config", "lora_ga_config", "eva_config") if k in cfg})
        cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (tmp / EXPORT_META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return meta


def _save_initial(ref: TrialRef, backbone_path: str | None, init_dir: Path) -> None:
    """The trial's initial adapter (B₀, A₀), rebuilt on a fresh base and saved the way peft's docs say
    for the weight conversion: with ``init_lora_weights=True`` (so loading it does not rewrite W again)."""
    from gapinit_ray.backbones import load_backbone
    from gapinit_ray.inits.adapters import ADAPTER
    from gapinit_ray.inits.apply import apply_lora

    b = ref.bspec
    backbone = load_backbone(b.name, path=backbone_path, revision=b.revision, dtype=b.dtype)
    model, _ = apply_lora(backbone, ref.tspec.lora, _artifact(ref, backbone_path), ref.tspec.seed)
    model.peft_config[ADAPTER].init_lora_weights = True
    model.save_pretrained(str(init_dir))
