"""Gap-Init's B[:, 0] and the random-direction control's (paper Alg. 1, App. E): compute u, then apply.

Compute: :func:`perturb` (the gap g, optionally noised, as a unit vector) or :func:`random_unit`.
Apply: :func:`overwrite_direction` sets A = 0 and B = [c·u, N(0, c²/d_out)...] in place. Draws use one
CPU generator per (seed, module, purpose) (:func:`module_generator`), independent of which other
modules are adapted.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch


def module_generator(seed: int, name: str, purpose: str) -> torch.Generator:
    """CPU generator for one (seed, module, purpose): stable across runs, processes and module sets."""
    digest = hashlib.sha256(f"{seed}|{name}|{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def perturb(g: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """Unit vector normalize(g + ε·η), η ~ N(0, I_d) (paper App. E), float64 ``(d,)``.

    The noise is added to the raw g, as App. E writes it, so its effect depends on ‖g‖ and d:
    E[cos(g', g)] ≈ ‖g‖ / sqrt(‖g‖² + ε²d) for large d. ``eps = 0`` draws nothing.
    """
    g = g.detach().double().cpu()
    if eps > 0:
        g = g + eps * torch.randn(g.shape, generator=generator, dtype=torch.float64)
    return g / g.norm()


def random_unit(d: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform random unit vector in R^d (float64): the random-direction control's B[:, 0]."""
    v = torch.randn(d, generator=generator, dtype=torch.float64)
    return v / v.norm()


def overwrite_direction(
    a: torch.Tensor, b: torch.Tensor, direction: str, g: torch.Tensor | None, opts: Any, seed: int, name: str
) -> None:
    """A = 0; B[:, 0] = c·u; B[:, 1:] ~ N(0, c²/d_out) (expected column norm c, like column 0)."""
    d_out, r = b.shape
    c = float(a.double().norm()) if opts.norm == "match-default" else float(opts.norm or 1.0)
    if direction == "gap":
        u = perturb(g, opts.noise_eps, module_generator(seed, name, "noise"))
    else:
        u = random_unit(d_out, module_generator(seed, name, "direction"))
    new_b = torch.empty(d_out, r, dtype=torch.float64)
    new_b[:, 0] = c * u
    if r > 1:
        gen = module_generator(seed, name, "columns")
        new_b[:, 1:] = torch.randn(d_out, r - 1, generator=gen, dtype=torch.float64) * (c / math.sqrt(d_out))
    b.copy_(new_b.to(device=b.device, dtype=b.dtype))
    a.zero_()
