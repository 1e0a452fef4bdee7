"""TrainConfig -> DeepSpeed config dict.

The optimizer is a torch ``AdamW`` passed to ``deepspeed.initialize`` as a client optimizer (not DeepSpeed's
``"optimizer"`` section): DeepSpeed's FusedAdam/CPUAdam are C++ ops that JIT-compile for 2-2.5 min on a fresh machine
(measured on 2 CPU cores), and a client optimizer lets us hand it only the trainable parameters. Wrapping a client optimizer in
ZeRO needs ``zero_allow_untested_optimizer``.
"""

from __future__ import annotations

from typing import Any

from pipelines.train.config import TrainConfig


def use_bf16(cfg: TrainConfig, on_gpu: bool) -> bool:
    """bf16 on GPU and fp32 on CPU unless the config forces a precision."""
    if cfg.deepspeed.precision == "auto":
        return on_gpu
    return cfg.deepspeed.precision == "bf16"


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
    stage = cfg.deepspeed.zero_stage
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 2:
        zero.update({"overlap_comm": False, "contiguous_gradients": True, "reduce_scatter": True})
    bf16 = use_bf16(cfg, on_gpu)
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # progress goes to MLflow, not DeepSpeed's stdout logger
        "wall_clock_breakdown": False,
    }
