"""The per-worker entry point run by Ray Train: build a :class:`~pipelines.train.trainer.Trainer` and fit.

Everything arrives through the ``train_loop_config`` dict (:func:`worker_config`); nothing is read from globals.
Ray Train has already created the gloo/NCCL process group, so DeepSpeed is initialised with
``dist_init_required=False``.
"""

from __future__ import annotations

from typing import Any

from pipelines.train.config import TrainConfig
from pipelines.train.trainer import TrackingContext, Trainer, WorkerContext


def worker_config(cfg: TrainConfig, tracking: TrackingContext) -> dict[str, Any]:
    """The ``train_loop_config`` dict handed to every worker."""
    return {"train": cfg.to_dict(), "tracking_uri": tracking.tracking_uri, "tags": tracking.tags,
            "artifact_location": tracking.artifact_location}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: train ``config["train"]`` on this rank (see :func:`worker_config`)."""
    import ray.train
    import torch

    cfg = TrainConfig.from_dict(config["train"])
    ctx = ray.train.get_context()
    on_gpu = torch.cuda.is_available() and cfg.run.use_gpu
    storage_ctx = ctx.get_storage()
    worker = WorkerContext(
        rank=ctx.get_world_rank(), world=ctx.get_world_size(),
        device=ray.train.torch.get_device() if on_gpu else torch.device("cpu"),
        checkpoint_fs=storage_ctx.storage_filesystem, checkpoint_path=storage_ctx.experiment_fs_path)
    tracking = TrackingContext(config["tracking_uri"], config["tags"], config["artifact_location"])
    Trainer(cfg, worker, tracking).build().fit()
