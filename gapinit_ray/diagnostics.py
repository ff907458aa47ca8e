"""Orthogonality diagnostics behind ``gapinit diagnose``: why a random rank-1 direction barely sees the gap.

Three numerical checks of the paper's geometric argument, written to ``diagnostics.{png,md,json}``:

- :func:`prop31` — **Proposition 3.1** (paper §3.1): for b uniform on S^{d-1} and a fixed unit u,
  E⟨u,b⟩ = 0, E⟨u,b⟩² = 1/d and P(|⟨u,b⟩| > ε) ≤ 2 exp(−(d−1)ε²/2). We sample b and report the empirical
  moments and tail frequencies next to the bound, so a reader can see |⟨u,b⟩| ~ 1/√d at the backbone's d.
- :func:`fig5` — **Figure 5 / Appendix A** (Gaussian translation model, A.1–A.5): the effective gradient
  magnitude |⟨b, ĝ⟩| for a random b decays as d^{-1/2} (A.3, eq. 6) while a gap-aligned b keeps it O(1)
  (Theorem A.1). We fit the log-log slopes: ≈ −1/2 and ≈ 0.
- :func:`fig2` — **Figure 2** (paper §3.1) on a real backbone's per-module gap vectors: cos(b, g) of a
  random rank-1 direction versus Gap-Init's b = g/‖g‖ (§4.3), also with noise added to g, to show how
  much estimation error the alignment tolerates.

All sampling is float64 on CPU with seeded ``torch.Generator`` s whose seeds are derived from
``(seed, purpose, d or module name)``, so every number depends only on its own inputs (not on which
other dimensions or modules were asked for) and the same seed gives identical output.
"""

from __future__ import annotations

import json
import math
import operator
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gapinit_ray.atomic import write_atomic
from gapinit_ray.diagnostics_report import markdown, plot_png

DEFAULT_DIMS: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
# d values shown in the Prop. 3.1 panel: a small one, OPT-2.7B's hidden size (BLIP-2 OPT-2.7B, §5.1) and
# the d = 4096 the paper quotes after Prop. 3.1.
DEFAULT_PROP_DIMS: tuple[int, ...] = (64, 512, 2560, 4096)
# ε grid of Prop. 3.1 in units of 1/√d: an absolute grid would make the bound vacuous (> 1) at small d
# and the tail frequency 0 at large d; k/√d probes the same part of the distribution at every d.
DEFAULT_EPS_SQRT_D: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0)
DEFAULT_NOISE_EPS: tuple[float, ...] = (0.0, 0.2, 0.6, 1.0)
FILES = ("diagnostics.png", "diagnostics.md", "diagnostics.json")

_CHUNK_ELEMS = 1 << 22  # 4M float64 = 32 MiB per sampling chunk
_HIST_BINS = 60  # Prop. 3.1 histogram: bins over ±5/√d
_FIG2_BINS = 400  # Fig. 2 histogram: bins over cos ∈ [−1, 1]
_TAG_PROP31, _TAG_FIG5_RANDOM, _TAG_FIG5_GAP, _TAG_FIG2 = 1, 2, 3, 4


# ---------------------------------------------------------------------------------------------------
# input checks (ValueError, never assert: they must survive ``python -O``)


def _as_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {v}")
    return v


def _as_float(name: str, value: Any, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        raise ValueError(f"{name} must be finite and {'>' if strict else '≥'} {minimum}, got {value!r}")
    return v


def _as_dims(name: str, dims: Iterable[Any], at_least: int) -> list[int]:
    if isinstance(dims, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of integers, got {dims!r}")
    out = [_as_int(f"{name} entry", d, 2) for d in dims]
    if len(set(out)) < at_least:
        raise ValueError(f"{name} needs at least {at_least} distinct dimension(s), got {out}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has repeated dimensions: {out}")
    return out


# ---------------------------------------------------------------------------------------------------
# seeded sampling


def _generator(seed: int, tag: int, key: int) -> torch.Generator:
    """A generator for one (seed, purpose, d / module) triple: results don't depend on the other inputs."""
    state = np.random.SeedSequence([seed, tag, key]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _unit(d: int, gen: torch.Generator) -> torch.Tensor:
    z = torch.randn(d, dtype=torch.float64, generator=gen)
    return z / z.norm()


def _cos_with(u: torch.Tensor, draws: int, gen: torch.Generator) -> torch.Tensor:
    """⟨u, b⟩ for ``draws`` independent b ~ Unif(S^{d−1}) (normalized Gaussians), sampled in chunks.

    A normalized standard Gaussian is exactly uniform on the sphere (rotation invariance), which is also
    what standard LoRA's random B column is up to scale (paper §3.1). Chunks bound memory to ~32 MiB.
    """
    d = u.numel()
    rows = max(1, _CHUNK_ELEMS // d)
    out = torch.empty(draws, dtype=torch.float64)
    for lo in range(0, draws, rows):
        n = min(rows, draws - lo)
        z = torch.randn(n, d, dtype=torch.float64, generator=gen)
        out[lo : lo + n] = (z @ u) / z.norm(dim=1)
    return out


def expected_abs_cos(d: int) -> float:
    """E|⟨u,b⟩| for b ~ Unif(S^{d−1}): Γ(d/2) / (√π Γ((d+1)/2)) ≈ √(2/(πd)) (paper App. A.3, eq. 6)."""
    d = _as_int("d", d, 1)
    return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)


# ---------------------------------------------------------------------------------------------------
# 1. Proposition 3.1


def prop31(d: int, draws: int, seed: int, eps_grid: Sequence[float] | None = None) -> dict[str, Any]:
    """Monte-Carlo check of Proposition 3.1 (paper §3.1) at dimension ``d``.

    Why: the proposition is the paper's explanation of rank-1 collapse — a random LoRA direction b has
    ⟨u,b⟩ = O(1/√d) with the gap axis u. We sample ``draws`` b ~ Unif(S^{d−1}) against one fixed (seeded)
    unit u and return the empirical E⟨u,b⟩ (expect 0), E⟨u,b⟩² (expect 1/d), d·E⟨u,b⟩² (expect 1; its
    Monte-Carlo standard error is about √(2/draws), reported as ``d_mean_sq_stderr``) and, for each ε,
    the empirical P(|⟨u,b⟩| > ε) next to the bound 2 exp(−(d−1)ε²/2). ``eps_grid`` defaults to
    ε = k/√d for k in (0.5, 1, 2, 3, 4), where the bound is non-trivial (< 1) from k = 2 on.

    ``hist`` (edges and densities over ±5/√d) is what the Prop. 3.1 panel of the plot draws.
    """
    d = _as_int("d", d, 2)
    draws = _as_int("draws", draws, 2)
    seed = _as_int("seed", seed, 0)
    if eps_grid is None:
        eps = [k / math.sqrt(d) for k in DEFAULT_EPS_SQRT_D]
    else:
        if isinstance(eps_grid, (str, bytes)):
            raise ValueError(f"eps_grid must be a sequence of numbers, got {eps_grid!r}")
        eps = [_as_float("eps_grid entry", e, 0.0, strict=True) for e in eps_grid]
        if not eps:
            raise ValueError("eps_grid is empty")

    gen = _generator(seed, _TAG_PROP31, d)
    u = _unit(d, gen)
    c = _cos_with(u, draws, gen)
    sq = c * c
    mean_sq = float(sq.mean())
    abs_c = c.abs()
    tails = []
    for e in eps:
        freq = float((abs_c > e).double().mean())
        bound = 2.0 * math.exp(-(d - 1) * e * e / 2.0)
        tails.append(
            {
                "eps": e,
                "eps_sqrt_d": e * math.sqrt(d),
                "empirical": freq,
                "bound": bound,
                "holds": freq <= bound,
            }
        )
    half = 5.0 / math.sqrt(d)
    counts = torch.histc(c, bins=_HIST_BINS, min=-half, max=half)
    width = 2 * half / _HIST_BINS
    return {
        "d": d,
        "draws": draws,
        "seed": seed,
        "mean": float(c.mean()),
        "mean_stderr": math.sqrt(1.0 / (d * draws)),
        "mean_sq": mean_sq,
        "expected_mean_sq": 1.0 / d,
        "d_mean_sq": d * mean_sq,
        "d_mean_sq_stderr": d * float(sq.std()) / math.sqrt(draws),
        "mean_abs": float(abs_c.mean()),
        "expected_mean_abs": expected_abs_cos(d),
        "tails": tails,
        "bound_holds": all(t["holds"] for t in tails),
        "hist": {
            "edges": [(-half + i * width) for i in range(_HIST_BINS + 1)],
            "density": [float(x) / (draws * width) for x in counts],
        },
    }


# ---------------------------------------------------------------------------------------------------
# 2. Figure 5 (Appendix A)


def _slope(dims: Sequence[int], values: Sequence[float]) -> float:
    return float(np.polyfit(np.log(np.asarray(dims, dtype=float)), np.log(np.asarray(values)), 1)[0])


def fig5(
    dims: Sequence[int],
    draws: int,
    seed: int,
    n_samples: int = 256,
    sigma: float = 0.05,
    gap_norm: float = 1.0,
    gap_trials: int = 8,
) -> dict[str, Any]:
    """Figure 5 (paper App. A.5): effective gradient magnitude |⟨b, ĝ⟩| versus d in the Gaussian model.

    Why: Appendix A reduces rank-1 alignment to ⟨b, ĝ⟩ (A.2–A.3): the useful gradient is proportional to
    it. Per d, with x_v ~ N(μ_v, σ²I) and x_t ~ N(μ_v + g, σ²I) (A.1, ‖g‖ = ``gap_norm``, seeded random
    direction ĝ and μ_v):

    - **random**: mean over ``draws`` b ~ Unif(S^{d−1}) of |⟨b, ĝ⟩|; theory Γ(d/2)/(√πΓ((d+1)/2)) ≈
      √(2/(πd)), i.e. log-log slope −1/2.
    - **gap-aligned**: b = ĝ_est, the normalized difference of the two cluster means estimated from
      ``n_samples`` points each (what Gap-Init does with a calibration set, §4.2–4.3), averaged over
      ``gap_trials`` independent sample sets. The estimate's error is N(0, 2σ²/n · I), so
      ⟨ĝ_est, ĝ⟩ ≈ ‖g‖ / √(‖g‖² + 2σ²d/n) (``gap_aligned_predicted``): just below 1 and falling slowly
      with d. The defaults (n = 256, σ = 0.05 ≪ ‖g‖ = 1) keep it ≥ 0.96 up to d = 4096 (log-log slope
      ≈ −0.01), the regime of the paper's "O(1) independent of d"; with a larger σ or smaller n the
      estimation noise grows like √d and the gap-aligned curve bends down too.

    Returns per-d rows and ``slope_random`` / ``slope_gap_aligned`` from ``numpy.polyfit`` of
    log|⟨b, ĝ⟩| against log d.
    """
    dims = _as_dims("dims", dims, at_least=2)
    draws = _as_int("draws", draws, 1)
    seed = _as_int("seed", seed, 0)
    n_samples = _as_int("n_samples", n_samples, 1)
    sigma = _as_float("sigma", sigma, 0.0)
    gap_norm = _as_float("gap_norm", gap_norm, 0.0, strict=True)
    gap_trials = _as_int("gap_trials", gap_trials, 1)

    rows = []
    for d in dims:
        gen = _generator(seed, _TAG_FIG5_GAP, d)
        g_hat = _unit(d, gen)
        g = gap_norm * g_hat
        mu_v = torch.randn(d, dtype=torch.float64, generator=gen)
        aligned = []
        for _ in range(gap_trials):
            x_v = mu_v + sigma * torch.randn(n_samples, d, dtype=torch.float64, generator=gen)
            x_t = mu_v + g + sigma * torch.randn(n_samples, d, dtype=torch.float64, generator=gen)
            diff = x_t.mean(0) - x_v.mean(0)
            aligned.append(abs(float(diff @ g_hat) / float(diff.norm())))
        c = _cos_with(g_hat, draws, _generator(seed, _TAG_FIG5_RANDOM, d))
        rows.append(
            {
                "d": d,
                "random": float(c.abs().mean()),
                "random_stderr": float(c.abs().std()) / math.sqrt(draws) if draws > 1 else None,
                "random_predicted": expected_abs_cos(d),
                "gap_aligned": float(np.mean(aligned)),
                "gap_aligned_predicted": gap_norm / math.sqrt(gap_norm**2 + 2 * sigma**2 * d / n_samples),
            }
        )
    return {
        "dims": dims,
        "draws": draws,
        "seed": seed,
        "n_samples": n_samples,
        "sigma": sigma,
        "gap_norm": gap_norm,
        "gap_trials": gap_trials,
        "rows": rows,
        "slope_random": _slope(dims, [r["random"] for r in rows]),
        "slope_gap_aligned": _slope(dims, [r["gap_aligned"] for r in rows]),
    }


# ---------------------------------------------------------------------------------------------------
# 3. Figure 2 on a real backbone's gap vectors


def _gap_vector(name: str, v: Any) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"gap vector of {name!r} must be a torch.Tensor, got {type(v).__name__}")
    if v.dim() != 1 or v.numel() < 2:
        raise ValueError(f"gap vector of {name!r} must be 1-D with ≥ 2 entries, got shape {tuple(v.shape)}")
    if not v.is_floating_point():
        raise ValueError(f"gap vector of {name!r} must be a real floating tensor, got {v.dtype}")
    g = v.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(g).all()):
        raise ValueError(f"gap vector of {name!r} has non-finite entries")
    if float(g.norm()) == 0.0:
        raise ValueError(f"gap vector of {name!r} is zero: it has no direction to align with")
    return g


def fig2(
    gaps: Mapping[str, torch.Tensor],
    seed: int,
    noise_eps: Sequence[float] = DEFAULT_NOISE_EPS,
    random_draws: int = 256,
) -> dict[str, Any]:
    """Figure 2 (paper §3.1) for a real backbone: alignment of random vs Gap-Init rank-1 directions.

    Why: Prop. 3.1 is about an abstract d; this shows it at the backbone's actual hooked modules. For
    each module (name → its (d_out,) gap vector g, e.g. ``GapArtifact.vector(name)``):

    - **random**: cos(b, g) for b ~ Unif(S^{d_out−1}) — what a random rank-1 B column gives. ``cos_random``
      is one draw (the one an init would use); ``mean_abs_cos_random`` is over ``random_draws`` draws,
      expected ≈ √(2/(π d_out)) (``expected_abs_cos_random``). The histogram pools all draws.
    - **gap init with noise ε**: b = normalize(g + ε·η), η ~ N(0, I) (§4.3 with a perturbed gap), for each
      ε in ``noise_eps``; ε = 0 is Gap-Init itself (cos = 1). The noise is per-coordinate N(0, 1), not
      scaled to g, so ‖εη‖ ≈ ε√d_out and cos ≈ ‖g‖ / √(‖g‖² + ε²d_out) (``cos_gap_predicted``): the same ε
      hurts a module with a small ‖g‖ or a large d_out far more. One η per module is shared by all ε
      (common random numbers), which makes cos exactly non-increasing in ε for each module while cos > 0.

    Returns ``rows`` (one per module, in the input order), per-ε means over modules and ``hist`` (edges
    over [−1, 1] and per-series bin fractions) for the plot.
    """
    seed = _as_int("seed", seed, 0)
    random_draws = _as_int("random_draws", random_draws, 1)
    if not isinstance(gaps, Mapping) or not gaps:
        raise ValueError("gaps must be a non-empty mapping of module name -> (d_out,) gap vector")
    if isinstance(noise_eps, (str, bytes)):
        raise ValueError(f"noise_eps must be a sequence of numbers, got {noise_eps!r}")
    eps = [_as_float("noise_eps entry", e, 0.0) for e in noise_eps]
    if not eps:
        raise ValueError("noise_eps is empty")

    edges = torch.linspace(-1.0, 1.0, _FIG2_BINS + 1, dtype=torch.float64)
    hist_random = torch.zeros(_FIG2_BINS, dtype=torch.float64)
    rows = []
    for name, vec in gaps.items():
        g = _gap_vector(str(name), vec)
        d = g.numel()
        g_norm = float(g.norm())
        g_hat = g / g_norm
        gen = _generator(seed, _TAG_FIG2, zlib.crc32(str(name).encode()))
        c_rand = _cos_with(g_hat, random_draws, gen)
        eta = torch.randn(d, dtype=torch.float64, generator=gen)
        cos_gap = []
        for e in eps:
            b = g + e * eta
            cos_gap.append(float(b @ g_hat) / float(b.norm()))
        hist_random += torch.histc(c_rand.clamp(-1, 1), bins=_FIG2_BINS, min=-1.0, max=1.0)
        rows.append(
            {
                "module": str(name),
                "d": d,
                "gap_norm": g_norm,
                "cos_random": float(c_rand[0]),
                "mean_abs_cos_random": float(c_rand.abs().mean()),
                "expected_abs_cos_random": expected_abs_cos(d),
                "cos_gap": cos_gap,
                "cos_gap_predicted": [g_norm / math.sqrt(g_norm**2 + e * e * d) for e in eps],
            }
        )
    n = len(rows)
    hist_gap = [
        torch.histc(
            torch.tensor([r["cos_gap"][i] for r in rows], dtype=torch.float64).clamp(-1, 1),
            bins=_FIG2_BINS,
            min=-1.0,
            max=1.0,
        )
        for i in range(len(eps))
    ]
    return {
        "seed": seed,
        "noise_eps": eps,
        "random_draws": random_draws,
        "rows": rows,
        "mean_abs_cos_random": float(np.mean([r["mean_abs_cos_random"] for r in rows])),
        "mean_cos_gap": [float(np.mean([r["cos_gap"][i] for r in rows])) for i in range(len(eps))],
        "hist": {
            "edges": [float(x) for x in edges],
            "random": [float(x) / (n * random_draws) for x in hist_random],
            "gap": [[float(x) / n for x in h] for h in hist_gap],
        },
    }


def run_diagnostics(
    out_dir: str,
    gaps: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    draws: int = 20000,
    dims: Sequence[int] = DEFAULT_DIMS,
    prop_dims: Sequence[int] = DEFAULT_PROP_DIMS,
) -> list[str]:
    """Compute Prop. 3.1, Fig. 5 and (with ``gaps``) Fig. 2, write ``diagnostics.{png,md,json}`` under
    ``out_dir`` atomically, and return summary lines for ``gapinit diagnose`` to print.

    Why: one command that shows, with numbers, the paper's argument for Gap-Init (§3.1, App. A) — at a
    synthetic d grid and, when a calibrated gap artifact is given, at the backbone's own modules.
    ``draws`` random directions per d are used for both Prop. 3.1 (at each of ``prop_dims``) and Fig. 5
    (at each of ``dims``); d·E[cos²] then has a standard error of about √(2/draws) (0.01 by default).
    """
    seed = _as_int("seed", seed, 0)
    draws = _as_int("draws", draws, 2)
    prop_dims = _as_dims("prop_dims", prop_dims, at_least=1)
    dims = _as_dims("dims", dims, at_least=2)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a directory")

    props = [prop31(d, draws, seed) for d in prop_dims]
    f5 = fig5(dims, draws, seed)
    f2 = fig2(gaps, seed) if gaps is not None else None

    p = next((x for x in props if x["d"] == 2560), props[-1])
    ok = sum(t["holds"] for t in p["tails"])
    summary = [
        f"Prop. 3.1 at d={p['d']}: d·E[cos²] = {p['d_mean_sq']:.3f} ± {p['d_mean_sq_stderr']:.3f} (expect 1), "
        f"E[cos] = {p['mean']:+.4f} (expect 0), tail bound holds at {ok}/{len(p['tails'])} ε",
        f"Fig. 5 slope: random {f5['slope_random']:+.2f} (expect -0.50), "
        f"gap-aligned {f5['slope_gap_aligned']:+.2f} (expect 0)",
    ]
    if not all(x["bound_holds"] for x in props):
        bad = [x["d"] for x in props if not x["bound_holds"]]
        summary.append(f"WARNING: Prop. 3.1 tail bound exceeded empirically at d = {bad}")
    if f2 is not None:
        noisy = ", ".join(
            f"{c:.3f} (ε={e:g})" for e, c in zip(f2["noise_eps"], f2["mean_cos_gap"], strict=True)
        )
        summary.append(
            f"Fig. 2 over {len(f2['rows'])} modules: mean |cos| random {f2['mean_abs_cos_random']:.4f}; "
            f"gap init mean cos {noisy}"
        )

    out.mkdir(parents=True, exist_ok=True)
    png = plot_png(props, f5, f2)
    payload = {
        "seed": seed,
        "draws": draws,
        "prop31": props,
        "fig5": f5,
        "fig2": f2,
        "summary": summary,
    }
    write_atomic(out / "diagnostics.png", png)
    write_atomic(out / "diagnostics.md", markdown(props, f5, f2, summary).encode())
    write_atomic(out / "diagnostics.json", (json.dumps(payload, indent=1, allow_nan=False) + "\n").encode())
    summary.append(f"wrote {', '.join(str(out / f) for f in FILES)}")
    return summary
