"""Stage-dependent freezing from glob patterns over parameter names (VGGT ``train_utils/freeze.py`` style).

Stage 1 and stage 2 differ only in :class:`model.config.FreezingConfig`; nothing here knows module names.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from model.config import FreezingConfig

STAGES = ("stage1", "stage2")


def stage_patterns(cfg: FreezingConfig, stage: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(trainable, frozen)`` glob patterns of ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; expected one of {STAGES}")
    return getattr(cfg, f"{stage}_trainable"), getattr(cfg, f"{stage}_frozen")


def is_trainable(name: str, trainable: tuple[str, ...], frozen: tuple[str, ...]) -> bool:
    """True iff ``name`` matches a trainable pattern and no frozen pattern."""
    return any(fnmatchcase(name, p) for p in trainable) and not any(fnmatchcase(name, p) for p in frozen)


def apply_stage(model: nn.Module, stage: str, cfg: FreezingConfig | None = None) -> dict[str, int]:
    """Set ``requires_grad`` of every parameter of ``model`` for ``stage``.

    Args:
        model: a ``VidLLM`` (or any module; names are ``named_parameters`` names).
        stage: ``"stage1"`` or ``"stage2"``.
        cfg: patterns; defaults to ``model.vidllm_config.freezing``.

    Returns:
        ``{"trainable": n, "frozen": m}`` parameter-element counts.

    Raises:
        ValueError: unknown stage, or a pattern set that leaves nothing trainable.
    """
    if cfg is None:
        cfg = model.vidllm_config.freezing
    trainable, frozen = stage_patterns(cfg, stage)
    counts = {"trainable": 0, "frozen": 0}
    for name, param in model.named_parameters():
        train = is_trainable(name, trainable, frozen)
        param.requires_grad_(train)
        counts["trainable" if train else "frozen"] += param.numel()
    if counts["trainable"] == 0:
        raise ValueError(f"{stage}: patterns trainable={trainable} frozen={frozen} leave no trainable parameter")
    return counts
