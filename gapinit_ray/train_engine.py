"""The engine around a trial's training loop: learning-rate schedule, optimizer and DeepSpeed config,
the CPU communication op build, peak memory, and the collectives the workers share (validation loss
averaged over ranks, object gather and broadcast, ZeRO-3 gathering of root parameters).
"""

from __future__ import annotations

import math
import os
import resource
from typing import Any

import torch

from gapinit_ray.pretrain import caption_loss


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str):
    """LR multiplier per optimizer step: linear warm-up, then cosine / linear decay or constant."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress

    return f


def prefer_env_ninja() -> None:
    """Put this Python environment's ``bin`` first on PATH when it holds ``ninja``.

    torch compiles DeepSpeed's CPU op with whichever ``ninja`` PATH finds, and two ninja versions keep
    incompatible build logs (1.13 hashes commands differently from 1.11): a venv used both activated and
    not (its ninja vs the system's) would recompile the op, about a minute, at every switch."""
    import sys

    bindir = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(bindir, "ninja")):
        path = os.environ.get("PATH", "")
        if path.split(os.pathsep)[0] != bindir:
            os.environ["PATH"] = bindir + os.pathsep + path


def build_cpu_comm_op() -> str:
    """Compile DeepSpeed's shared-memory CPU collective op now; returns what happened, in words.

    DeepSpeed's CPU backend compiles this C++ op the first time a process initializes distributed
    training and caches it for the user (``~/.cache/torch_extensions``). That first compile takes about a
    minute on a 2-core machine and would land in the first trials of the first sweep; ``scripts/install.sh``
    calls this on machines without a GPU so it happens at install time instead. A GPU machine never needs it.
    """
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    prefer_env_ninja()
    from deepspeed.comm.torch import build_shm_op

    try:
        return "built" if build_shm_op() is not None else "not used by this DeepSpeed build"
    except Exception as e:  # no compiler: DeepSpeed falls back to plain gloo collectives
        return f"not built ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def deepspeed_config(train, world_size: int, on_gpu: bool) -> dict:
    """DeepSpeed config from the spec's ``train`` section (fp32 on CPU whatever ``precision`` says)."""
    precision = train.precision
    if precision == "auto":
        precision = "bf16" if on_gpu else "fp32"
    if not on_gpu:
        precision = "fp32"
    zero: dict[str, Any] = {"stage": train.zero.stage}
    if train.zero.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": "cpu"}
    if train.zero.offload_param != "none":
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "zero_force_ds_cpu_optimizer": False,  # a torch AdamW: no JIT-compiled CPU Adam needed
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def make_optimizer(train, params):
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=0.9, weight_decay=train.weight_decay)
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def root_params_gathered(model: torch.nn.Module):
    """Under ZeRO-3, the parameters the model owns directly (not through a submodule), gathered for the
    block: ``generate`` reads some of them outside any ``forward`` (BLIP-2's ``query_tokens``), where
    ZeRO-3's hooks do not fetch them. Until the first training step has made such small parameters
    persistent, they are still partitioned (an epoch-0 evaluation). A collective: every rank enters it.
    A no-op without ZeRO-3."""
    import contextlib

    params = [p for p in model.parameters(recurse=False) if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def worker_host() -> str:
    """``hostname/node id`` of this (rank 0) worker: which node of the cluster ran the trial."""
    import socket

    from gapinit_ray.raycompat import ray_initialized

    node = None
    if ray_initialized():
        import ray

        node = ray.get_runtime_context().get_node_id()
    return f"{socket.gethostname()}/{node[:12]}" if node else socket.gethostname()


def mean_all(values: list[float], world: int) -> float:
    total = torch.tensor([sum(values), float(len(values))], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return float(total[0] / total[1].clamp_min(1))


@torch.no_grad()
def validation_loss(engine, val_set, collate, batch_size: int, device, rank: int, world: int) -> float:
    """Teacher-forced caption loss on the (fixed) validation records, averaged over all ranks."""
    model = engine.module
    was_training = model.training
    model.eval()
    idx = list(range(rank, len(val_set), world))
    total, count = 0.0, 0
    for lo in range(0, len(idx), batch_size):
        batch = collate([val_set[i] for i in idx[lo : lo + batch_size]]).to(device)
        n = int((batch.labels[:, 1:] != -100).sum())
        total += (
            float(caption_loss(engine(**collate.backbone.forward_inputs(batch)).logits, batch.labels)) * n
        )
        count += n
    model.train(was_training)
    t = torch.tensor([total, float(count)], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return float(t[0] / t[1].clamp_min(1))


def gather_objects(obj: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
