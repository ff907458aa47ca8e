"""Trial step overhead: the service's Ray Train + DeepSpeed path vs the same loop in a plain process.

Three paths train the same tiny backbone with the same LoRA init, data, batch size and optimizer on one
CPU thread:

* **service**: ``build_trainer(...).fit()``, a Ray Train job whose worker runs ``TrialWorker``;
* **same loop**: the same ``TrialWorker`` (DeepSpeed engine and all) run in this process, no Ray: the
  headline ratio service / same loop is what the service machinery costs per step;
* **torch loop**: a hand-written loop, plain torch AdamW, no DeepSpeed: same loop / torch loop is what
  DeepSpeed's engine itself costs per step on a model this small.

Steps/s are taken after warm-up (epoch 1 is warm-up; epochs 2..N are timed, training steps only,
evaluation excluded). The synthetic set is sized so an epoch has ``--steps`` steps: a timed window of a
few seconds, long enough that the shared machine's background blips average out (at 32 steps, ~1.7 s,
single epochs varied by ±15 %). The service and same-loop figures are what ``TrialWorker`` reports
(``samples_per_s``); the service worker's peak RSS is its reported ``peak_memory_mb``.

Per ZeRO stage in ``--zero`` (0: the quickstart's; 2: ZeRO-2's partitioned optimizer and gradient
buckets) the paths run one after the other: same loop, service, same loop again, torch loop. The same
loop's figure is the median over both of its runs' timed epochs, so a drift of the machine's load
during the stage weighs on both sides of the headline ratio; the two runs' ratio is recorded as the
drift seen.

    python -m benchmarks.trial [--steps 96] [--epochs 5] [--zero 0,2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import machine, write_result

ROOT = Path(__file__).parents[1]


def bench_raw(
    storage: str, steps: int, epochs: int, feature_cache: bool = False, num_images: int = 320
) -> dict:
    """The benchmarks' one-trial spec as a dict: the quickstart on ``num_images`` synthetic images,
    ZeRO-2, batch 16, a tiny evaluation."""
    raw = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    raw["storage"] = storage
    raw["backbones"] = [{"name": "tiny-blip2", "pretrain": False}]
    raw["data"]["sources"]["shapes"]["num_images"] = num_images
    raw["data"]["val"]["limit"] = 4
    raw["calibration"].update({"num_samples": 32, "workers": 1})
    train = {"epochs": epochs, "batch_size": 16, "max_steps_per_epoch": steps, "zero": {"stage": 2}}
    raw["train"].update({**train, "feature_cache": feature_cache})
    raw["eval"].update({"metrics": ["bleu4"], "final_metrics": [], "generation": {"max_new_tokens": 4}})
    raw["scheduler"] = {"type": "fifo", "metric": "val_bleu4"}
    raw["resources"].update({"workers_per_trial": 1, "cpus_per_worker": 1})
    return raw


def make_spec(storage: str, steps: int, epochs: int, zero: int = 2):
    """Feature cache off: both paths run the same work (images + prefix); only the machinery differs."""
    from gapinit_ray.spec import spec_from_dict

    # 80 % of the images are train, 2 captions each: ``steps`` batches of 16 need steps * 10 images
    raw = bench_raw(storage, steps, epochs, num_images=max(320, steps * 10))
    raw["train"]["zero"] = {"stage": zero}
    return spec_from_dict(raw)


def plain_loop(spec, artifact_path: str, epochs: int) -> list[float]:
    """The same training steps, hand-written in this process: no Ray, no DeepSpeed (plain torch
    AdamW and gradient clipping). Returns steps/s per epoch."""
    from gapinit_ray.backbones import load_backbone
    from gapinit_ray.data.resolve import split_records
    from gapinit_ray.gap import GapArtifact
    from gapinit_ray.inits.apply import apply_lora
    from gapinit_ray.pretrain import caption_loss
    from gapinit_ray.train import CaptionPairs, Collate

    torch.manual_seed(spec.seed)
    backbone = load_backbone("tiny-blip2")
    model, _ = apply_lora(backbone, spec.lora, GapArtifact.load(artifact_path), spec.seed)
    backbone.pin_frozen_prefix_eval()  # as the service's workers do
    model.train()
    data = CaptionPairs(split_records(spec.data, spec.data.train, spec.storage))
    sampler = torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(spec.seed))
    loader = torch.utils.data.DataLoader(
        data, batch_size=spec.train.batch_size, sampler=sampler, collate_fn=Collate(backbone, None)
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.train.lr)
    rates = []
    for _ in range(epochs):
        t0, n = time.perf_counter(), 0
        for step, batch in enumerate(loader):
            if step >= spec.train.max_steps_per_epoch:
                break
            loss = caption_loss(model(**batch.inputs).logits, batch.labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            n += 1
        rates.append(n / (time.perf_counter() - t0))
    return rates


def same_loop(spec, artifact_path: str, name: str = "same-loop") -> list[float]:
    """The service's own per-worker loop (``TrialWorker``: DeepSpeed engine, reports, checkpoints) run in
    this process as a one-process gloo group, without Ray. Returns steps/s per epoch as it reports."""
    import os
    import socket

    from gapinit_ray.plan import trial_spec
    from gapinit_ray.train import TrialContext, TrialWorker

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ["MASTER_PORT"] = str(port)
    params = {"init": "gap", "seed": 42}
    tspec, bspec = trial_spec(spec, params)
    ctx = TrialContext(
        spec=tspec,
        backbone=bspec,
        backbone_path=None,
        artifact_path=artifact_path,
        trial_id=name,
        out_dir=os.path.join(spec.storage, name),
    )
    reports: list[dict] = []
    TrialWorker(ctx, lambda metrics, checkpoint=None: reports.append(metrics), lambda: None).run()
    # the epoch-0 report (the model at init, before any step) has no throughput
    return [float(r["samples_per_s"]) / spec.train.batch_size for r in reports if "samples_per_s" in r]


def service_path(spec, artifact: str) -> tuple[list[float], float]:
    """Steps/s of every epoch and peak RSS (MiB), as the Ray Train + DeepSpeed worker reported them
    (read back from the results store the reports were written to)."""
    from gapinit_ray.results import ResultsStore
    from gapinit_ray.sweep import ResultsCallback
    from gapinit_ray.trial import build_trainer

    params = {"init": "gap", "seed": 42}
    callback = ResultsCallback(spec.storage, spec.name, "bench", params)
    trainer = build_trainer(spec, params, callbacks=[callback], artifact_path=artifact, progress=False)
    result = trainer.fit()
    if result.error:
        raise result.error
    rows = ResultsStore(spec.storage, spec.name).metrics().to_pandas().sort_values("epoch")
    rows = rows[rows["epoch"] > 0]  # the epoch-0 report (before any step) has no throughput
    rates = [float(v) / spec.train.batch_size for v in rows["samples_per_s"]]
    return rates, float(rows["peak_memory_mb"].max())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=96, help="steps per epoch (timed window per epoch)")
    ap.add_argument("--epochs", type=int, default=5, help="epoch 1 is warm-up; the others are timed")
    ap.add_argument(
        "--zero", default="0,2", help="ZeRO stages of the service path, each against the plain loop"
    )
    args = ap.parse_args(argv)
    import ray

    from gapinit_ray.trial import prepare_artifact

    torch.set_num_threads(1)
    by_stage, rss = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            for stage in [int(z) for z in args.zero.split(",")]:
                # a storage per stage: the same trial name in one storage would resume the last run
                spec = make_spec(f"{tmp}/zero{stage}", args.steps, args.epochs, stage)
                artifact = prepare_artifact(spec, spec.backbones[0], None, progress=False)
                # the same loop runs before and after the service (a fresh out dir each time: a second
                # run in the first's would resume its checkpoint), so a drift of the machine's load
                # over the stage weighs on both sides, and shows as the spread of its two runs
                same_runs = [same_loop(spec, artifact, "same-loop-1")]
                service_rates, rss[f"service_worker_zero{stage}"] = service_path(spec, artifact)
                same_runs.append(same_loop(spec, artifact, "same-loop-2"))
                torch_rates = plain_loop(spec, artifact, args.epochs)
                same_rates = [r for run in same_runs for r in run[1:]]
                service, same, plain = (
                    statistics.median(r) for r in (service_rates[1:], same_rates, torch_rates[1:])
                )
                by_stage[f"zero{stage}"] = {
                    "steps_per_s": {"service": service, "same_loop": same, "torch_loop": plain},
                    "steps_per_s_by_epoch": {
                        "service": service_rates,
                        "same_loop": same_runs,
                        "torch_loop": torch_rates,
                    },
                    # the two same-loop runs' medians, later / earlier: the machine's drift in between
                    "same_loop_second_over_first_steps_per_s": statistics.median(same_runs[1][1:])
                    / statistics.median(same_runs[0][1:]),
                    "service_over_same_loop_time_per_step": same / service,
                    "same_loop_over_torch_loop_time_per_step": plain / same,
                    "service_over_torch_loop_time_per_step": plain / service,
                }
        finally:
            ray.shutdown()
    rss["plain_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "benchmark": "trial",
        "backbone": "tiny-blip2 (LoRA r=1 gap init, top-2 layers), 1 worker, 1 thread, feature cache off",
        "batch_size": spec.train.batch_size,
        "steps_per_epoch": args.steps,
        "by_zero_stage": by_stage,
        "service_over_same_loop_time_per_step": {
            k: v["service_over_same_loop_time_per_step"] for k, v in by_stage.items()
        },
        "same_loop_over_torch_loop_time_per_step": {
            k: v["same_loop_over_torch_loop_time_per_step"] for k, v in by_stage.items()
        },
        "peak_rss_mb": rss,
        "target": {"service_over_same_loop_time_per_step": "<= 1.10"},
        "machine": machine(),
    }
    write_result("trial", result)
    return result


if __name__ == "__main__":
    r = main()
    for stage, v in r["by_zero_stage"].items():
        s = v["steps_per_s"]
        print(
            f"trial {stage}: steps/s after warm-up service {s['service']:.1f}, same loop without Ray "
            f"{s['same_loop']:.1f}, torch loop {s['torch_loop']:.1f}; time/step service/same loop "
            f"{v['service_over_same_loop_time_per_step']:.2f}x, same loop/torch loop "
            f"{v['same_loop_over_torch_loop_time_per_step']:.2f}x; "
            f"peak RSS worker {r['peak_rss_mb'][f'service_worker_{stage}']:.0f} MiB"
        )
