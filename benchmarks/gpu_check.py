"""GPU readiness: the real-size path on one CUDA GPU, in one short prepared run (no Ray needed).

    python -m benchmarks.gpu_check --out benchmarks/results            # on a GPU machine, < 8 minutes
    python -m benchmarks.gpu_check --dry-run --out /tmp/gpu_check      # the same code on CPU, tiny, < 1 min

What it measures, each side by side with a hand-written plain loop on the same model and data:

1. **Build**: the real-size BLIP-2 OPT-2.7B architecture from a config written here (EVA ViT-g: 39
   layers, width 1408, 224 px / patch 14; Q-Former: 12 layers, 32 queries; OPT-2.7B: 32 layers,
   d = 2560, ffn 10240), random weights, bf16, built directly on the device (nothing is downloaded).
2. **Calibration**: 256 synthetic pairs at 224 px through the project's shard function (the one the Ray
   path runs on each actor: separate image-only and text-only passes with hooks on the LoRA targets and
   each layer's hidden state) vs a plain loop of the same forwards without hooks: samples/s both ways,
   and the calibration time against the model build time.
3. **Training**: 50 steps of rank-1 Gap-Init LoRA on the paper's targets (top-6 layers, batch 32)
   through the trial's own worker loop (``TrialWorker``: DeepSpeed ZeRO-2, bf16, one process, no Ray)
   with the frozen-prefix feature cache on and off, and a plain torch loop (peft + AdamW): step time,
   tokens/s, peak memory and **MFU**: FLOPs of one step (counted with ``torch.utils.flop_counter``) per
   step time, against the device's dense bf16 peak from :data:`PEAK_BF16_TFLOPS` (named in the JSON) and
   against a bf16 matmul measured here.

Everything goes into one JSON (``gpu_check.json`` under ``--out``) with the device, driver, CUDA and
torch versions. ``--dry-run`` runs the very same functions on CPU with the tiny preset's sizes, a few
samples and steps, so the script is exercised in CI while no GPU is around; its JSON has every field the
GPU run fills. Targets (README, Benchmarks): calibration of 256 pairs <= 2x the model build time; the
service's step time <= 1.10x the plain loop's; MFU >= 35 % with the feature cache on.

The machine that may be lent has torch, transformers, peft, pyarrow, ... but no Ray, DeepSpeed, pydantic
or pycocoevalcap; ``benchmarks/gpu_wheels.sh`` fetches the ones the check needs (DeepSpeed's source,
hjson, pydantic, pydantic-core: a few MB) and prints the install-and-run line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' datasheets; matched as a
#: substring of ``torch.cuda.get_device_name()``, first match wins
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
}

#: BLIP-2 OPT-2.7B (Salesforce/blip2-opt-2.7b) sizes; the tiny preset's for --dry-run
REAL_SIZES = {
    "vision": {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39,
               "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "qkv_bias": True},
    "qformer": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                "num_attention_heads": 12, "cross_attention_frequency": 2, "encoder_hidden_size": 1408},
    "text": {"vocab_size": 50272, "hidden_size": 2560, "word_embed_proj_dim": 2560, "ffn_dim": 10240,
             "num_hidden_layers": 32, "num_attention_heads": 32, "max_position_embeddings": 2048},
    "num_query_tokens": 32,
}  # fmt: skip
FIELDS = (
    "device",
    "dry_run",
    "versions",
    "peak_bf16_tflops",
    "peak_source",
    "matmul_tflops_measured",
    "build",
    "calibration",
    "training",
    "targets",
    "checks",
)


def device_info() -> tuple[str, dict]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("transformers", "peft", "deepspeed"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as e:  # not installed: say so in the JSON
            versions[mod] = f"missing ({type(e).__name__})"
    if not torch.cuda.is_available():
        return "cpu", versions
    versions["cuda"] = torch.version.cuda
    try:
        versions["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        versions["driver"] = None
    return torch.cuda.get_device_name(0), versions


def peak_tflops(device: str) -> tuple[float | None, str]:
    for name, peak in PEAK_BF16_TFLOPS.items():
        if name in device:
            return peak, f"datasheet dense bf16 of {name}"
    return None, "device not in PEAK_BF16_TFLOPS: MFU against the measured matmul only"


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_backbone(dry_run: bool, device: torch.device, dtype: torch.dtype):
    """The BLIP-2 architecture at real size (or the tiny preset's sizes), random weights, on ``device``.
    The tokenizer and image processor come from the tiny preset (built in code, no download)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    from gapinit_ray.backbones import load_backbone
    from gapinit_ray.backbones.blip2 import Blip2Backbone

    tiny = load_backbone("tiny-blip2")
    if dry_run:
        config = tiny.model.config
        image_size = config.vision_config.image_size
    else:
        tok = tiny.tokenizer
        ids = {
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        }
        config = Blip2Config(
            vision_config=REAL_SIZES["vision"],
            qformer_config=REAL_SIZES["qformer"],
            text_config={"model_type": "opt", **REAL_SIZES["text"], **ids},
            num_query_tokens=REAL_SIZES["num_query_tokens"],
            image_token_index=tiny.model.config.image_token_index,
        )
        image_size = REAL_SIZES["vision"]["image_size"]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Blip2ForConditionalGeneration(config)
            with torch.no_grad():
                model.query_tokens.normal_(0.0, 0.02)
    finally:
        torch.set_default_dtype(previous)
    processor = tiny.image_processor
    processor.size = {"height": image_size, "width": image_size}
    name = "tiny-blip2" if dry_run else "blip2"
    return Blip2Backbone(
        name, model, tiny.tokenizer, processor, source_id=f"gpu-check:{name}:random"
    ), image_size


def synthetic_items(root: Path, n: int, image_size: int) -> list[tuple[str, str, str]]:
    from gapinit_ray.data import generate_synthetic, load_caption_set

    ds = generate_synthetic(
        str(root / "data"), variant="restyle", num_images=max(n, 8) * 2, seed=0, image_size=image_size
    )
    records = load_caption_set("karpathy", ds, None, "train")
    return [(str(r.image_id), r.image_path, r.captions[0]) for r in records][:n]


def calibration(backbone, items, batch_size: int, device: torch.device) -> dict:
    """The project's shard function (what each Ray actor runs) vs a plain loop of the same forwards."""
    from gapinit_ray.calibration_job import ShardPayload, _run_shard
    from gapinit_ray.data import load_image

    targets = list(backbone.default_target_modules)
    payload = ShardPayload(items, targets, True, batch_size, None, "separate")
    _run_shard(
        backbone, ShardPayload(items[:batch_size], targets, True, batch_size, None, "separate")
    )  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    shard = _run_shard(backbone, payload)
    _sync(device)
    service_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(items), batch_size):
            part = items[lo : lo + batch_size]
            images = [load_image(p, sid) for sid, p, _ in part]
            image_batch = backbone.build_image_batch(images).to(device)
            backbone.model(**image_batch.inputs)
            text_batch = backbone.build_text_batch([c for _, _, c in part]).to(device)
            backbone.text_forward(text_batch)
    _sync(device)
    plain_s = time.perf_counter() - t0
    n = len(items)
    return {
        "samples": n,
        "batch_size": batch_size,
        "service_s": service_s,
        "plain_s": plain_s,
        "samples_per_s": {"service": n / service_s, "plain": n / plain_s},
        "service_over_plain": service_s / plain_s,
        "hooked_modules": len(shard.z_v),
    }


def _dist_env() -> None:
    if "MASTER_PORT" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


def train_spec(storage: str, backbone_dir: str, dry_run: bool, steps: int, batch: int, images: int):
    from gapinit_ray.spec import load_spec

    root = Path(__file__).parents[1]
    return load_spec(
        root / "sweeps" / "quickstart.yaml",
        [
            f"storage={storage}",
            f"backbones=[{{name: {'tiny-blip2' if dry_run else 'blip2'}, path: {backbone_dir}, "
            f"dtype: {'float32' if dry_run else 'bfloat16'}}}]",
            f"data.sources.shapes.num_images={images}",
            f"data.sources.shapes.image_size={32 if dry_run else 224}",
            "data.val.limit=2",
            f"calibration.num_samples={min(256, images // 2)}",
            "lora.layers.top_k=6",
            f"train.batch_size={batch}",
            "train.grad_accum=1",
            "train.epochs=1",
            f"train.max_steps_per_epoch={steps}",
            "train.zero.stage=2",
            f"train.precision={'fp32' if dry_run else 'bf16'}",
            # caption metrics need pycocoevalcap, which the lent GPU machine lacks: they are left out
            # there (with a warning), and FIFO on val_loss needs none
            "eval.metrics=[bleu4]",
            "eval.final_metrics=[]",
            "eval.generation.max_new_tokens=2",
            "scheduler={type: fifo, metric: val_loss, mode: min}",
        ],
    )


def service_training(spec, backbone_dir: str, artifact: str, cache: str | None) -> dict:
    """The trial's worker loop (DeepSpeed ZeRO-2) in this process: its own epoch report's figures."""
    from gapinit_ray.plan import trial_spec
    from gapinit_ray.train import TrialContext, TrialWorker

    _dist_env()
    tspec, bspec = trial_spec(spec, {"init": "gap", "seed": 42})
    ctx = TrialContext(
        spec=tspec,
        backbone=bspec,
        backbone_path=backbone_dir,
        artifact_path=artifact,
        trial_id=f"gpu-check-{'cache' if cache else 'nocache'}",
        out_dir=os.path.join(spec.storage, "out"),
        feature_cache=cache,
    )
    reports: list[dict] = []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    # no Ray on the lent GPU machine: the checkpoint is handed over as its directory
    for attempt in range(3):
        try:
            TrialWorker(
                ctx, lambda m, checkpoint=None: reports.append(m), lambda: None, checkpoint_from=str
            ).run()
            break
        except Exception as e:  # the free port _dist_env picked was taken before the rendezvous bound it
            if "EADDRINUSE" not in str(e) or attempt == 2:
                raise
            reports.clear()
            os.environ.pop("MASTER_PORT", None)
            _dist_env()
    trained = [r for r in reports if "samples_per_s" in r]
    last = trained[-1]
    steps = spec.train.max_steps_per_epoch
    step_s = spec.train.batch_size / last["samples_per_s"]
    return {
        "steps": steps,
        "step_s": step_s,
        "samples_per_s": last["samples_per_s"],
        "tokens_per_s": last["tokens_per_s"],
        "peak_memory_mb": last["peak_memory_mb"],
    }


def plain_training(spec, backbone_dir: str, artifact: str, device: torch.device, dtype: torch.dtype) -> dict:
    """The same steps by hand: peft LoRA + torch AdamW, no DeepSpeed; FLOPs of one step counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from gapinit_ray.backbones import load_backbone
    from gapinit_ray.data.resolve import split_records
    from gapinit_ray.gap import GapArtifact
    from gapinit_ray.inits.apply import apply_lora
    from gapinit_ray.pretrain import caption_loss
    from gapinit_ray.train import CaptionPairs, Collate

    torch.manual_seed(spec.seed)
    bb = load_backbone(
        spec.backbones[0].name, path=backbone_dir, dtype=spec.backbones[0].dtype, device=str(device)
    )
    model, _ = apply_lora(bb, spec.lora, GapArtifact.load(artifact), spec.seed)
    bb.pin_frozen_prefix_eval()
    model.train()
    data = CaptionPairs(split_records(spec.data, spec.data.train, spec.storage))
    loader = torch.utils.data.DataLoader(
        data, batch_size=spec.train.batch_size, shuffle=True, collate_fn=Collate(bb, None)
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.train.lr)
    batches = []
    for batch in loader:
        batches.append(batch.to(device))
        if len(batches) >= spec.train.max_steps_per_epoch:
            break

    def step(batch) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = caption_loss(model(**batch.inputs).logits, batch.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:
        step(batches[0])
    flops = counter.get_total_flops()
    # what the frozen vision prefix costs of that step (skipped when the feature cache is on)
    prefix = FlopCounterMode(display=False)
    with prefix, torch.no_grad():
        bb.model.get_image_features(pixel_values=batches[0].inputs["pixel_values"])
    prefix_flops = prefix.get_total_flops()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    tokens = 0
    for batch in batches:
        step(batch)
        tokens += int(batch.inputs["attention_mask"].sum())
    _sync(device)
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else math.nan
    return {
        "steps": len(batches),
        "step_s": elapsed / len(batches),
        "tokens_per_s": tokens / elapsed,
        "peak_memory_mb": peak,
        "flops_per_step": flops,
        "flops_per_step_feature_cache_on": flops - prefix_flops,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results", help="directory for gpu_check.json")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: the same code path, < 1 min")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 50; dry run 3)")
    args = ap.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --dry-run to exercise the code on CPU", file=sys.stderr)
        return {}
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() and not dry else "cpu")
    device = torch.device("cpu" if dry else "cuda")
    dtype = torch.float32 if dry else torch.bfloat16
    steps = args.steps or (3 if dry else 50)
    batch = 4 if dry else 32
    n_cal = 16 if dry else 256
    name, versions = device_info()
    peak, source = peak_tflops(name) if not dry else (None, "dry run: no peak")
    matmul = measured_matmul_tflops(device, dtype, 512 if dry else 8192)
    result: dict[str, Any] = {
        "device": name,
        "dry_run": dry,
        "versions": versions,
        "peak_bf16_tflops": peak,
        "peak_source": source,
        "matmul_tflops_measured": matmul,
    }
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        t0 = time.perf_counter()
        backbone, image_size = build_backbone(dry, device, dtype)
        _sync(device)
        build_s = time.perf_counter() - t0
        params = sum(p.numel() for p in backbone.model.parameters())
        result["build"] = {"seconds": build_s, "parameters": params, "image_size": image_size}
        items = synthetic_items(work, n_cal, image_size)
        cal = calibration(backbone, items, 4 if dry else 32, device)
        cal["calibration_over_build"] = cal["service_s"] / build_s
        result["calibration"] = cal
        # the trial loop loads its backbone from a directory, as on a cluster
        backbone_dir = str(work / "backbone")
        t0 = time.perf_counter()
        backbone.save(backbone_dir)
        result["build"]["save_s"] = time.perf_counter() - t0
        del backbone
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        spec = train_spec(str(work / "store"), backbone_dir, dry, steps, batch, images=max(steps * batch, 64))
        from gapinit_ray.plan import trial_spec
        from gapinit_ray.trial import prepare_artifact, prepare_features

        tspec, bspec = trial_spec(spec, {"init": "gap", "seed": 42})
        artifact = prepare_artifact(tspec, bspec, backbone_dir, progress=False, use_ray=False)
        cache = prepare_features(tspec, bspec, backbone_dir, progress=False)
        training = {
            "feature_cache_off": service_training(spec, backbone_dir, artifact, None),
            "feature_cache_on": service_training(spec, backbone_dir, artifact, cache),
            "plain_loop": plain_training(spec, backbone_dir, artifact, device, dtype),
        }
        plain = training["plain_loop"]
        # FLOPs executed per step (forward, backward through the adapted layers, optimizer), counted on
        # the plain loop's first step; with the feature cache on the vision prefix does not run
        for key in ("feature_cache_off", "feature_cache_on", "plain_loop"):
            t = training[key]
            flops = plain[
                "flops_per_step_feature_cache_on" if key == "feature_cache_on" else "flops_per_step"
            ]
            t["tflops_per_s"] = flops / t["step_s"] / 1e12
            t["mfu_vs_matmul"] = t["tflops_per_s"] / matmul
            t["mfu"] = t["tflops_per_s"] / peak if peak else None
        on = training["feature_cache_on"]
        training["service_over_plain"] = (
            training["feature_cache_off"]["step_s"] / training["plain_loop"]["step_s"]
        )
        training["batch_size"] = batch
        result["training"] = training
        result["targets"] = {
            "calibration_over_build": "<= 2",
            "service_over_plain": "<= 1.10",
            "mfu_feature_cache_on": ">= 0.35",
        }
        result["checks"] = {
            "calibration_over_build": cal["calibration_over_build"] <= 2,
            "service_over_plain": training["service_over_plain"] <= 1.10,
            "mfu_feature_cache_on": (on["mfu"] or 0) >= 0.35,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    print(summary(result))
    return result


def summary(r: dict) -> str:
    t, c = r["training"], r["calibration"]
    mfu = t["feature_cache_on"]["mfu"]
    return (
        f"gpu_check on {r['device']}{' (dry run)' if r['dry_run'] else ''}: build {r['build']['seconds']:.1f} s "
        f"({r['build']['parameters'] / 1e9:.2f} B params); calibration {c['samples']} pairs "
        f"{c['samples_per_s']['service']:.1f}/s (plain {c['samples_per_s']['plain']:.1f}/s, "
        f"{c['calibration_over_build']:.2f}x build); step {t['feature_cache_on']['step_s'] * 1e3:.0f} ms cache on, "
        f"{t['feature_cache_off']['step_s'] * 1e3:.0f} ms off, plain {t['plain_loop']['step_s'] * 1e3:.0f} ms "
        f"(service/plain {t['service_over_plain']:.2f}); MFU cache on "
        f"{'n/a' if mfu is None else f'{mfu:.1%}'} ({r['peak_source']}); checks {r['checks']}"
    )


if __name__ == "__main__":
    main()
