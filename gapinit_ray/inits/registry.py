"""The init methods by name: the one list of init names, and how each maps onto peft.

No torch or peft import here, so the spec can name the allowed values cheaply
(:data:`INIT_NAMES`). Where each family is computed and applied:

* ``gap``: :mod:`~gapinit_ray.inits.gap` (the gap g) and :mod:`~gapinit_ray.inits.direction` (B[:, 0]);
* ``random-direction``: :mod:`~gapinit_ray.inits.direction` (a random unit B[:, 0], the control);
* ``random``, ``gaussian``, ``pissa``, ``olora``, ``dora``, ``mica``, ``orthogonal``: peft's own inits,
  configured by :class:`InitMethod` alone;
* ``eva``, ``corda``, ``lora_ga``: :mod:`~gapinit_ray.inits.data_driven` (peft's, fed from the
  calibration statistics of :mod:`gapinit_ray.init_stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gapinit_ray.errors import GapinitError


class LoraInitError(GapinitError):
    """Unknown init method / layer selection, bad init options, or targets that match nothing."""


@dataclass(frozen=True)
class InitMethod:
    """How one init method maps onto peft, and what we overwrite after peft's own init.

    ``direction``: ``"gap"`` / ``"random"`` = overwrite B[:, 0] with that unit direction and zero A;
    ``None`` = keep peft's init. ``mutates_base``: peft rewrites W₀ (PiSSA/OLoRA/CorDA/LoRA-GA store
    W₀ − s·B₀A₀). ``zero_delta``: the method promises ΔW = 0 at step 0 (A = 0 or B = 0), checked like
    Gap-Init's. ``stats``: the calibration statistic it reads (:mod:`gapinit_ray.init_stats`).
    """

    name: str
    peft_init: bool | str
    use_dora: bool = False
    direction: str | None = None
    mutates_base: bool = False
    summary: str = ""
    zero_delta: bool = False
    stats: str | None = None


INIT_METHODS: dict[str, InitMethod] = {
    m.name: m
    for m in (
        InitMethod("gap", True, direction="gap", summary="B[:,0] = g/‖g‖, A = 0 (paper Alg. 1)"),
        InitMethod("random", True, summary="peft default: A kaiming-uniform, B = 0"),
        InitMethod("gaussian", "gaussian", summary="peft: A ~ N(0, 1/r²), B = 0"),
        # exact SVD: deterministic, so PeftModel.from_pretrained recomputes the same residual W₀ − B₀A₀
        InitMethod("pissa", "pissa", mutates_base=True, summary="peft PiSSA: top-r SVD of W₀ (exact)"),
        InitMethod("olora", "olora", mutates_base=True, summary="peft OLoRA: QR of W₀"),
        InitMethod("dora", True, use_dora=True, summary="peft DoRA with the default LoRA init"),
        InitMethod("random-direction", True, direction="random", summary="control: B[:,0] random, A = 0"),
        # B frozen by peft's MiCA variant: only A trains
        InitMethod(
            "mica",
            "mica",
            zero_delta=True,
            summary="peft MiCA: B = r smallest left sing. vectors of W₀, A = 0",
        ),
        InitMethod("orthogonal", "orthogonal", summary="peft: A, B from one r×r orthogonal matrix (ΔW ≠ 0)"),
        InitMethod(
            "eva", "eva", zero_delta=True, stats="moments", summary="peft EVA: A = top PCs of inputs, B = 0"
        ),
        InitMethod(
            "corda",
            "corda",
            mutates_base=True,
            stats="moments",
            summary="peft CorDA: SVD of W₀·C (input cov.)",
        ),
        InitMethod(
            "lora_ga", "lora_ga", mutates_base=True, stats="grads", summary="peft LoRA-GA: SVD of ∂L/∂W₀"
        ),
    )
}

#: every init method's name, in registry order (what ``lora.init`` may be)
INIT_NAMES: tuple[str, ...] = tuple(INIT_METHODS)


def get_init_method(name: str) -> InitMethod:
    """The registry entry of ``name``; an unknown name is an error listing the known ones."""
    try:
        return INIT_METHODS[name]
    except KeyError:
        raise LoraInitError(f"unknown init method {name!r}; known: {', '.join(INIT_METHODS)}") from None
