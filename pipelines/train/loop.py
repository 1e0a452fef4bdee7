"""The per-worker training loop run by Ray Train: model -> freezing -> DeepSpeed engine -> steps -> checkpoints.

Everything arrives through the ``train_loop_config`` dict (:func:`worker_config`); nothing is read from globals.
Ray Train has already created the gloo/NCCL process group, so DeepSpeed is initialised with
``dist_init_required=False``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from pipelines import storage
from pipelines.train.checkpointing import TrainState, find_latest_complete, load_checkpoint, save_checkpoint
from pipelines.train.config import TrainConfig
from pipelines.train.data import Collator, iter_batches, load_shards, plan_rank, steps_per_epoch
from pipelines.train.deepspeed_config import build_deepspeed_config, use_bf16

logger = logging.getLogger(__name__)

FAULT_MARKER = "fault_injected.json"
STEP_LOG_DIR = "steps"


def worker_config(cfg: TrainConfig, tracking_uri: str, tags: dict[str, str], artifact_location: str | None
                  ) -> dict[str, Any]:
    """The ``train_loop_config`` dict handed to every worker."""
    return {"train": cfg.to_dict(), "tracking_uri": tracking_uri, "tags": tags,
            "artifact_location": artifact_location}


def skip_shm_comm_build() -> None:
    """Mark DeepSpeed's ``deepspeed_shm_comm`` op as unavailable before DeepSpeed's comm backend starts.

    Why: on CPU, DeepSpeed's ``TorchBackend`` JIT-compiles this shared-memory all-reduce op (~90 s on 2 cores) on
    first use whenever g++ exists, even though gloo does the communication (stack notes §2, verified: training is
    identical without it). DeepSpeed reads ``deepspeed.ops.__compatible_ops__`` to decide, and exposes no config
    switch, so we set that entry. The op only speeds up intra-node CPU all-reduce; GPU runs never use it.
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


class TrainingModule(torch.nn.Module):
    """The module DeepSpeed wraps: model forward + loss, returning only tensors ``(total, stacked terms)``.

    Why a wrapper: ZeRO-3 fetches a module's partitioned parameters again in backward through hooks that it attaches
    to the tensors a module returns, and it finds tensors only in tensors, tuples, lists and dicts. Vid-LLM's
    components return dataclasses (``EncoderOutput``, ``VidLLMOutput``, ...), which DeepSpeed cannot see into
    ("A module has unknown inputs or outputs type"), and backward then fails ("active_backward_submodules is
    empty"). Under ZeRO-3 this wrapper is therefore marked as a ZeRO-3 *leaf* (:func:`prepare_for_zero3`): its
    parameters are gathered once per forward/backward instead of module by module; optimizer states, gradients and
    parameters at rest stay partitioned. (Gathering per sub-module needs dict-like model outputs, e.g.
    ``transformers.utils.ModelOutput``.)

    ``frames`` is a separate tensor argument because DeepSpeed reduces a leaf's gradients in a full backward hook,
    which PyTorch fires once the gradients w.r.t. the module's tensor inputs exist. With no input requiring grad it
    fires before any parameter gradient is computed (DeepSpeed then zero-fills and partitions them, and the real
    gradients no longer fit). Under ZeRO-3 the loop passes ``frames`` with ``requires_grad=True``: the hook then
    fires at the very end of backward. The price is backpropagating to the pixels through a frozen encoder.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.term_names: list[str] = []

    def forward(self, frames: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        batch = dataclasses.replace(batch, frames=frames)
        out = self.model(batch)
        loss, terms = self.loss_fn(out, batch)
        loss = keep_box_head_in_graph(self.model, out, loss)
        self.term_names = sorted(terms)
        stacked = torch.stack([terms[k].float() for k in self.term_names]) if terms else loss.new_zeros(0)
        return loss, stacked


def prepare_for_zero3(module: TrainingModule) -> None:
    """Mark the training wrapper as a ZeRO-3 leaf module (see :class:`TrainingModule` for why)."""
    from deepspeed.utils.z3_leaf_module import set_z3_leaf_modules_by_name

    set_z3_leaf_modules_by_name(module, [""])


def keep_box_head_in_graph(module: torch.nn.Module, out, loss: torch.Tensor) -> torch.Tensor:
    """Add a zero-weighted pass of the box head when this micro-batch has no ``<loc>`` row.

    Why: the model runs its grounding head only for batches with a ``<loc>`` token, so with per-sample task mixing
    one rank may have a grounding row and another none. ZeRO-1/2 reduce gradients bucket by bucket as they are
    produced, so ranks with different sets of parameters receiving gradients issue mismatched collectives (gloo:
    "Received data size doesn't match expected size"). A ``0 *`` term over the head's outputs gives its parameters
    zero gradients on every rank without changing the loss or the update.
    """
    head = getattr(module, "box_head", None)
    if out.grounding is not None or out.scene is None or head is None:
        return loss
    if not any(p.requires_grad for p in head.parameters()):
        return loss
    tokens = out.scene.tokens
    zeros = torch.zeros(tokens.shape[0], tokens.shape[-1], dtype=tokens.dtype, device=tokens.device)
    pred = head(zeros, tokens, out.scene.mask, out.scene.centres)
    return loss + 0.0 * (pred.boxes.sum() + pred.scores.sum())


def registry_source(uri: str, tracking_uri: str) -> str:
    """``models:/<name>/<version>`` -> the version's artifact URI, looked up in the registry at ``tracking_uri``
    (MLflow's own ``models:/`` resolution uses the default registry URI, not the tracking URI it is given);
    other URIs are returned unchanged."""
    if not uri.startswith("models:/"):
        return uri
    parts = uri.removeprefix("models:/").strip("/").split("/")
    if len(parts) != 2 or not parts[1].isdigit():
        raise ValueError(f"init_from {uri}: expected models:/<name>/<version number>")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return client.get_model_version_download_uri(parts[0], parts[1])


def resolve_init_dir(init_from: str, tracking_uri: str, workdir: str) -> str:
    """A local directory holding the model to start from (export dir, URI, or an MLflow run's ``model`` artifact).

    Accepted forms: ``runs:/<run_id>/<path>``, ``mlflow-run:<run_id>`` (its ``model`` artifact), ``models:/name/v``,
    a local directory, or a ``file://``/``s3://`` URI of an export directory.
    """
    if init_from.startswith("mlflow-run:"):
        init_from = f"runs:/{init_from.split(':', 1)[1]}/model"
    if init_from.startswith(("runs:/", "models:/")):
        from mlflow.artifacts import download_artifacts

        return download_artifacts(artifact_uri=registry_source(init_from, tracking_uri), dst_path=workdir,
                                  tracking_uri=tracking_uri)
    if "://" not in init_from or init_from.startswith("file://"):
        local = init_from.removeprefix("file://")
        if not os.path.isfile(os.path.join(local, "config.json")):
            raise FileNotFoundError(f"init_from {init_from}: no config.json, not an exported model directory")
        return local
    fs, path = storage.filesystem(init_from)
    dst = os.path.join(workdir, "init_model")
    fs.get(path.rstrip("/") + "/", dst, recursive=True)
    return dst


def build_model(cfg: TrainConfig, tracking_uri: str, workdir: str):
    """``(model, tokenizer)``: from ``cfg.model`` (random init) or from the ``init_from`` export."""
    from model import VidLLM, VidLLMConfig, build_tokenizer

    if cfg.init_from:
        model = VidLLM.from_pretrained(resolve_init_dir(cfg.init_from, tracking_uri, workdir))
    else:
        torch.manual_seed(cfg.data.seed)  # same initial weights on every rank
        model = VidLLM(VidLLMConfig.from_dict(cfg.model))
    return model, build_tokenizer(model.vidllm_config)


class StepLog:
    """Rank-0 JSON-lines record of every finished step of this attempt (``<output>/steps/<attempt>.jsonl``).

    The fault-tolerance test reads these files to see where each attempt started and stopped. The file is
    rewritten whole at every flush so that it also works on object stores (no appends there).
    """

    def __init__(self, output_dir: str, start: TrainState | None) -> None:
        self.uri = storage.join(output_dir, STEP_LOG_DIR, f"{time.time_ns()}.jsonl")
        self.lines = [json.dumps({"event": "start", "resumed_from": start.step if start else None,
                                  "time": time.time()})]

    def add(self, record: dict[str, Any]) -> None:
        self.lines.append(json.dumps(record))

    def flush(self) -> None:
        storage.write_bytes(self.uri, ("\n".join(self.lines) + "\n").encode())


def read_step_logs(output_dir: str) -> list[list[dict[str, Any]]]:
    """Every attempt's step log, oldest attempt first."""
    fs, path = storage.filesystem(storage.join(output_dir, STEP_LOG_DIR))
    if not fs.exists(path):
        return []
    files = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".jsonl"))
    return [[json.loads(line) for line in fs.cat_file(f).decode().splitlines() if line] for f in files]


def maybe_inject_fault(cfg: TrainConfig, rank: int, step: int) -> None:
    """TEST-ONLY hook (``cfg.fault``): SIGKILL this worker process once, at the configured rank and step."""
    f = cfg.fault
    if f.kill_at_step < 0 or rank != f.kill_rank or step != f.kill_at_step:
        return
    marker = storage.join(cfg.run.output_dir, FAULT_MARKER)
    if storage.exists(marker):
        return
    storage.write_bytes(marker, json.dumps({"rank": rank, "step": step, "pid": os.getpid()}).encode())
    logger.warning("fault injection: rank %d SIGKILLs itself (pid %d) at step %d", rank, os.getpid(), step)
    os.kill(os.getpid(), signal.SIGKILL)


def _micro_batches(cfg: TrainConfig, shards, rank: int, world: int, collator_for: Callable[[int], Collator],
                   micro_per_epoch: int, state: TrainState) -> Iterator[tuple[int, int, Any]]:
    """``(epoch, micro_in_epoch_after, batch)`` forever from ``state``'s data position, epoch after epoch."""
    epoch, skip = state.epoch, state.micro_in_epoch
    while True:
        plan = plan_rank(shards, rank, world, epoch, cfg.data.seed, cfg.data.shuffle_shards)
        for i, batch in enumerate(iter_batches(plan, collator_for(epoch), cfg.data.micro_batch_size,
                                               micro_per_epoch, skip)):
            yield epoch, skip + i + 1, batch
        epoch, skip = epoch + 1, 0


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: train ``config["train"]`` on this rank (see :func:`worker_config`)."""
    import deepspeed
    import ray.train
    import torch.distributed as dist

    from model.config import LossWeights
    from model.freezing import apply_stage
    from model.losses import MultitaskLoss
    from pipelines.tracking import bound_http_retries, flatten_params
    from pipelines.train.export import export_model
    from pipelines.train.tracking import Tracker

    cfg = TrainConfig.from_dict(config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    skip_shm_comm_build()
    bound_http_retries()
    on_gpu = torch.cuda.is_available() and cfg.run.use_gpu
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    bf16 = use_bf16(cfg, on_gpu)

    workdir = tempfile.mkdtemp(prefix=f"vidllm-rank{rank}-")
    model, tokenizer = build_model(cfg, config["tracking_uri"], workdir)
    counts = apply_stage(model, f"stage{cfg.stage}")
    shards = load_shards(cfg.data.manifest_uri)
    accum = cfg.deepspeed.grad_accum_steps
    spe = steps_per_epoch(shards, world, cfg.data.micro_batch_size, accum)
    total_steps = cfg.schedule.max_steps or spe * cfg.schedule.num_epochs

    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=cfg.optim.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.optim.warmup_steps, total_steps, cfg.optim.min_lr_ratio))
    weights = LossWeights.stage1() if cfg.stage == 1 else LossWeights.stage2()
    overrides = dict(cfg.loss.weights)
    if cfg.stage == 1:
        overrides.setdefault("sc", cfg.loss.sc_lambda)
    wrapper = TrainingModule(model, MultitaskLoss(LossWeights(**{**weights.__dict__, **overrides})))
    zero3 = cfg.deepspeed.zero_stage == 3
    if zero3:
        prepare_for_zero3(wrapper)
    engine, _, _, _ = deepspeed.initialize(
        model=wrapper, optimizer=optimizer, lr_scheduler=scheduler,
        config=build_deepspeed_config(cfg, world, on_gpu), dist_init_required=False)

    storage_ctx = ctx.get_storage()
    found = find_latest_complete(storage_ctx.storage_filesystem, storage_ctx.experiment_fs_path)
    state = TrainState(step=-1, epoch=0, micro_in_epoch=0)
    if found is not None:
        state = load_checkpoint(engine, storage_ctx.storage_filesystem, found[1])
        logger.warning("rank %d resumed from %s (step %d)", rank, found[1], state.step)
    start = state if found is not None else None

    tracker = step_log = None
    if rank == 0:
        tags = {**config["tags"], "trainable_params": str(counts["trainable"]), "frozen_params": str(counts["frozen"])}
        tracker = Tracker(config["tracking_uri"], cfg.tracking.experiment, cfg.run.output_dir,
                          params=flatten_params(cfg.to_dict()), tags=tags, artifact_location=config["artifact_location"],
                          retry_initial_s=cfg.tracking.retry_initial_s, retry_max_s=cfg.tracking.retry_max_s,
                          max_buffered_metrics=cfg.tracking.max_buffered_metrics)
        tracker.start()
        step_log = StepLog(cfg.run.output_dir, start)
        step_log.flush()

    def collator_for(epoch: int) -> Collator:
        return Collator(cfg.data, cfg.stage, tokenizer, epoch)

    batches = _micro_batches(cfg, shards, rank, world, collator_for, spe * accum, state)
    step = state.step + 1
    dtype = torch.bfloat16 if bf16 else None
    while step < total_steps:
        maybe_inject_fault(cfg, rank, step)
        t0 = time.perf_counter()
        losses: list[float] = []
        terms_sum: dict[str, float] = {}
        samples = tokens = 0
        for _ in range(accum):
            epoch, micro_in_epoch, batch = next(batches)
            batch = batch.to(device, dtype=dtype)
            frames = batch.frames.requires_grad_(zero3)  # see TrainingModule for why
            loss, terms = engine(frames, batch)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            for k, v in zip(wrapper.term_names, terms.tolist(), strict=True):
                terms_sum[k] = terms_sum.get(k, 0.0) + v / accum
            samples += batch.frames.shape[0]
            tokens += int(batch.attention_mask.sum()) if batch.attention_mask is not None else 0
        if micro_in_epoch == spe * accum:
            epoch, micro_in_epoch = epoch + 1, 0
        stats = torch.tensor([sum(losses) / accum, samples, tokens], dtype=torch.float64, device=device)
        dist.all_reduce(stats)
        dt = time.perf_counter() - t0
        metrics = {"loss": stats[0].item() / world, "lr": scheduler.get_last_lr()[0], "step_time_s": dt,
                   "samples_per_s": stats[1].item() / dt, "tokens_per_s": stats[2].item() / dt, "epoch": epoch,
                   **{f"loss_{k}": v for k, v in terms_sum.items()}}
        if rank == 0:
            step_log.add({"step": step, **metrics})
            if step % cfg.schedule.log_every == 0 or step == total_steps - 1:
                tracker.log_metrics(metrics, step)
                step_log.flush()
        if (step + 1) % cfg.schedule.checkpoint_every == 0 or step == total_steps - 1:
            if rank == 0:
                step_log.flush()
            save_checkpoint(engine, TrainState(step, epoch, micro_in_epoch), {"step": step, **metrics})
        step += 1

    export_model(engine.module.model, tokenizer, cfg, rank)
    if rank == 0:
        step_log.add({"event": "end", "step": step - 1})
        step_log.flush()
        tracker.close()
    dist.barrier()
