"""One trial: the per-worker training loop (Ray Train + DeepSpeed ZeRO) and the launcher around it.

A trial = one (backbone, init, rank, seed, hyperparameters) fine-tune. :func:`train_loop_per_worker` runs
on every Ray Train worker: build the frozen backbone, apply the LoRA init (before the DeepSpeed engine is
made), build the engine from the spec (ZeRO 0-3, offload, bf16/fp16 on GPU, fp32 on CPU with gloo),
cosine schedule with warm-up, gradient accumulation and clipping, and a seeded data order. Every report
carries train/val loss, caption metrics, learning rate, throughput and peak memory, plus a checkpoint
(the adapter in peft format and the DeepSpeed optimizer/scheduler state) from which a restarted worker
group resumes exactly where it stopped.

Pairing across inits (paper-style seed comparisons): the data order comes from a ``DistributedSampler``
seeded by the trial seed, and the torch RNG is re-seeded after the init, so the same seed gives the same
batches and the same dropout stream whatever the init method.

The data side (datasets, collate, seeded loader) is :mod:`gapinit_ray.train_data`; the engine side
(schedule, optimizer, DeepSpeed config, collectives, validation loss) is :mod:`gapinit_ray.train_engine`.
Their names stay importable from here.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gapinit_ray.names import ADAPTER_DIR, VAL, split_metric, val_metric
from gapinit_ray.pretrain import caption_loss
from gapinit_ray.train_data import CaptionPairs, Collate, QAPairs, augment_image, pairs_of, train_loader
from gapinit_ray.train_engine import (
    broadcast,
    build_cpu_comm_op,
    deepspeed_config,
    gather_objects,
    lr_lambda,
    make_optimizer,
    mean_all,
    peak_memory_mb,
    prefer_env_ninja,
    root_params_gathered,
    validation_loss,
    worker_host,
)

if TYPE_CHECKING:
    from gapinit_ray.seedgroup.trial_side import MemberRun
    from gapinit_ray.spec import BackboneSpec, SweepSpec

__all__ = [  # the data and engine names stay importable from here, where callers have always found them
    "ADAPTER_DIR",
    "CaptionPairs",
    "Collate",
    "QAPairs",
    "TrialContext",
    "TrialWorker",
    "augment_image",
    "build_cpu_comm_op",
    "deepspeed_config",
    "lr_lambda",
    "make_optimizer",
    "pairs_of",
    "train_loader",
    "train_loop_per_worker",
    "validation_loss",
]

TRAINER_STATE = "trainer_state.json"
#: How often a run holding at a seed-group rung asks whether its group was decided (see _past_rung).
HOLD_POLL_S = 1.0
#: how long a member at a rung holds its run for siblings whose Train run is still starting
HOLD_STARTING_GRACE_S = 120.0
TRAIN_RUNS = "train_runs.jsonl"  # one line per Train run of a trial (TrialWorker._log_run)
DS_TAG = "ds"


# --------------------------------------------------------------------------------------- the loop


@dataclass
class TrialContext:
    """What one worker needs, resolved by the launcher: the trial's validated specs (handed over as
    objects, never re-validated by a worker) and paths, not the sweep's YAML."""

    spec: SweepSpec  # the trial's spec (its axis values applied; plan.plan_trial validated it)
    backbone: BackboneSpec  # the backbone it trains
    backbone_path: str | None  # pretrained tiny preset dir, or the spec's path
    artifact_path: str | None  # GapArtifact dir (None when the init does not need one)
    trial_id: str
    out_dir: str  # where eval captions are written
    # End this run after the report at epoch >= stop_at (a seed-group rung); the next run of the same
    # trial continues from its checkpoint. None: train to the end.
    stop_at: float | None = None
    # frozen-prefix feature cache dir (gapinit_ray.features) the data loaders read; None: run the prefix
    feature_cache: str | None = None
    # a seed-group member: at stop_at the run asks the scheduler's state whether the group was promoted
    # at once and then goes on instead of ending, or holds there while the group's others train (_past_rung)
    member: MemberRun | None = None
    # fault points where a worker kills itself once (gapinit_ray.faults; recovery tests, chaos runs)
    faults: list[str] | None = None
    # the trial's reports go to the sweep's results store: a restart re-delivers a report it lacks
    results_store: bool = False


def _distributed_setup() -> tuple[int, int]:
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return rank, world


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker entry point: ``config = {"ctx": TrialContext}`` (pickled as is)."""
    import ray.train

    TrialWorker(config["ctx"], ray.train.report, ray.train.get_checkpoint).run()


class TrialWorker:
    """State of one Ray Train worker for one trial; :meth:`run` reads top-down."""

    def __init__(self, ctx: TrialContext, report, get_checkpoint, checkpoint_from=None) -> None:
        """``report(metrics, checkpoint=...)`` and ``get_checkpoint()`` as Ray Train's; ``checkpoint_from``
        turns a checkpoint directory into what ``report`` takes (default: Ray Train's
        ``Checkpoint.from_directory``; a plain process without Ray can pass ``str``)."""
        self.ctx, self._report, self._get_checkpoint = ctx, report, get_checkpoint
        if checkpoint_from is None:
            from ray.train import Checkpoint

            checkpoint_from = Checkpoint.from_directory
        self._checkpoint_from = checkpoint_from
        self.spec, self.bspec = ctx.spec, ctx.backbone
        # cost accounting (gapinit_ray.results.cost): the first report of a run counts from the start
        # of this worker process (start-up, model load, DeepSpeed set-up), each later one from the last
        import psutil

        self._cost_mark = (psutil.Process().create_time(), 0.0)  # (wall clock, process CPU time)

    def setup(self) -> None:
        import deepspeed

        from gapinit_ray.backbones import load_backbone
        from gapinit_ray.data.resolve import split_records
        from gapinit_ray.evaluate import eval_records
        from gapinit_ray.gap import GapArtifact
        from gapinit_ray.inits.apply import apply_lora
        from gapinit_ray.inits.checks import init_checks
        from gapinit_ray.inits.tracking import reference_gaps

        spec, train, seed = self.spec, self.spec.train, self.spec.seed
        on_gpu = torch.cuda.is_available()
        if not deepspeed.comm.is_initialized():
            if not on_gpu:
                prefer_env_ninja()  # the ninja install.sh compiled DeepSpeed's CPU op with
            deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
        self.rank, self.world = _distributed_setup()
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")

        torch.manual_seed(seed)
        b = self.bspec
        self.backbone = load_backbone(b.name, path=self.ctx.backbone_path, revision=b.revision, dtype=b.dtype)
        self.backbone.model.to(self.device)
        artifact = GapArtifact.load(self.ctx.artifact_path) if self.ctx.artifact_path else None
        model, init_report = apply_lora(self.backbone, spec.lora, artifact, seed)
        # the frozen prefix never trains: no dropout there, so its outputs are deterministic (and cacheable)
        pinned = self.backbone.pin_frozen_prefix_eval()
        self.artifact = artifact
        # per-module reference gaps for the alignment tracked at every report (before ZeRO partitions)
        self.gaps = reference_gaps(self.backbone, spec.lora, artifact, model)

        self.train_set = pairs_of(split_records(spec.data, spec.data.train, spec.storage))
        # (metric prefix, records): the in-task split ("val") first, then the zero-shot transfer sets
        self.eval_sets = [
            (name, eval_records(split_records(spec.data, ref, spec.storage), spec.eval.subset))
            for name, ref in [(VAL, spec.eval_ref()), *spec.eval.transfer.items()]
        ]
        self.val_records = self.eval_sets[0][1]
        self.val_set = pairs_of(self.val_records)
        if self.ctx.feature_cache:
            from gapinit_ray.features import FeatureCache, FeatureCollate

            self.collate = FeatureCollate(
                self.backbone, FeatureCache(self.ctx.feature_cache), train.prompt, train.question_prompt
            )
            self.val_collate = self.collate
        else:
            self.collate = Collate(
                self.backbone, train.prompt, train.question_prompt, train.augment, seed + self.rank
            )
            self.val_collate = Collate(self.backbone, train.prompt, train.question_prompt)
        self.sampler, self.loader = train_loader(
            self.train_set, self.collate, train.batch_size, seed, self.world, self.rank
        )
        first = self.val_collate(
            [self.train_set[i] for i in range(min(len(self.train_set), train.batch_size))]
        )
        init_checks(self.backbone, model, init_report, first.to(self.device), artifact)
        self.checks = init_report.to_dict()  # includes the checks just run
        self.checks["frozen_eval_modules"] = pinned
        self.checks["feature_cache"] = self.ctx.feature_cache

        self.steps_per_epoch = min(len(self.loader), train.max_steps_per_epoch or len(self.loader))
        total = math.ceil(self.steps_per_epoch / train.grad_accum) * train.epochs
        optimizer = make_optimizer(train, [p for p in model.parameters() if p.requires_grad])
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(total, int(train.warmup_ratio * total), train.schedule)
        )
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(train, self.world, on_gpu),
        )

    def resume(self) -> tuple[int, int]:
        """Load the latest checkpoint, if any; return (epoch, step in epoch) to continue from."""
        self.micro_steps = 0
        self.last_metrics: dict[str, Any] | None = None
        ckpt = self._get_checkpoint()
        self.resumed = ckpt is not None
        if ckpt is None:
            return 0, 0
        with ckpt.as_directory() as d:
            self.engine.load_checkpoint(d, tag=DS_TAG, load_module_strict=False)
            state = json.loads((Path(d) / TRAINER_STATE).read_text())
        self.micro_steps = state["micro_steps"]
        self.last_metrics = state.get("metrics")  # the report this checkpoint went with
        return state["epoch"], state["step_in_epoch"]

    def run(self) -> None:
        self.setup()
        start_epoch, start_step = self.resume()
        train = self.spec.train
        self._seed_rng(start_epoch, start_step)
        every = train.report_every if isinstance(train.report_every, int) else None
        stop_at = self.ctx.stop_at
        self._log_run(start_epoch, start_step, stop_at)
        self._tell_started()
        self._fault("setup")
        self._reset_meters()
        if not self.resumed:
            # epoch 0: the backbone with its LoRA at init (ΔW = 0 for the methods that promise it), so
            # every arm's curve starts from the same measured point and training's effect is visible
            self.report(0.0, 0, 0)
        at_rung = stop_at is not None and start_step == 0 and start_epoch >= stop_at
        if self.resumed and not at_rung:
            self._redeliver_lost_report()
        if at_rung:
            stop_at, end = self._restarted_at_rung(start_epoch, stop_at)
            if end:
                return
        for epoch in range(start_epoch, train.epochs):
            self.sampler.set_epoch(epoch)
            self.engine.train()
            self._reset_meters()
            skip = start_step if epoch == start_epoch else 0
            for step, batch in enumerate(self.loader):
                if step >= self.steps_per_epoch:
                    break
                if step < skip:  # resuming mid-epoch: the sampler order is the same, skip what was done
                    continue
                self._train_step(batch)
                done = step + 1
                if done == max(1, self.steps_per_epoch // 2):
                    self._fault("mid_epoch", epoch + 1)
                if (
                    every
                    and done < self.steps_per_epoch
                    and self.micro_steps % (every * train.grad_accum) == 0
                ):
                    value = epoch + done / self.steps_per_epoch
                    self.report(value, epoch, done)
                    stop_at, end = self._past_rung(value, stop_at, (epoch, done))
                    if end:
                        return
            self.report(epoch + 1, epoch + 1, 0)
            stop_at, end = self._past_rung(epoch + 1, stop_at, (epoch + 1, 0))
            if end:
                return

    def _seed_rng(self, epoch: int, step: int) -> None:
        # the same seed => the same dropout stream (and augmentation draws) whatever the init consumed
        # from the RNG, and whether the trial got to (epoch, step) in one Train run or restarted there
        # from a checkpoint: reseeded at the start of a run and after every report (a checkpoint)
        torch.manual_seed(self.spec.seed * 1000 + self.rank + 7919 * epoch + step)
        rng = getattr(self.collate, "rng", None)
        if rng is not None:
            rng.seed(f"{self.spec.seed}:{self.rank}:{epoch}:{step}")

    def _fault(self, point: str, epoch: float | None = None) -> None:
        from gapinit_ray.faults import REPORT_SETTLE_S, maybe_die

        settle = REPORT_SETTLE_S if point == "after_report" else 0.0
        maybe_die(self.ctx.faults, point, self.ctx.out_dir, self.rank, epoch, settle)

    def _restarted_at_rung(self, epoch: int, stop_at: float) -> tuple[float | None, bool]:
        """This run starts from a checkpoint already at its rung ``stop_at``: a worker died while the
        run held there or right after the rung's report, or the driver died after it.

        If the scheduler recorded that report (the state knows the trial's value there), Ray Train
        delivered it: do not report it again; take up the hold where it was (:meth:`_past_rung`: go on
        if the group was promoted meanwhile, end if it was stopped). If not, the report was lost: report
        it again, the very numbers the checkpoint went with (a new evaluation would rewrite the stored
        row with no training figures), and end. Returns (the epoch to stop at now, end this run?)."""
        gate = self._rung_gate()
        recorded = gate is not None and gate.recorded(epoch)
        if broadcast(recorded, self.world):
            return self._past_rung(float(epoch), stop_at, (epoch, 0))
        if self.last_metrics is not None:
            self._report(dict(self.last_metrics))
        else:  # a checkpoint from before the metrics were kept in it: evaluate again
            self.report(epoch, epoch, 0)
        return stop_at, True

    def _redeliver_lost_report(self) -> None:
        """This run starts from a checkpoint whose report never reached the results store: the driver or
        the Train controller died between the checkpoint's upload and the report's delivery (seen: a
        sweep's driver killed right after a trial's epoch-0 report). Report it again, the very numbers
        the checkpoint went with; else that epoch's row would be missing for good. A report the store
        has is not repeated (a restart at a seed-group rung has its own rule: ``_restarted_at_rung``)."""
        if not self.ctx.results_store or self.last_metrics is None or self.last_metrics.get("epoch") is None:
            return
        missing = False
        if self.rank == 0:
            missing = not self._row_stored(float(self.last_metrics["epoch"]))
        if broadcast(missing, self.world):
            self._report(dict(self.last_metrics))

    def _row_stored(self, epoch: float) -> bool:
        """Whether the results store has this trial's row at ``epoch`` (no store: no)."""
        from gapinit_ray.results import ResultsStore
        from gapinit_ray.results._fs import ResultsError

        try:
            table = ResultsStore(self.spec.storage, self.spec.name).metrics(
                columns=["epoch"], filter={"trial_id": self.ctx.trial_id}
            )
        except (ResultsError, OSError):
            return False
        return any(abs(e - epoch) < 1e-9 for e in table.column("epoch").to_pylist() if e is not None)

    def _log_run(self, epoch: int, step: int, stop_at: float | None) -> None:
        """One line per Train run of the trial in ``<out_dir>/train_runs.jsonl``: where it started and
        the epoch it was to stop at (seed-group rungs), appended by rank 0 (``None``: to the end)."""
        if self.rank != 0:
            return
        os.makedirs(self.ctx.out_dir, exist_ok=True)
        line = {"start_epoch": epoch, "start_step": step, "stop_at": stop_at, "time": time.time()}
        with open(os.path.join(self.ctx.out_dir, TRAIN_RUNS), "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def _past_rung(
        self, value: float, stop_at: float | None, resume_at: tuple[int, int]
    ) -> tuple[float | None, bool]:
        """After the report at ``value``: (the epoch to stop at now, end this run?). ``resume_at``: the
        (epoch, step) a restart from this report's checkpoint would start at.

        At a seed-group rung (``value >= stop_at``) rank 0 waits for the scheduler to record the report;
        if that decided the group and promoted it (this member reported last), every rank goes on to the
        next rung in this run instead of ending it and starting a new Train run from the checkpoint.
        While the group is undecided but its other members still to report are all running (they hold
        Train slots, :meth:`~gapinit_ray.seedgroup.trial_side.RungGate.may_hold`; one still starting counts for the first
        ``HOLD_STARTING_GRACE_S`` of the hold), the run holds at the rung,
        rank 0 asking again every ``HOLD_POLL_S`` and telling the other ranks each time (no collective
        waits longer than that), and goes on or ends once the group is decided.
        """
        if stop_at is None or value < stop_at:
            return stop_at, False
        from gapinit_ray.seedgroup.trial_side import HOLD

        held = time.perf_counter()
        gate = self._rung_gate()
        while True:
            plan = None
            if gate is not None:
                plan = gate.after_rung(value, hold=lambda: self._may_hold(gate, time.perf_counter() - held))
            if self.world > 1:
                import torch.distributed as dist

                box = [plan]
                dist.broadcast_object_list(box, src=0, device=self.device)
                plan = box[0]
            if plan != HOLD:
                break
            self._fault("hold")
            time.sleep(HOLD_POLL_S)
        if plan is None:
            return stop_at, True
        self._seed_rng(*resume_at)  # as a restart from the checkpoint would
        self.t0 += time.perf_counter() - held  # a mid-epoch hold is not training time
        return plan.stop_at, False

    def _rung_gate(self):
        """Rank 0 of a seed-group member: its view of the group's decisions (None elsewhere)."""
        member = self.ctx.member
        if self.rank != 0 or member is None:
            return None
        if getattr(self, "_gate", None) is None:
            from gapinit_ray.seedgroup.trial_side import RungGate

            self._gate = RungGate(member.state_path, member.tune_id)
        return self._gate

    def _tell_started(self) -> None:
        """Rank 0 of a seed-group member: tell the sweep's slot actor this run has its workers (others
        of the group at a rung may hold theirs while it trains, see _past_rung)."""
        if self.rank == 0 and self.ctx.member is not None:
            from gapinit_ray.seedgroup.slots import tell_started

            tell_started(self.ctx.member.slots, self.ctx.member.tune_id)

    def _may_hold(self, gate, held_s: float) -> bool:
        """The rung hold's hook, rank 0 ``held_s`` into a hold: are the group's members still to report
        there all training, or (for the first ``HOLD_STARTING_GRACE_S``) starting their Train run with
        a slot? The slot actor knows; without it (gone, busy) the run ends, as without holding."""
        from gapinit_ray.seedgroup.slots import slot_holders

        holders = slot_holders(self.ctx.member.slots if self.ctx.member else None)
        if holders is None:
            return False
        return gate.may_hold(*holders, held_s, HOLD_STARTING_GRACE_S)

    def _cost_since_last_report(self) -> dict[str, float]:
        """``device_s`` (on GPU: wall time x the GPUs the trial's workers hold; on CPU: the workers'
        process CPU time, summed over ranks), ``wall_s`` (this rank's), ``samples`` and ``tokens``
        trained on (all ranks) since the last report of this run. A collective: every rank calls it."""
        now = (time.time(), time.process_time())
        wall, cpu = now[0] - self._cost_mark[0], now[1] - self._cost_mark[1]
        self._cost_mark = now
        totals = torch.tensor([cpu, float(self.samples), float(self.tokens)], dtype=torch.float64)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(totals)
        cpu_all, samples, tokens = (float(x) for x in totals)
        if torch.cuda.is_available():
            device = wall * self.world * (self.spec.resources.gpus_per_worker or 1.0)
        else:
            device = cpu_all
        return {"device_s": device, "wall_s": wall, "samples": samples, "tokens": tokens}

    def _reset_meters(self) -> None:
        self.t0, self.losses, self.samples, self.tokens = time.perf_counter(), [], 0, 0

    def _train_step(self, batch) -> None:
        batch = batch.to(self.device)
        loss = caption_loss(self.engine(**self.backbone.forward_inputs(batch)).logits, batch.labels)
        self.engine.backward(loss)
        self.engine.step()
        self.micro_steps += 1
        self.losses.append(float(loss.detach()))
        self.samples += len(batch)
        self.tokens += int(batch.inputs["attention_mask"].sum())

    def report(self, epoch_value: float, next_epoch: int, next_step: int) -> None:
        """Evaluate, checkpoint (every rank writes its ZeRO shard; rank 0 the adapter), report."""
        from gapinit_ray.evaluate import evaluate_split
        from gapinit_ray.inits.tracking import adapter_stats

        spec, rank, world = self.spec, self.rank, self.world
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        trained = bool(self.losses) or epoch_value > 0  # the epoch-0 report has no training to show
        metrics = {
            "epoch": epoch_value,
            "train_loss": mean_all(self.losses, world) if trained else None,
            val_metric("loss"): validation_loss(
                self.engine, self.val_set, self.val_collate, spec.eval.batch_size, self.device, rank, world
            ),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "samples_per_s": self.samples * world / elapsed if trained else None,
            "tokens_per_s": self.tokens * world / elapsed if trained else None,
            "peak_memory_mb": peak_memory_mb(),
            "worker_host": worker_host(),
            "optimizer_steps": self.micro_steps // spec.train.grad_accum,
            # cos(B[:,0], g) over the gap-carrying modules, mean ‖A‖_F / ‖B‖_F (every rank: ZeRO-3 gathers)
            **adapter_stats(self.engine.module, self.gaps),
        }
        eval_spec = spec.eval
        if next_epoch >= spec.train.epochs and next_step == 0:
            self._fault("final_eval")
        if spec.eval.final_metrics and next_epoch >= spec.train.epochs and next_step == 0:
            # the last report: also the metrics kept for the end (METEOR, SPICE: each starts Java)
            extra = [m for m in spec.eval.final_metrics if m not in eval_spec.metrics]
            eval_spec = spec.eval.model_copy(update={"metrics": [*eval_spec.metrics, *extra]})
        for name, records in self.eval_sets:
            # the in-task split writes into epoch_<e>/, a transfer set into epoch_<e>/<name>/
            out_dir = os.path.join(self.ctx.out_dir, f"epoch_{epoch_value:g}", "" if name == VAL else name)
            with root_params_gathered(self.backbone.model):
                scores = evaluate_split(
                    self.engine.module,
                    self.backbone,
                    records,
                    eval_spec,
                    prompt=spec.train.prompt,
                    question_prompt=spec.train.question_prompt,
                    rank=rank,
                    world_size=world,
                    gather=gather_objects if world > 1 else None,
                    out_dir=out_dir if rank == 0 else None,
                )
            metrics.update({split_metric(name, k): v for k, v in (broadcast(scores, world) or {}).items()})
        # the init report (alignment, ΔW = 0, gradient norms) goes with the epoch-0 report only
        metrics["init_checks"] = json.dumps(self.checks, default=str) if epoch_value == 0 else ""
        metrics.update(self._cost_since_last_report())
        metrics = {k: v for k, v in metrics.items() if v is not None}
        with tempfile.TemporaryDirectory() as tmp:
            self.engine.save_checkpoint(tmp, tag=DS_TAG, exclude_frozen_parameters=True)
            if rank == 0:
                self.engine.module.save_pretrained(os.path.join(tmp, ADAPTER_DIR))
                state = {
                    "epoch": next_epoch,
                    "step_in_epoch": next_step,
                    "micro_steps": self.micro_steps,
                    "metrics": metrics,
                }
                (Path(tmp) / TRAINER_STATE).write_text(json.dumps(state))
            self._report(metrics, checkpoint=self._checkpoint_from(tmp))
        self._fault("after_report", epoch_value)
        self._seed_rng(next_epoch, next_step)  # as a restart from this checkpoint would
        self._reset_meters()
