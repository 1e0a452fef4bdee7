"""Per-GPU memory estimate of a training run: model state only (weights, gradients, optimizer state) under ZeRO.

A first-order estimate for ``--dry-run``: activations, communication buffers and the allocator's fragmentation are
not included, so a run needs headroom above it. Bytes per parameter (mixed precision keeps an fp32 master copy):

=====================  ==========================  =====================================
                       bf16 (weights and grads)    fp32
=====================  ==========================  =====================================
weights (every param)  2, / N under ZeRO-3         4, / N under ZeRO-3
gradients (trainable)  2, / N under ZeRO-2 and 3   4, / N under ZeRO-2 and 3
optimizer (trainable)  12 (fp32 master + Adam m, v), / N under ZeRO 1-3; 8 in fp32 (m, v)
=====================  ==========================  =====================================
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU of each part of the model state.

    Attributes:
        weights: parameters held by each rank.
        gradients: gradients of trainable parameters held by each rank.
        optimizer: optimizer state (and fp32 master weights under bf16) held by each rank.
    """

    weights: float
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer

    def describe(self) -> str:
        return (f"{self.total / GIB:.2f} GiB per GPU of model state (weights {self.weights / GIB:.2f}, gradients "
                f"{self.gradients / GIB:.2f}, optimizer {self.optimizer / GIB:.2f}; activations not included)")


def estimate_model_state(total_params: int, trainable_params: int, zero_stage: int, world: int,
                         bf16: bool) -> MemoryEstimate:
    """Model-state bytes per GPU for ``world`` data-parallel ranks at ZeRO stage ``zero_stage`` (see the table)."""
    width = 2 if bf16 else 4
    weights = total_params * width / (world if zero_stage >= 3 else 1)
    gradients = trainable_params * width / (world if zero_stage >= 2 else 1)
    optimizer = trainable_params * (12 if bf16 else 8) / world
    return MemoryEstimate(weights, gradients, optimizer)
