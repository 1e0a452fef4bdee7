"""TrainConfig -> DeepSpeed config dict, and the optimizer handed to ``deepspeed.initialize``.

The optimizer is passed as a client optimizer (not DeepSpeed's ``"optimizer"`` section) so that it gets only the
trainable parameters, in two weight-decay groups (:func:`pipelines.train.trainer.param_groups`):

* on CUDA, DeepSpeed's ``FusedAdam`` (multi-tensor CUDA kernel; the image pre-builds it), or ``DeepSpeedCPUAdam``
  when the optimizer is offloaded to host memory;
* on CPU, ``torch.optim.AdamW``: DeepSpeed's CPU ops JIT-compile for 2-2.5 min on a fresh machine (measured on 2
  cores) and bring nothing to gloo runs.

Wrapping a client optimizer in ZeRO needs ``zero_allow_untested_optimizer``; ``zero_force_ds_cpu_optimizer`` is
off so that a CPU run may offload with ``AdamW``.
"""

from __future__ import annotations

from typing import Any

import torch

from pipelines.train.config import TrainConfig


def use_bf16(cfg: TrainConfig, on_gpu: bool) -> bool:
    """bf16 on GPU and fp32 on CPU unless the config forces a precision."""
    if cfg.deepspeed.precision == "auto":
        return on_gpu
    return cfg.deepspeed.precision == "bf16"


def zero_config(cfg: TrainConfig) -> dict[str, Any]:
    """The ``zero_optimization`` section: stage, overlap, bucket sizes and offload of ``cfg.deepspeed``."""
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage, "reduce_bucket_size": ds.reduce_bucket_size}
    if ds.zero_stage >= 2:
        zero.update({"overlap_comm": ds.overlap_comm, "contiguous_gradients": True})
    if ds.zero_stage <= 2:
        zero.update({"allgather_bucket_size": ds.allgather_bucket_size, "reduce_scatter": True})
    else:
        zero.update({"stage3_prefetch_bucket_size": ds.prefetch_bucket_size,
                     "stage3_max_live_parameters": ds.max_live_parameters,
                     "stage3_param_persistence_threshold": ds.param_persistence_threshold})
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer, "pin_memory": True}
    if ds.offload_params != "none":
        zero["offload_param"] = {"device": ds.offload_params, "pin_memory": True}
    return zero


def build_deepspeed_config(cfg: TrainConfig, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config for ``cfg`` on ``world_size`` ranks.

    Args:
        cfg: the resolved training config.
        world_size: number of data-parallel ranks.
        on_gpu: whether the ranks run on CUDA devices (selects bf16 under ``precision="auto"``).

    Returns:
        A dict for ``deepspeed.initialize(config=...)``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    micro = cfg.data.micro_batch_size
    accum = cfg.deepspeed.grad_accum_steps
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero_config(cfg),
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": use_bf16(cfg, on_gpu)},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # progress goes to MLflow, not DeepSpeed's stdout logger
        "wall_clock_breakdown": False,
    }


def build_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]], on_gpu: bool) -> torch.optim.Optimizer:
    """AdamW over ``groups`` (see the module docstring for which implementation)."""
    o = cfg.optim
    if on_gpu and cfg.deepspeed.offload_optimizer == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=o.lr, betas=o.betas, adamw_mode=True)
    if on_gpu:
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, lr=o.lr, betas=o.betas, adam_w_mode=True)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)
