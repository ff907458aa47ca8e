"""peft's LoRA layers as the init methods see them: names, the (A, B) weights, seeded draws."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"


def lora_modules(peft_model: torch.nn.Module) -> dict[str, Any]:
    """Base-model module name -> peft ``LoraLayer`` (peft prefixes names with ``base_model.model.``)."""
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix(PEFT_PREFIX): m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


def lora_weights(layer: Any) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """(A ``(r, d_in)``, B ``(d_out, r)``) of a LoraLayer."""
    return layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight


@contextmanager
def seeded(seed: int, model: torch.nn.Module):
    """``torch.manual_seed(seed)`` for peft's draws, restoring the caller's CPU/CUDA RNG afterwards."""
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def standard_strides(layer: Any) -> None:
    """Give A and B row-major strides. peft's MiCA slices B = U[:, -r:] from a column-major SVD factor:
    at r = 1 that (d_out, 1) view counts as contiguous but keeps stride (1, d_out), and DeepSpeed's
    parameter broadcast (``p.data.view(torch.uint8)``) refuses it."""
    for p in lora_weights(layer):
        if p.stride() != torch.empty(p.shape, device="meta").stride():
            p.data = torch.empty(p.shape, dtype=p.dtype, device=p.device).copy_(p.data)


def effective_weight(layer: Any) -> torch.Tensor:
    """W_res + s·B·A ``(d_out, d_in)`` float64 of a (non-DoRA) LoraLayer: the weight its forward applies."""
    a, b = lora_weights(layer)
    s = layer.scaling[ADAPTER]
    return layer.base_layer.weight.detach().double() + s * (b.detach().double() @ a.detach().double())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float(a @ b / (a.norm() * b.norm()))
