"""Where Vid-LLM computes in fp32 whatever the training precision.

Under bf16 (autocast, or bf16 weights as DeepSpeed's bf16 mode keeps them) the transformer blocks, convolutions and
projections run in bf16, which is safe. Geometry and probabilities are not: bf16 has an 8-bit mantissa, so it
cannot count past 256, quantises a 5 m coordinate to 2-3 cm and a 1000-term sum to 0.4 %. The model therefore
upcasts network outputs before they become geometry (depth, poses, points, voxel centres, boxes) or metric-depth
bin probabilities, and runs those computations inside :func:`fp32_region`, where autocast is off so that matrix
products (``einsum``, ``@``) are not silently lowered back to bf16.
"""

from __future__ import annotations

import contextlib

import torch


def fp32_region(reference: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context in which autocast is disabled on ``reference``'s device (a no-op where autocast does not exist).

    Inputs must already be fp32 (``.float()``): disabling autocast makes ops run in their inputs' dtype.
    """
    device_type = reference.device.type
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)
