"""Freezing from glob patterns over parameter names (VGGT ``train_utils/freeze.py`` style).

The patterns are training policy and come from the training config (``pipelines/train/config.py``: ``freeze``);
nothing here knows module names.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn


def is_trainable(name: str, trainable: Sequence[str], frozen: Sequence[str]) -> bool:
    """True iff ``name`` matches a trainable pattern and no frozen pattern."""
    return any(fnmatchcase(name, p) for p in trainable) and not any(fnmatchcase(name, p) for p in frozen)


def apply_freezing(model: nn.Module, trainable: Sequence[str], frozen: Sequence[str] = ()) -> dict[str, int]:
    """Set ``requires_grad`` of every parameter of ``model`` from glob patterns over ``named_parameters`` names.

    Args:
        model: any module (a ``VidLLM``: names such as ``encoder.backbone.embeddings.cls_token``).
        trainable: a parameter trains iff it matches one of these ...
        frozen: ... and none of these.

    Returns:
        ``{"trainable": n, "frozen": m}`` parameter-element counts.

    Raises:
        ValueError: the patterns leave nothing trainable.
    """
    counts = {"trainable": 0, "frozen": 0}
    for name, param in model.named_parameters():
        train = is_trainable(name, trainable, frozen)
        param.requires_grad_(train)
        counts["trainable" if train else "frozen"] += param.numel()
    if counts["trainable"] == 0:
        raise ValueError(f"freezing patterns trainable={list(trainable)} frozen={list(frozen)} leave no trainable "
                         "parameter")
    return counts
