"""Frozen-prefix feature cache on vs off: time per training step and a whole 4-trial × 3-epoch sweep.

The backbone is a small BLIP-2 (ViT + Q-Former + OPT) whose vision prefix is as heavy, relative to its
LM, as BLIP-2 OPT-2.7B's: in FLOPs per training sample, prefix forward / LM (forward + backward of a
frozen LM with LoRA, i.e. activation gradients only, about one more forward) ≈ 1.06 for the real
model (ViT-g/14 at 224 px: ≈ 520 GFLOP; Q-Former: ≈ 14 GFLOP; OPT-2.7B on 32 image + ~16 text tokens:
≈ 252 GFLOP forward), so the prefix is about half of an uncached step. On a CPU the tiny LM runs at
about half the FLOP rate of the tiny tower (small matrices, backward overhead), so a tower sized by
FLOPs alone takes only ~35 % of a step; :func:`proportioned_config` sizes it so the prefix (image
decoding + processor + forward) takes about half of the uncached step's *time*, as in BLIP-2. Both
the FLOP ratio and the measured time share are recorded with the result.

1. **Step**: the same LoRA trial loop (gap init, AdamW, same seed and batches) in this process, data
   loader included, with the service's two collate paths (images + prefix vs cached features); the two
   runs alternate ``--repeats`` times and the medians are compared. Losses of both paths are compared too.
2. **Sweep**: ``run_sweep`` on an embedded local Ray (2 CPUs), 4 trials (2 inits × 2 seeds) × 3 epochs,
   ``train.feature_cache`` true vs false, end to end (the cached sweep's time includes building the cache;
   pretraining and calibration are shared and done before either is timed). Per-trial losses compared.

Epochs are ``--sweep-steps`` batches long (120; the synthetic set gets enough captions per image, as
COCO has 5). Each trial pays ~40-50 s of fixed cost on 2 CPUs that the cache cannot touch (Tune and
Ray Train start-up: three processes per trial, the worker importing torch/transformers/DeepSpeed, the
model load and DeepSpeed's engine), so short epochs measure that start-up rather than the cache.

    python -m benchmarks.feature_cache [--steps 20] [--repeats 3] [--sweep-steps 120] [--skip-sweep]

``--skip-sweep`` (what ``run_all`` passes, to stay within its time budget) runs the step part only and
keeps the previous file's sweep figures, marked ``carried_over``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import carried_over, machine, write_result

ROOT = Path(__file__).parents[1]

# BLIP-2 OPT-2.7B per training sample, GFLOP (see module docstring)
BLIP2_PREFIX_GFLOP = 520 + 14
BLIP2_LM_FWD_GFLOP = 252
BLIP2_RATIO = BLIP2_PREFIX_GFLOP / (2 * BLIP2_LM_FWD_GFLOP)


def _linear_flops(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def prefix_and_lm_flops(cfg, text_tokens: int = 14) -> tuple[float, float]:
    """(prefix forward, LM forward) FLOPs per sample of a Blip2Config (linear layers + attention)."""
    v, q, t = cfg.vision_config, cfg.qformer_config, cfg.text_config
    n_img = (v.image_size // v.patch_size) ** 2 + 1
    vis_layer = _linear_flops(n_img, v.hidden_size, 4 * v.hidden_size) + _linear_flops(
        n_img, v.hidden_size, 2 * v.intermediate_size
    )
    vis = v.num_hidden_layers * (vis_layer + 4 * n_img * n_img * v.hidden_size)
    nq = cfg.num_query_tokens
    qf_layer = (
        _linear_flops(nq, q.hidden_size, 4 * q.hidden_size)
        + _linear_flops(nq, q.hidden_size, 2 * q.intermediate_size)
        + _linear_flops(nq, q.hidden_size, 2 * q.hidden_size)  # cross-attention q, out
        + _linear_flops(n_img, v.hidden_size, 2 * q.hidden_size)  # cross-attention k, v over the image
    )
    qf = q.num_hidden_layers * qf_layer + _linear_flops(nq, q.hidden_size, t.hidden_size)
    seq = nq + text_tokens
    lm_layer = _linear_flops(seq, t.hidden_size, 4 * t.hidden_size) + _linear_flops(
        seq, t.hidden_size, 2 * t.ffn_dim
    )
    lm = t.num_hidden_layers * (lm_layer + 4 * seq * seq * t.hidden_size) + _linear_flops(
        seq, t.hidden_size, t.vocab_size
    )
    return float(vis + qf), float(lm)


def proportioned_config(vocab_size: int, ids: dict[str, int], image_token: int):
    """A tiny BLIP-2 whose prefix/LM FLOP ratio matches BLIP-2 OPT-2.7B's (within ~10 %)."""
    from transformers import Blip2Config

    return Blip2Config(
        vision_config={
            "hidden_size": 192,
            "intermediate_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 8,
            "initializer_range": 0.02,
        },
        qformer_config={
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "cross_attention_frequency": 1,
            "encoder_hidden_size": 192,
            "max_position_embeddings": 64,
            "vocab_size": 64,
        },
        text_config={
            "model_type": "opt",
            "vocab_size": vocab_size,
            "hidden_size": 256,
            "word_embed_proj_dim": 256,
            "ffn_dim": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "max_position_embeddings": 256,
            "dropout": 0.0,
            "pad_token_id": ids["<pad>"],
            "bos_token_id": ids["<s>"],
            "eos_token_id": ids["</s>"],
        },
        num_query_tokens=16,
        image_token_index=image_token,
    )


def build_proportioned(out: Path) -> dict:
    """Save the proportioned backbone to ``out`` (loadable as ``{name: blip2, path: out}``)."""
    from transformers import Blip2ForConditionalGeneration, BlipImageProcessorPil

    from gapinit_ray.backbones.base import build_seeded
    from gapinit_ray.backbones.blip2 import _TINY_SPECIALS, IMAGE_TOKEN, Blip2Backbone
    from gapinit_ray.backbones.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(
        _TINY_SPECIALS,
        named_special_tokens={"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"},
        model_specific_tokens={"image_token": IMAGE_TOKEN},
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _TINY_SPECIALS}
    config = proportioned_config(len(tokenizer), ids, ids[IMAGE_TOKEN])

    def _build():
        model = Blip2ForConditionalGeneration(config)
        with torch.no_grad():
            model.query_tokens.normal_(0.0, 0.02)
        return model

    model = build_seeded(_build, 0)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = ids["<pad>"], ids["<s>"], ids["</s>"]
    processor = BlipImageProcessorPil(size={"height": 64, "width": 64})
    Blip2Backbone("blip2", model, tokenizer, processor, source_id=str(out)).save(out)
    prefix, lm = prefix_and_lm_flops(config)
    return {
        "prefix_gflop_per_sample": prefix / 1e9,
        "lm_fwd_gflop_per_sample": lm / 1e9,
        "prefix_over_lm_fwd_bwd": prefix / (2 * lm),
        "blip2_opt_2_7b_prefix_over_lm_fwd_bwd": BLIP2_RATIO,
    }


def make_spec(storage: str, backbone_dir: str, *, cache: bool, name: str, steps: int, epochs: int):
    from benchmarks.trial import bench_raw
    from gapinit_ray.spec import spec_from_dict

    raw = bench_raw(storage, steps, epochs, feature_cache=cache)
    raw["name"] = name
    raw["backbones"] = [{"name": "blip2", "path": backbone_dir}]
    shapes = raw["data"]["sources"]["shapes"]
    shapes["image_size"] = 64
    # enough captions per image (each one sample, as COCO's 5) that an epoch has ``steps`` batches
    train_images = int(shapes["num_images"] * 0.8)
    shapes["captions_per_image"] = max(2, -(-steps * raw["train"]["batch_size"] // train_images))
    raw["search"] = {"axes": {"init": ["gap", "random"], "seed": [1, 2]}}
    raw["scheduler"] = {"type": "fifo", "metric": "val_loss", "mode": "min"}
    raw["resources"]["max_concurrent_trials"] = 2
    return spec_from_dict(raw)


def step_loop(spec, backbone_dir: str, artifact_path: str, cache_dir: str | None, steps: int):
    """Seconds per training step (after 2 warm-up steps) and the losses, one path."""
    from gapinit_ray.backbones import load_backbone
    from gapinit_ray.data.resolve import split_records
    from gapinit_ray.features import FeatureCache, FeatureCollate
    from gapinit_ray.gap import GapArtifact
    from gapinit_ray.inits.apply import apply_lora
    from gapinit_ray.pretrain import caption_loss
    from gapinit_ray.train import CaptionPairs, Collate

    torch.manual_seed(spec.seed)
    backbone = load_backbone("blip2", path=backbone_dir)
    model, _ = apply_lora(backbone, spec.lora, GapArtifact.load(artifact_path), spec.seed)
    backbone.pin_frozen_prefix_eval()
    model.train()
    collate = (
        FeatureCollate(backbone, FeatureCache(cache_dir), None) if cache_dir else Collate(backbone, None)
    )
    data = CaptionPairs(split_records(spec.data, spec.data.train, spec.storage))
    sampler = torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(spec.seed))
    loader = torch.utils.data.DataLoader(
        data, batch_size=spec.train.batch_size, sampler=sampler, collate_fn=collate
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.train.lr)
    torch.manual_seed(spec.seed + 1)
    if cache_dir is None:  # the share of an uncached step the prefix takes: images + processor + forward
        from gapinit_ray.data import load_image

        items = [data[i] for i in range(spec.train.batch_size)]
        backbone.image_features([load_image(p, i) for i, p, _ in items])  # warm-up
        t = time.perf_counter()
        for _ in range(3):
            backbone.image_features([load_image(p, i) for i, p, _ in items])
        prefix_s = (time.perf_counter() - t) / 3
    losses, t0 = [], None
    for step, batch in enumerate(loader):  # the loader's collate is inside the timed step
        if step == 2:
            t0 = time.perf_counter()
        if step >= steps + 2:
            break
        loss = caption_loss(model(**backbone.forward_inputs(batch)).logits, batch.labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    per_step = (time.perf_counter() - t0) / steps
    return per_step, losses, (prefix_s / per_step if cache_dir is None else None)


def step_benchmark(spec, backbone_dir: str, steps: int, repeats: int) -> dict:
    from gapinit_ray.trial import prepare_artifact, prepare_features

    artifact = prepare_artifact(spec, spec.backbones[0], backbone_dir, progress=False)
    t0 = time.perf_counter()
    cache_dir = prepare_features(spec, spec.backbones[0], backbone_dir, progress=False)
    build_s = time.perf_counter() - t0
    on, off, share = [], [], []
    for _ in range(repeats):  # alternate, so drifting machine load hits both paths alike
        s_off, l_off, sh = step_loop(spec, backbone_dir, artifact, None, steps)
        s_on, l_on, _ = step_loop(spec, backbone_dir, artifact, cache_dir, steps)
        off.append(s_off)
        on.append(s_on)
        share.append(sh)
    diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(l_on, l_off, strict=True))
    return {
        "s_per_step": {"cache_off": statistics.median(off), "cache_on": statistics.median(on)},
        "s_per_step_runs": {"cache_off": off, "cache_on": on},
        "speedup_per_step": statistics.median(off) / statistics.median(on),
        "max_rel_loss_diff": diff,
        "prefix_share_of_uncached_step": statistics.median(share),
        "cache_build_s": build_s,
        "steps": steps,
        "batch_size": spec.train.batch_size,
    }


def sweep_benchmark(storage: str, backbone_dir: str, steps: int, epochs: int) -> dict:
    import ray

    from gapinit_ray.results import ResultsStore
    from gapinit_ray.sweep import prepare, run_sweep

    specs = {
        on: make_spec(
            storage, backbone_dir, cache=on, name=f"cache-{'on' if on else 'off'}", steps=steps, epochs=epochs
        )
        for on in (False, True)
    }
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        prepare(specs[False], progress=False)  # pretraining/calibration: shared, not timed
        wall = {}
        for on in (False, True):
            t0 = time.perf_counter()
            run_sweep(specs[on], quiet=True)
            wall[on] = time.perf_counter() - t0
    finally:
        ray.shutdown()
    rows = {}
    for on, spec in specs.items():
        df = ResultsStore(spec.storage, spec.name).metrics().to_pandas()
        # the epoch-0 reports (before any step) have no train loss
        rows[on] = {(r.trial_id, r.epoch): r.train_loss for r in df.itertuples() if r.epoch > 0}
    common = sorted(set(rows[True]) & set(rows[False]))
    diff = max(abs(rows[True][k] - rows[False][k]) / max(abs(rows[False][k]), 1e-12) for k in common)
    return {
        "trials": 4,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "wall_s": {"cache_off": wall[False], "cache_on_incl_build": wall[True]},
        "speedup_end_to_end": wall[False] / wall[True],
        "reports_compared": len(common),
        "max_rel_train_loss_diff": diff,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="timed steps per step-benchmark run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweep-steps", type=int, default=120, help="steps per epoch in the sweep")
    ap.add_argument(
        "--skip-sweep", action="store_true", help="step part only; the previous sweep figures are kept"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from gapinit_ray.train import build_cpu_comm_op

    build_cpu_comm_op()  # compiled once per machine (install.sh does it): never inside a timed sweep
    with tempfile.TemporaryDirectory() as tmp:
        backbone_dir = str(Path(tmp) / "blip2-proportioned")
        flops = build_proportioned(Path(backbone_dir))
        spec = make_spec(tmp, backbone_dir, cache=True, name="steps", steps=args.steps, epochs=1)
        result = {
            "benchmark": "feature_cache",
            "backbone": "BLIP-2 (ViT 12×192 @64px, Q-Former 2×128, 16 queries, OPT 4×256), prefix share "
            "of a step as BLIP-2 OPT-2.7B's",
            "flops": flops,
            "step": step_benchmark(spec, backbone_dir, args.steps, args.repeats),
            "target": {"speedup_per_step": ">= 1.8", "speedup_end_to_end": ">= 1.5"},
            "machine": machine(),
        }
        if not args.skip_sweep:
            result["sweep"] = sweep_benchmark(tmp, backbone_dir, args.sweep_steps, 3)
        elif earlier := carried_over("feature_cache", "sweep", "the step part only (--skip-sweep)"):
            result["sweep"] = earlier
    result["speedup_per_step"] = result["step"]["speedup_per_step"]
    if "sweep" in result:
        result["speedup_end_to_end"] = result["sweep"]["speedup_end_to_end"]
    write_result("feature_cache", result)
    return result


if __name__ == "__main__":
    r = main()
    s = r["step"]
    line = (
        f"feature cache: {s['speedup_per_step']:.2f}x per step ({s['s_per_step']['cache_off'] * 1e3:.0f} → "
        f"{s['s_per_step']['cache_on'] * 1e3:.0f} ms), losses max rel diff {s['max_rel_loss_diff']:.1e}"
    )
    if "sweep" in r:
        w = r["sweep"]
        line += (
            f"; 4×3 sweep {w['speedup_end_to_end']:.2f}x end to end ({w['wall_s']['cache_off']:.0f} → "
            f"{w['wall_s']['cache_on_incl_build']:.0f} s)"
            + (" [carried over]" if "carried_over" in w else "")
        )
    print(line)
