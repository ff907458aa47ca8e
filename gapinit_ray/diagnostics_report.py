"""The output of ``gapinit diagnose``: the figure (``diagnostics.png``) and the text (``diagnostics.md``).

Pure rendering of the dicts :mod:`gapinit_ray.diagnostics` computes (:func:`~gapinit_ray.diagnostics.prop31`,
:func:`~gapinit_ray.diagnostics.fig5`, :func:`~gapinit_ray.diagnostics.fig2`); no sampling here.
"""

from __future__ import annotations

import io
import math

import numpy as np

# colours of the noisy-gap curves of the Fig. 2 panel (the un-noised gap is green)
NOISY_COLORS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")


def plot_png(props: list[dict], f5: dict, f2: dict | None) -> bytes:
    """The 2- or 3-panel PNG. matplotlib is imported here only (it is slow to import and the rest of the
    package never needs it); Figure + FigureCanvasAgg avoid pyplot's global backend state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 3 if f2 is not None else 2
    fig = Figure(figsize=(5.2 * panels, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)

    ax = axes[0]
    for i, p in enumerate(props):
        color = f"C{i}"
        ax.stairs(p["hist"]["density"], p["hist"]["edges"], color=color, label=f"d = {p['d']}")
        r = 1.0 / math.sqrt(p["d"])
        ax.axvline(r, color=color, ls=":", lw=1)
        ax.axvline(-r, color=color, ls=":", lw=1)
    ax.set_xlabel("cos(u, b), b ~ Unif(S$^{d-1}$)")
    ax.set_ylabel("density")
    ax.set_title("Prop. 3.1: random directions (dotted: ±1/√d)")
    ax.legend(fontsize=8)

    ax = axes[1]
    dims = np.asarray(f5["dims"], dtype=float)
    rand = np.asarray([r["random"] for r in f5["rows"]])
    gap = np.asarray([r["gap_aligned"] for r in f5["rows"]])
    ax.loglog(dims, rand, "o-", color="tab:red", label=f"random (slope {f5['slope_random']:+.2f})")
    ax.loglog(dims, gap, "s-", color="tab:green", label=f"gap-aligned (slope {f5['slope_gap_aligned']:+.2f})")
    ax.loglog(dims, rand[0] * (dims / dims[0]) ** -0.5, "k--", lw=1, label="d$^{-1/2}$ reference")
    ax.set_xlabel("d")
    ax.set_ylabel("|⟨b, ĝ⟩|")
    ax.set_title("Fig. 5: Gaussian translation model")
    ax.legend(fontsize=8)

    if f2 is not None:
        ax = axes[2]
        edges = f2["hist"]["edges"]
        ax.stairs(f2["hist"]["random"], edges, fill=True, alpha=0.5, color="tab:red", label="random")
        for i, (e, h) in enumerate(zip(f2["noise_eps"], f2["hist"]["gap"], strict=True)):
            label = "gap init (ε = 0)" if e == 0 else f"gap init, ε = {e:g}"
            color = "tab:green" if e == 0 else NOISY_COLORS[i % len(NOISY_COLORS)]
            ax.stairs(h, edges, color=color, lw=1.5, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("cos(b, g)")
        ax.set_ylabel("fraction")
        ax.set_title(f"Fig. 2: {len(f2['rows'])} modules")
        ax.legend(fontsize=8)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def markdown(props: list[dict], f5: dict, f2: dict | None, summary: list[str]) -> str:
    out = ["# Orthogonality diagnostics", "", *[f"- {s}" for s in summary], ""]
    out += [
        "## Proposition 3.1 (paper §3.1)",
        "",
        "| d | draws | E[cos] | d·E[cos²] (expect 1) | ± | E\\|cos\\| | theory Γ(d/2)/(√π Γ((d+1)/2)) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in props:
        out.append(
            f"| {p['d']} | {p['draws']} | {p['mean']:+.5f} | {p['d_mean_sq']:.4f} | {p['d_mean_sq_stderr']:.4f} "
            f"| {p['mean_abs']:.5f} | {p['expected_mean_abs']:.5f} |"
        )
    out += ["", "Tail P(\\|cos\\| > ε) vs 2·exp(−(d−1)ε²/2):", ""]
    out += ["| d | ε·√d | ε | empirical | bound | holds |", "|---:|---:|---:|---:|---:|:---:|"]
    for p in props:
        for t in p["tails"]:
            out.append(
                f"| {p['d']} | {t['eps_sqrt_d']:.2f} | {t['eps']:.5f} | {t['empirical']:.5f} "
                f"| {t['bound']:.5f} | {'yes' if t['holds'] else '**NO**'} |"
            )
    out += [
        "",
        "## Figure 5 (paper App. A): Gaussian translation model",
        "",
        f"n = {f5['n_samples']} samples per cluster, σ = {f5['sigma']:g}, ‖g‖ = {f5['gap_norm']:g}, "
        f"{f5['draws']} random draws per d.",
        "",
        "| d | random \\|⟨b,ĝ⟩\\| | theory | gap-aligned | theory |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in f5["rows"]:
        out.append(
            f"| {r['d']} | {r['random']:.5f} | {r['random_predicted']:.5f} "
            f"| {r['gap_aligned']:.5f} | {r['gap_aligned_predicted']:.5f} |"
        )
    out += ["", f"Log-log slope: random {f5['slope_random']:+.3f} (expect −0.5), "
            f"gap-aligned {f5['slope_gap_aligned']:+.3f} (expect 0)."]  # fmt: skip
    if f2 is not None:
        eps_cols = " | ".join(f"cos ε={e:g}" for e in f2["noise_eps"])
        out += [
            "",
            "## Figure 2 (paper §3.1): backbone modules",
            "",
            "Noise η ~ N(0, I) per coordinate, so cos ≈ ‖g‖/√(‖g‖² + ε²d).",
            "",
            f"| module | d | ‖g‖ | cos random | E\\|cos\\| random | √(2/(πd)) | {eps_cols} |",
            "|---|---:|---:|---:|---:|---:|" + "---:|" * len(f2["noise_eps"]),
        ]
        for r in f2["rows"]:
            cg = " | ".join(f"{c:.4f}" for c in r["cos_gap"])
            out.append(
                f"| `{r['module']}` | {r['d']} | {r['gap_norm']:.4g} | {r['cos_random']:+.4f} "
                f"| {r['mean_abs_cos_random']:.4f} | {r['expected_abs_cos_random']:.4f} | {cg} |"
            )
    return "\n".join(out) + "\n"
