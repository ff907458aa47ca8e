"""The calibration page's data: the GapArtifacts of a sweep's backbones and the layers its trials adapted.

Read from ``<storage>/_cache/gaps/<key>/meta.json`` (what :meth:`gapinit_ray.gap.GapArtifact.save`
writes: per hooked module its layer, kind and statistics) and the trials' init checks (``layers``,
``selection``, ``top_k``: what :mod:`gapinit_ray.inits.targets` selected). Read-only, like the rest.
"""

from __future__ import annotations

import json
from typing import Any

from gapinit_ray.dashboard.payload import clean
from gapinit_ray.dashboard.reader import SweepReader
from gapinit_ray.names import CACHE_DIR, GAPS_DIR


def calibration(reader: SweepReader) -> dict[str, Any]:
    """The GapArtifacts of the sweep's backbones (``<storage>/_cache/gaps/<key>/meta.json``): per layer
    and module the gap norm ‖mean(z_t − z_v)‖, the SPOT-Gap score and the leading direction's share,
    and the LM layers the trials adapted (from their init checks: ``layers``, ``selection``, ``top_k``)."""
    import pyarrow.fs as pafs

    spec = reader.spec() or {}
    names = {b.get("name") for b in spec.get("backbones") or []}
    base = reader.loc.join(CACHE_DIR, GAPS_DIR)
    infos = reader.loc.fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
    selected: dict[str, Any] = {}
    trials = reader.trials()
    if trials.num_rows and "init_checks" in trials.column_names:
        for r in trials.select(["trial_id", "backbone", "init", "init_checks"]).to_pylist():
            try:
                checks = json.loads(r["init_checks"]) if r["init_checks"] else None
            except ValueError:
                checks = None
            if not isinstance(checks, dict) or "layers" not in checks:
                continue
            key = json.dumps([r["backbone"], checks.get("selection"), checks.get("top_k"), checks["layers"]])
            entry = selected.setdefault(
                key,
                {
                    "backbone": r["backbone"],
                    "selection": checks.get("selection"),
                    "top_k": checks.get("top_k"),
                    "layers": checks["layers"],
                    "vision_layers": checks.get("vision_layers") or [],
                    "inits": set(),
                    "n_trials": 0,
                },
            )
            entry["inits"].add(r["init"])
            entry["n_trials"] += 1
    artifacts = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.Directory or info.base_name.startswith((".", "_")):
            continue
        try:
            with reader.loc.fs.open_input_file(f"{info.path}/meta.json") as f:
                meta = json.loads(f.read().decode())
        except (OSError, ValueError):
            continue
        backbone = meta.get("backbone_name") or meta.get("backbone")
        if names and backbone not in names:
            continue
        modules = []
        for name, m in (meta.get("modules") or {}).items():
            modules.append(
                {
                    "module": name,
                    "layer": m.get("layer"),
                    "kind": m.get("kind"),
                    "gap_norm": m.get("gap_norm"),
                    "spot_score": m.get("spot_score"),
                    "first_share": m.get("first_share"),
                    "translation_share": m.get("translation_share"),
                }
            )
        modules.sort(
            key=lambda m: (m["layer"] if m["layer"] is not None else -1, m["kind"] != "residual", m["module"])
        )
        artifacts.append(
            {
                "key": meta.get("key") or info.base_name,
                "backbone": backbone,
                "num_samples": meta.get("num_samples"),
                "pooling": meta.get("pooling"),
                "passes": meta.get("passes"),
                "spot": meta.get("spot"),
                "modules": modules,
            }
        )
    sel = [{**s, "inits": sorted(s["inits"], key=str)} for s in selected.values()]
    return clean({"artifacts": artifacts, "selected": sel})
