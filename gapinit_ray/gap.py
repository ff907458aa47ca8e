"""Central reduction of calibration shards into per-module gap statistics, and the GapArtifact.

Per hooked module, from the pooled per-sample vectors Z_v, Z_t ``(N, d)`` (see :mod:`calibrate`):

- **mean gap** g = mean_i (z_t,i − z_v,i)                                        (paper §4.2)
- **spectrum** of the uncentred per-sample gap matrix G ``(N, d)``: leading singular values and the
  share s₁²/Σs² of the first direction, plus cos(v₁, g)                           (paper Fig. 3)
- **SPOT-Gap** (paper App. C): s_sem,i = ‖g_i‖; local dispersion d_v,i / d_t,i = mean distance to the
  k nearest *other* points of the same modality; s_geom,i = |d_t,i − d_v,i|; smoothing over the
  neighbourhood N_k(i) = i and its k−1 nearest samples (so k = 1 is no smoothing), found in the space
  ``neighbor_space`` (the per-sample gaps by default; the paper does not say); the layer score
  S_gap = mean_i s̄_i. The SPOT-smoothed gap is mean_i g̃_i with g̃_i = mean_{j∈N_k(i)} g_j (our reading
  of "smooth(g_i)" in Alg. 1), i.e. a hub-weighted mean of the raw gaps.
- **cone statistics** (paper Fig. 4): per modality the mean pairwise cosine, and the mean-dominance
  ‖μ‖²/E‖z‖²; cos(μ_v, μ_t); translation share ‖g‖²/E‖g_i‖².

The reduction only ever sees the concatenation of the shards in sample order, so N shards of any sizes
give the one-process result. The GapArtifact stores the result as safetensors + JSON metadata under the
storage root, keyed by a content hash of everything that determines it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gapinit_ray.calibrate import PooledShard
from gapinit_ray.errors import GapinitError

ARTIFACT_VERSION = 1
N_SINGULAR = 8


@dataclass(frozen=True)
class SpotSettings:
    enabled: bool = True
    k: int = 10
    alpha_sem: float = 1.0
    alpha_geom: float = 1.0
    neighbor_space: str = "gap"


def _knn(x: torch.Tensor, k: int, include_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and distances ``(N, k)`` of each row's k nearest rows (Euclidean, float64).

    The reduction always sees the same concatenated matrix (shards in sample order), so the result
    does not depend on how the calibration set was sharded.
    """
    x = x.double()
    d = torch.cdist(x, x)
    n = x.shape[0]
    if not include_self:
        d.diagonal().fill_(float("inf"))
    k = min(k, n if include_self else n - 1)
    dist, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
    return idx, dist


def spot_gap(z_v: torch.Tensor, z_t: torch.Tensor, s: SpotSettings) -> dict[str, Any]:
    """SPOT-Gap score and smoothed gap of one module (paper App. C); inputs ``(N, d)``."""
    g = (z_t - z_v).double()
    s_sem = g.norm(dim=1)
    if z_v.shape[0] < 2:
        s_geom = torch.zeros_like(s_sem)
    else:
        _, dv = _knn(z_v, s.k, include_self=False)
        _, dt = _knn(z_t, s.k, include_self=False)
        s_geom = (dt.mean(1) - dv.mean(1)).abs()
    per_sample = s.alpha_sem * s_sem + s.alpha_geom * s_geom
    if s.enabled:
        space = g if s.neighbor_space == "gap" else z_v
        nbr, _ = _knn(space, s.k, include_self=True)
        smoothed_score = per_sample[nbr].mean(1)
        g_tilde = g[nbr].mean(1)
    else:
        smoothed_score = per_sample
        g_tilde = g
    return {
        "score": float(smoothed_score.mean()),
        "s_sem": float(s_sem.mean()),
        "s_geom": float(s_geom.mean()),
        "spot_gap": g_tilde.mean(0).float(),
    }


def spectrum(g: torch.Tensor, mean_gap: torch.Tensor) -> dict[str, Any]:
    """Leading singular values of the uncentred gap matrix G ``(N, d)`` and the first direction's share."""
    _, sv, vh = torch.linalg.svd(g.double(), full_matrices=False)
    energy = float((sv**2).sum())
    v1 = vh[0]
    cos = float(torch.abs(v1 @ mean_gap.double()) / (mean_gap.double().norm() + 1e-30))
    return {
        "singular_values": [float(x) for x in sv[:N_SINGULAR]],
        "first_share": float(sv[0] ** 2 / energy) if energy > 0 else 0.0,
        "first_dir_cos_gap": cos,
    }


def cone_stats(z_v: torch.Tensor, z_t: torch.Tensor) -> dict[str, float]:
    """Cone statistics (paper Fig. 4): mean pairwise cosine and mean-dominance per modality."""

    def one(z: torch.Tensor) -> tuple[float, float]:
        z = z.double()
        n = z.shape[0]
        u = z / z.norm(dim=1, keepdim=True).clamp_min(1e-30)
        # the sum over i != j of u_i . u_j is |sum_i u_i|^2 - sum_i |u_i|^2: O(N d), not the N x N
        # Gram matrix (4096 samples: 4.4 s -> ms per module)
        pair = float((u.sum(0).square().sum() - u.square().sum()) / max(n * (n - 1), 1))
        dominance = float(z.mean(0).norm() ** 2 / (z.norm(dim=1) ** 2).mean().clamp_min(1e-30))
        return pair, dominance

    pv, dv = one(z_v)
    pt, dt = one(z_t)
    mv, mt = z_v.double().mean(0), z_t.double().mean(0)
    g = (z_t - z_v).double()
    return {
        "vision_pairwise_cos": pv,
        "text_pairwise_cos": pt,
        "vision_mean_dominance": dv,
        "text_mean_dominance": dt,
        "cos_mu_v_mu_t": float(mv @ mt / (mv.norm() * mt.norm()).clamp_min(1e-30)),
        "translation_share": float(g.mean(0).norm() ** 2 / (g.norm(dim=1) ** 2).mean().clamp_min(1e-30)),
    }


@dataclass
class ModuleGap:
    """Reduced statistics of one hooked module; vectors are ``(d_out,)`` float32."""

    name: str
    layer: int
    kind: str
    mean_gap: torch.Tensor
    spot_gap: torch.Tensor
    stats: dict[str, Any]


def reduce_shards(shards: list[PooledShard], spot: SpotSettings, layers_path: str) -> dict[str, ModuleGap]:
    """Reduce shard results (in sample order) to per-module gap statistics."""
    from gapinit_ray.calibrate import kind_of, layer_index

    pooled = PooledShard.concat(shards)
    out: dict[str, ModuleGap] = {}
    for name in pooled.z_v:
        z_v, z_t = pooled.z_v[name], pooled.z_t[name]
        g = z_t - z_v
        mean_gap = g.double().mean(0).float()
        sp = spot_gap(z_v, z_t, spot)
        stats = {
            "gap_norm": float(mean_gap.norm()),
            "spot_score": sp["score"],
            "s_sem": sp["s_sem"],
            "s_geom": sp["s_geom"],
            "spot_gap_cos_mean_gap": float(
                (sp["spot_gap"].double() @ mean_gap.double())
                / (sp["spot_gap"].double().norm() * mean_gap.double().norm()).clamp_min(1e-30)
            ),
            **spectrum(g, mean_gap),
            **cone_stats(z_v, z_t),
        }
        out[name] = ModuleGap(
            name, layer_index(name, layers_path), kind_of(name, layers_path), mean_gap, sp["spot_gap"], stats
        )
    return out


def layer_scores(gaps: dict[str, ModuleGap]) -> dict[int, float]:
    """SPOT-Gap score per LM layer (GG-Safe ranks layers by it): the residual stream's score where
    recorded, else the mean over the layer's modules."""
    by_layer: dict[int, list[float]] = {}
    residual: dict[int, float] = {}
    for m in gaps.values():
        if m.kind == "residual":
            residual[m.layer] = m.stats["spot_score"]
        by_layer.setdefault(m.layer, []).append(m.stats["spot_score"])
    return {layer: residual.get(layer, sum(v) / len(v)) for layer, v in sorted(by_layer.items())}


# ------------------------------------------------------------------------------------- artifact


class ArtifactMismatch(GapinitError):
    """A GapArtifact does not belong to the backbone / modules it is being applied to."""


def artifact_key(parts: dict[str, Any]) -> str:
    """Content hash of everything that determines a GapArtifact."""
    blob = json.dumps({"version": ARTIFACT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class GapArtifact:
    """Gap vectors of every hooked module + the metadata that makes them reusable and checkable."""

    key: str
    gaps: dict[str, ModuleGap]
    meta: dict[str, Any] = field(default_factory=dict)
    # the directory it was loaded from / saved to (None: built in memory); the init statistics of
    # peft's data-driven inits are cached in it (gapinit_ray.init_stats)
    path: Path | None = field(default=None, compare=False, repr=False)

    def vector(self, name: str, source: str = "mean") -> torch.Tensor:
        m = self.gaps.get(name)
        if m is None:
            raise ArtifactMismatch(
                f"GapArtifact {self.key} has no gap for module {name} (backbone "
                f"{self.meta.get('backbone')}, modules {', '.join(self.meta.get('target_modules', []))})"
            )
        return m.mean_gap if source == "mean" else m.spot_gap

    def check_compatible(self, **expected: Any) -> None:
        """Refuse an artifact whose metadata differs from what the trial expects, naming the key."""
        for k, v in expected.items():
            have = self.meta.get(k)
            if have != v:
                raise ArtifactMismatch(
                    f"GapArtifact {self.key} was computed for {k}={have!r}, but this trial has {k}={v!r}; "
                    "recalibrate (it is cached by content, so a matching one is computed once)"
                )

    # ---- I/O (local paths; remote URIs go through pyarrow.fs in gapinit_ray.storage)

    def save(self, root: str | os.PathLike) -> Path:
        """Write ``<root>/<key>/{gaps.safetensors,meta.json}`` atomically (tmp dir + rename)."""
        from safetensors.torch import save_file

        final = Path(root) / self.key
        if (final / "meta.json").exists():
            self.path = final
            return final
        tmp = Path(root) / f".{self.key}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir(parents=True)
        tensors = {}
        for name, m in self.gaps.items():
            tensors[f"{name}::mean"] = m.mean_gap.contiguous()
            tensors[f"{name}::spot"] = m.spot_gap.contiguous()
        save_file(tensors, str(tmp / "gaps.safetensors"))
        modules = {n: {"layer": m.layer, "kind": m.kind, **m.stats} for n, m in self.gaps.items()}
        meta = {**self.meta, "key": self.key, "version": ARTIFACT_VERSION, "modules": modules}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        try:
            tmp.rename(final)
        except OSError:
            if (final / "meta.json").exists():  # another writer won the race: same content by key
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
        self.path = final
        return final

    @staticmethod
    def load(path: str | os.PathLike) -> GapArtifact:
        """Read an artifact dir; a missing or corrupt file is a clear error naming it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
            tensors = load_file(str(path / "gaps.safetensors"))
        except FileNotFoundError as e:
            raise GapinitError(f"GapArtifact {path}: missing {Path(e.filename).name}; recalibrate") from None
        except (json.JSONDecodeError, SafetensorError, OSError) as e:
            raise GapinitError(
                f"GapArtifact {path} is corrupt ({type(e).__name__}); delete it and recalibrate"
            ) from None
        gaps = {}
        for name, info in meta.pop("modules").items():
            stats = {k: v for k, v in info.items() if k not in ("layer", "kind")}
            gaps[name] = ModuleGap(
                name, info["layer"], info["kind"], tensors[f"{name}::mean"], tensors[f"{name}::spot"], stats
            )
        return GapArtifact(meta["key"], gaps, meta, path=path)

    def table(self) -> list[dict[str, Any]]:
        """One row per module: layer, kind, gap norm, SPOT score, leading-direction share."""
        rows = []
        for m in sorted(self.gaps.values(), key=lambda m: (m.layer, m.kind)):
            rows.append(
                {
                    "layer": m.layer,
                    "module": m.kind,
                    "d": m.mean_gap.numel(),
                    "gap_norm": m.stats["gap_norm"],
                    "spot_score": m.stats["spot_score"],
                    "first_share": m.stats["first_share"],
                    "translation_share": m.stats["translation_share"],
                }
            )
        return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain fixed-width table of :meth:`GapArtifact.table` rows."""
    if not rows:
        return "(no modules)"
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)

    cells = [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
