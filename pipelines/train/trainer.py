"""The training loop as named steps (torchtitan ``Trainer`` style): build, restore, step, metrics, report,
checkpoint, export.

:meth:`Trainer.fit` is the whole loop; every step is a method that can be called (and tested) on its own with a
real DeepSpeed engine in one process. Ray Train only supplies the :class:`WorkerContext` (rank, world size, device,
checkpoint storage) and runs :func:`pipelines.train.loop.train_loop_per_worker`, which builds a trainer and fits.

Training policy comes from the config only: what trains (``cfg.freeze`` glob patterns) and the loss weights
(``cfg.loss``) are set by the stage presets of :mod:`pipelines.train.config`.

At scale: the model is put in training mode whatever its source (``from_pretrained`` returns eval mode) and gets
the config's activation checkpointing; the optimizer, offload, buckets and ``overlap_comm`` come from
:mod:`pipelines.train.deepspeed_config`; micro-batches come from background loader processes
(:func:`pipelines.train.data.micro_batch_loader`) and the time a step waits for them is the ``data_wait_s`` metric
(the slowest rank's); restore reads only this rank's shards and the export writes the fp32 masters
(:mod:`pipelines.train.checkpointing`, :mod:`pipelines.train.export`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from pipelines import storage
from pipelines.train.checkpointing import TrainState, find_latest_complete, load_checkpoint, save_checkpoint
from pipelines.train.config import MODEL_ARTIFACT_FIELDS, TrainConfig
from pipelines.train.data import Collator, load_shards, micro_batch_loader, plan_rank, steps_per_epoch
from pipelines.train.deepspeed_config import build_deepspeed_config, build_optimizer, use_bf16
from pipelines.train.export import frozen_fp32_copies, plan_export
from pipelines.train.progress import ProgressLine, StepLog

logger = logging.getLogger(__name__)

FAULT_MARKER = "fault_injected.json"


@dataclass(frozen=True)
class WorkerContext:
    """Where this rank runs (Ray Train's worker context, or a test's single process).

    Attributes:
        rank: data-parallel rank.
        world: number of ranks.
        device: this rank's torch device.
        checkpoint_fs: pyarrow filesystem of the run's checkpoint directory (``None``: no checkpoints, no resume).
        checkpoint_path: the run's checkpoint directory in ``checkpoint_fs``.
    """

    rank: int
    world: int
    device: torch.device
    checkpoint_fs: Any = None
    checkpoint_path: str = ""


@dataclass(frozen=True)
class TrackingContext:
    """How rank 0 reaches MLflow (resolved by the driver, :mod:`pipelines.train.launch`).

    Attributes:
        tracking_uri: MLflow tracking URI.
        tags: run tags (stage, manifest, parent run).
        artifact_location: experiment artifact root for a local store (``None``: the server's).
    """

    tracking_uri: str
    tags: dict[str, str] = field(default_factory=dict)
    artifact_location: str | None = None


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did on this rank (before the metrics are reduced over ranks).

    Attributes:
        loss: mean total loss over the step's micro-batches.
        terms: mean of every loss term over the micro-batches.
        samples: samples seen.
        tokens: non-padding text tokens seen.
        without_language: samples with no text target (no annotation for the task mix, or text over the cap).
        position: the data position after the step (resume point).
        data_wait_s: time the step waited for its micro-batches (loading not hidden behind compute).
        text_skipped: examples whose text did not fit ``data.max_text_tokens`` (trained without language labels).
    """

    loss: float
    terms: dict[str, float]
    samples: int
    tokens: int
    without_language: int
    position: TrainState
    data_wait_s: float = 0.0
    text_skipped: int = 0


def skip_shm_comm_build() -> None:
    """Mark DeepSpeed's ``deepspeed_shm_comm`` op as unavailable before DeepSpeed's comm backend starts.

    Why: on CPU, DeepSpeed's ``TorchBackend`` JIT-compiles this shared-memory all-reduce op (~90 s on 2 cores) on
    first use whenever g++ exists, even though gloo does the communication (training is identical without it).
    DeepSpeed reads ``deepspeed.ops.__compatible_ops__`` to decide, and exposes no config switch, so we set that
    entry. The op only speeds up intra-node CPU all-reduce; GPU runs never use it.
    """
    from deepspeed import ops as ds_ops

    ds_ops.__compatible_ops__["deepspeed_shm_comm"] = False


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear 0->1 over ``warmup`` steps, then cosine 1->``min_ratio`` until ``total``."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters only (frozen ones never reach the optimizer); no decay on biases and norms (1-D)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def localize_model_paths(model: dict[str, Any], cache_dir: str = "") -> dict[str, Any]:
    """The model tree with every artifact field (:data:`MODEL_ARTIFACT_FIELDS`) that holds a URI replaced by a
    local directory (downloaded once per node by :mod:`pipelines.artifacts`); local paths are kept."""
    from pipelines.artifacts import is_local, local_dir

    tree = json.loads(json.dumps(model))
    for dotted in MODEL_ARTIFACT_FIELDS:
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        value = node.get(leaf) if isinstance(node, dict) else None
        if value and not is_local(value):
            node[leaf] = local_dir(value, cache_dir, flag=f"model.{dotted}")
    return tree


def build_model(cfg: TrainConfig, tracking_uri: str):
    """``(model, processor)``: random init from ``cfg.model`` (seeded by ``data.seed``, the same on every rank)
    with the processor its config describes, or the trained model named by ``init_from`` (any
    :mod:`pipelines.artifacts` URI) with the processor saved next to its weights. Training encodes its examples
    through this processor, and the export saves it, so serving prompts exactly as training did."""
    from model import VidLLM, VidLLMConfig, VidLLMProcessor
    from pipelines.artifacts import load_processor, resolve_model

    if cfg.init_from:
        checkpoint = resolve_model(cfg.init_from, tracking_uri, flag="init_from").local_dir
        model = VidLLM.from_pretrained(checkpoint)
        return model, load_processor(checkpoint, model.vidllm_config)
    torch.manual_seed(cfg.data.seed)
    model = VidLLM(VidLLMConfig.from_dict(localize_model_paths(cfg.model)))
    return model, VidLLMProcessor.from_config(model.vidllm_config)


class TrainingModule(torch.nn.Module):
    """The module DeepSpeed wraps: model forward + loss, returning only tensors ``(total, stacked terms)``.

    The model's outputs and its batch are ``transformers.utils.ModelOutput`` dicts (:mod:`model.outputs`), so
    under ZeRO-3 DeepSpeed hooks every sub-module: it gathers a module's partitioned parameters just before the
    module runs and releases them after, in the forward and again in the backward pass. Frozen modules whose inputs
    need no gradient (Stage 2's encoder) build no graph, so the backward never reaches them.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.term_names: list[str] = []

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        loss, terms = self.loss_fn(self.model(batch), batch)
        self.term_names = sorted(terms)
        stacked = torch.stack([terms[k].float() for k in self.term_names]) if terms else loss.new_zeros(0)
        return loss, stacked


class Trainer:
    """One rank's training run.

    Args:
        cfg: the resolved training config.
        ctx: where this rank runs.
        tracking: MLflow settings resolved by the driver.
    """

    def __init__(self, cfg: TrainConfig, ctx: WorkerContext, tracking: TrackingContext) -> None:
        self.cfg, self.ctx, self.tracking = cfg, ctx, tracking
        self.dtype = torch.bfloat16 if use_bf16(cfg, ctx.device.type == "cuda") else None
        self.tracker = self.step_log = self.progress = None

    # ---------------------------------------------------------------------------------------------- build
    def build(self) -> Trainer:
        """Model and processor, freezing, data plan, optimizer and schedule, loss, DeepSpeed engine."""
        import deepspeed

        from model.freezing import apply_freezing
        from model.losses import MultitaskLoss
        from pipelines.tracking import bound_http_retries

        cfg, ctx = self.cfg, self.ctx
        on_gpu = ctx.device.type == "cuda"
        skip_shm_comm_build()
        bound_http_retries()
        self.model, self.processor = build_model(cfg, self.tracking.tracking_uri)
        # from_pretrained (Stage 2's init_from) returns a model in eval mode; dropout, the training-time random
        # frame sampling and activation checkpointing need training mode.
        self.model.train()
        self.model.set_activation_checkpointing(**dataclasses.asdict(cfg.activation_checkpointing))
        self.param_counts = apply_freezing(self.model, cfg.freeze.trainable, cfg.freeze.frozen)
        self.shards = load_shards(cfg.data.manifest_uri)
        self.accum = cfg.deepspeed.grad_accum_steps
        self.steps_per_epoch = steps_per_epoch(self.shards, ctx.world, cfg.data.micro_batch_size, self.accum)
        self.total_steps = cfg.schedule.max_steps or self.steps_per_epoch * cfg.schedule.num_epochs
        self.export_plan = plan_export(self.model, ctx.world, cfg.run.export_shard_mib)
        self.frozen_fp32 = frozen_fp32_copies(self.model, self.export_plan, ctx.rank)
        self.optimizer = build_optimizer(cfg, param_groups(self.model, cfg.optim.weight_decay), on_gpu)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(cfg.optim.warmup_steps, self.total_steps, cfg.optim.min_lr_ratio))
        self.module = TrainingModule(self.model, MultitaskLoss(cfg.loss))
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.module, optimizer=self.optimizer, lr_scheduler=self.scheduler,
            config=build_deepspeed_config(cfg, ctx.world, on_gpu), dist_init_required=False)
        return self

    # ---------------------------------------------------------------------------------------------- state
    def restore(self) -> TrainState | None:
        """Load the latest complete checkpoint of the run into the engine (``None``: a fresh start)."""
        if self.ctx.checkpoint_fs is None:
            return None
        found = find_latest_complete(self.ctx.checkpoint_fs, self.ctx.checkpoint_path)
        if found is None:
            return None
        state = load_checkpoint(self.engine, self.ctx.checkpoint_fs, found[1], self.ctx.rank)
        logger.warning("rank %d resumed from %s (step %d)", self.ctx.rank, found[1], state.step)
        return state

    def micro_batches(self, state: TrainState) -> Iterator[tuple[int, int, Any]]:
        """``(epoch, micro_in_epoch_after, batch)`` forever from ``state``'s data position, epoch after epoch."""
        cfg, ctx = self.cfg, self.ctx
        per_epoch = self.steps_per_epoch * self.accum
        epoch, skip = state.epoch, state.micro_in_epoch
        while True:
            plan = plan_rank(self.shards, ctx.rank, ctx.world, epoch, cfg.data.seed, cfg.data.shuffle_shards)
            collator = Collator(cfg.data, cfg.stage, self.processor, epoch)
            for i, item in enumerate(micro_batch_loader(plan, collator, cfg.data, per_epoch, skip)):
                yield epoch, skip + i + 1, item
            epoch, skip = epoch + 1, 0

    # ---------------------------------------------------------------------------------------------- step
    def train_step(self, batches: Iterator[tuple[int, int, Any]]) -> StepResult:
        """One optimizer step: ``grad_accum_steps`` micro-batches forward, backward and (DeepSpeed) step."""
        losses: list[float] = []
        terms: dict[str, float] = {}
        samples = tokens = without_language = 0
        epoch = micro = 0
        wait = 0.0
        skipped: list[str] = []
        for _ in range(self.accum):
            started = time.perf_counter()
            epoch, micro, item = next(batches)
            wait += time.perf_counter() - started
            skipped += item.text_skipped
            batch = item.batch.to(self.ctx.device, dtype=self.dtype)
            loss, stacked = self.engine(batch)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(float(loss.detach()))
            for k, v in zip(self.module.term_names, stacked.tolist(), strict=True):
                terms[k] = terms.get(k, 0.0) + v / self.accum
            samples += batch.frames.shape[0]
            tokens += int(batch.attention_mask.sum()) if batch.attention_mask is not None else 0
            if batch.labels is not None:
                without_language += int((~(batch.labels != -100).any(dim=1)).sum())
        if micro == self.steps_per_epoch * self.accum:
            epoch, micro = epoch + 1, 0
        for key in skipped:
            logger.warning("rank %d: sample %s: its text does not fit data.max_text_tokens=%d; trained without "
                           "language labels", self.ctx.rank, key, self.cfg.data.max_text_tokens)
        return StepResult(sum(losses) / self.accum, terms, samples, tokens, without_language,
                          TrainState(-1, epoch, micro), wait, len(skipped))

    def step_metrics(self, result: StepResult, seconds: float) -> dict[str, float]:
        """The step's metrics over all ranks (mean loss, total throughput, samples without a text target; loss
        terms are this rank's)."""
        import torch.distributed as dist

        stats = torch.tensor([result.loss, result.samples, result.tokens, result.text_skipped, result.without_language],
                             dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(stats)
        waits = torch.tensor([result.data_wait_s], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(waits, op=dist.ReduceOp.MAX)
        return {"loss": stats[0].item() / self.ctx.world, "lr": self.scheduler.get_last_lr()[0],
                "step_time_s": seconds, "samples_per_s": stats[1].item() / seconds,
                "tokens_per_s": stats[2].item() / seconds, "epoch": result.position.epoch,
                "data_wait_s": waits.item(), "text_skipped": stats[3].item(),
                "samples_without_language": stats[4].item(),
                **{f"loss_{k}": v for k, v in result.terms.items()}}

    # ---------------------------------------------------------------------------------------------- report
    def start_reporting(self, resumed: TrainState | None) -> None:
        """Rank 0: create (or re-attach to) the MLflow run, open this attempt's step log and progress line."""
        if self.ctx.rank != 0:
            return
        from pipelines.tracking import flatten_params
        from pipelines.train.tracking import Tracker

        cfg = self.cfg
        tags = {**self.tracking.tags, "trainable_params": str(self.param_counts["trainable"]),
                "frozen_params": str(self.param_counts["frozen"])}
        self.tracker = Tracker(self.tracking.tracking_uri, cfg.tracking.experiment, cfg.run.output_dir,
                               params=flatten_params(cfg.to_dict()), tags=tags,
                               artifact_location=self.tracking.artifact_location,
                               retry_initial_s=cfg.tracking.retry_initial_s, retry_max_s=cfg.tracking.retry_max_s,
                               max_buffered_metrics=cfg.tracking.max_buffered_metrics)
        self.tracker.start()
        self.step_log = StepLog(cfg.run.output_dir, resumed.step if resumed else None)
        self.step_log.flush()
        self.progress = ProgressLine(cfg.stage, self.total_steps, resumed.step + 1 if resumed else 0)

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """Rank 0: the progress line, the step log and (every ``log_every`` steps) MLflow, with the ETA."""
        if self.ctx.rank != 0:
            return
        metrics = {**metrics, "eta_s": self.progress.eta_s(step)}
        self.progress.update(step, metrics)
        self.step_log.add({"step": step, **metrics})
        if step % self.cfg.schedule.log_every == 0 or step == self.total_steps - 1:
            self.tracker.log_metrics(metrics, step)
            self.step_log.flush()

    def finish_reporting(self, last_step: int) -> None:
        if self.ctx.rank != 0:
            return
        self.step_log.add({"event": "end", "step": last_step})
        self.step_log.flush()
        self.tracker.close()

    # ---------------------------------------------------------------------------------------------- checkpoint
    def should_checkpoint(self, step: int) -> bool:
        return (step + 1) % self.cfg.schedule.checkpoint_every == 0 or step == self.total_steps - 1

    def checkpoint(self, step: int, position: TrainState, metrics: dict[str, float]) -> None:
        """Save a checkpoint of every rank through Ray Train (collective; rank 0 writes the marker last)."""
        if self.ctx.rank == 0:
            self.step_log.flush()
        save_checkpoint(self.engine, dataclasses.replace(position, step=step), {"step": step, **metrics})

    def inject_fault(self, step: int) -> None:
        """``cfg.fault``: SIGKILL this worker process once, at the configured rank and step (tests)."""
        f = self.cfg.fault
        if f.kill_at_step < 0 or self.ctx.rank != f.kill_rank or step != f.kill_at_step:
            return
        marker = storage.join(self.cfg.run.output_dir, FAULT_MARKER)
        if storage.exists(marker):
            return
        storage.write_bytes(marker, json.dumps({"rank": self.ctx.rank, "step": step, "pid": os.getpid()}).encode())
        logger.warning("fault injection: rank %d SIGKILLs itself (pid %d) at step %d", self.ctx.rank, os.getpid(),
                       step)
        os.kill(os.getpid(), signal.SIGKILL)

    # ---------------------------------------------------------------------------------------------- export
    def export(self) -> str:
        """Gather the weights and write the HF-layout export to ``<output_dir>/model`` (collective)."""
        from pipelines.train.export import export_model

        return export_model(self.engine.module.model, self.processor, self.cfg, self.ctx.rank, self.export_plan,
                            self.frozen_fp32)

    # ---------------------------------------------------------------------------------------------- the loop
    def fit(self) -> None:
        """Restore, then step until ``total_steps`` with reporting and checkpoints, then export."""
        import torch.distributed as dist

        resumed = self.restore()
        state = resumed or TrainState(step=-1, epoch=0, micro_in_epoch=0)
        self.start_reporting(resumed)
        batches = self.micro_batches(state)
        step = state.step + 1
        while step < self.total_steps:
            self.inject_fault(step)
            started = time.perf_counter()
            result = self.train_step(batches)
            metrics = self.step_metrics(result, time.perf_counter() - started)
            self.report(step, metrics)
            if self.should_checkpoint(step):
                self.checkpoint(step, result.position, metrics)
            step += 1
        self.export()
        self.finish_reporting(step - 1)
        dist.barrier()
