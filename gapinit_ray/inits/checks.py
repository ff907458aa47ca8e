"""The init invariants, checked on a calibration batch right after the adapters are built."""

from __future__ import annotations

import math
from typing import Any

import torch

from gapinit_ray.errors import GapinitError
from gapinit_ray.gap import GapArtifact
from gapinit_ray.inits.adapters import cosine, lora_modules, lora_weights
from gapinit_ray.inits.gap import gap_vector
from gapinit_ray.inits.registry import LoraInitError, get_init_method
from gapinit_ray.inits.report import InitReport


class InitCheckError(GapinitError):
    """An init invariant (ΔW = 0, cos(B[:,0], g) = 1, non-zero A gradient) failed: a bug or a wrong artifact."""


def init_checks(
    backbone: Any, peft_model: Any, report: InitReport, batch: Any, artifact: GapArtifact | None
) -> dict[str, Any]:
    """Verify the init on a calibration ``batch`` (built with ``with_labels=True``); store in ``report.checks``.

    Run in eval mode (LoRA dropout off, so the checks are deterministic), gradients cleared afterwards:

    1. gap / random-direction: max |logits(peft) − logits(adapters disabled)| == 0 (A = 0 ⇒ ΔW = 0), and
       for gap without noise cos(B[:, 0], g) ≥ 1 − tol (tol 1e-6 for fp32 adapters, 1e-3 for half).
    2. every method: one backward of the caption LM loss; ‖∇A‖ and ‖∇B‖ over all adapters. Gap-Init must
       give A a non-zero gradient (∂L/∂A = Bᵀ(∂L/∂h)xᵀ) and B exactly zero (∂L/∂B ∝ A x = 0).

    Raises:
        InitCheckError: an enforced check failed (a bug, or an artifact that does not fit the model).
    """
    method = get_init_method(report.method)
    if batch.labels is None:
        raise LoraInitError("init_checks needs a labelled batch: build_batch(..., with_labels=True)")
    if method.direction == "gap" and artifact is None:
        raise LoraInitError("init_checks of a gap init needs the GapArtifact it was built from")
    adapted = lora_modules(peft_model)
    lm = [n for n in report.modules if n.startswith(backbone.lm_layers_path + ".")]
    failures: list[str] = []
    checks: dict[str, Any] = {"max_abs_logit_diff": None}  # None for PiSSA/OLoRA: adapters off ≠ W₀
    was_training = peft_model.training
    peft_model.eval()
    try:
        with torch.no_grad():
            if not method.mutates_base:
                out = peft_model(**backbone.forward_inputs(batch)).logits.float()
                with peft_model.disable_adapter():
                    diff = (out - peft_model(**backbone.forward_inputs(batch)).logits.float()).abs().max()
                checks["max_abs_logit_diff"] = float(diff)
        with torch.enable_grad():
            peft_model.zero_grad(set_to_none=True)
            loss = peft_model(**backbone.forward_inputs(batch), labels=batch.labels).loss
            loss.backward()
        grads = {}
        for name, layer in adapted.items():
            grads[name] = [
                0.0 if p.grad is None else float(p.grad.double().norm()) for p in lora_weights(layer)
            ]
        peft_model.zero_grad(set_to_none=True)
    finally:
        peft_model.train(was_training)
    checks["loss"] = loss.item()
    checks["grad_norm_A"] = math.sqrt(sum(ga**2 for ga, _ in grads.values()))
    checks["grad_norm_B"] = math.sqrt(sum(gb**2 for _, gb in grads.values()))
    if not math.isfinite(checks["loss"]):
        failures.append(f"the caption loss is {checks['loss']}")
    promised = method.direction is not None or method.zero_delta  # A = 0 (gap, control, MiCA), B = 0 (EVA)
    if promised and checks["max_abs_logit_diff"] != 0.0:
        failures.append(f"ΔW ≠ 0: logits differ by {checks['max_abs_logit_diff']:.3g}")
    if report.base_reconstruction_error is not None:  # W_res + s·B₀A₀ = W₀ up to rounding
        err = report.base_reconstruction_error
        checks["max_abs_weight_error"] = err
        half = any(p.dtype in (torch.float16, torch.bfloat16) for p in peft_model.parameters())
        tol = (1e-2 if half else 1e-4) * max(1.0, report.base_max_abs or 0.0)
        if not err <= tol:
            failures.append(f"W_res + s·B₀A₀ differs from W₀ by {err:.3g} > {tol:.3g}")
    if method.direction is not None:  # gap / random-direction: A = 0 on every LM module
        checks["zero_A_grad_modules"] = [n for n in lm if grads[n][0] == 0.0]
        lm_ga = math.sqrt(sum(grads[n][0] ** 2 for n in lm))
        if not (lm_ga > 0 and math.isfinite(lm_ga)):
            failures.append(f"‖∇A‖ over the LM adapters is {lm_ga} (must be finite and > 0)")
        nonzero_b = [n for n in lm if grads[n][1] != 0.0]
        if nonzero_b:
            failures.append(f"∇B ≠ 0 with A = 0 at {nonzero_b[0]}")
    if method.direction == "gap" and report.init_options["noise_eps"] == 0.0:
        from gapinit_ray.spec import InitOptions

        opts = InitOptions.model_validate(report.init_options)
        cos = {}
        for name in lm:
            b = lora_weights(adapted[name])[1]
            cos[name] = cosine(b[:, 0], gap_vector(artifact, backbone, name, b.shape[0], opts))
        tol = 1e-6 if b.dtype in (torch.float32, torch.float64) else 1e-3
        worst = min(cos, key=cos.__getitem__)
        checks["min_alignment"] = cos[worst]
        if cos[worst] < 1 - tol:
            failures.append(f"cos(B[:,0], g) of {worst} is {cos[worst]:.8f} < 1 − {tol:g}")
    checks["passed"] = not failures
    report.checks = checks
    if failures:
        raise InitCheckError(f"init check failed for {method.name} on {backbone.name}: {'; '.join(failures)}")
    return checks
