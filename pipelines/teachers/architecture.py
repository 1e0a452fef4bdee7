"""Which model a teacher folder holds: checked from its ``config.json`` alone, before anything is loaded.

A folder whose architecture is not the configured one is refused with one line naming both: loading a plain DINOv2
folder as DINOv2-with-registers would silently leave the 4 register tokens at zero (cosine to the plain model's
features: mean 0.951, min 0.687), and a CLIP text tower has no vision weights at all. The teachers job runs the
check on both folders before it starts any Ray work; each teacher runs it again on the copy it loads.

Randomly initialised stand-ins (no trained CLIP weights are installable offline) carry :data:`STANDIN_KEY` in
their ``config.json``; :func:`standin_label` reads it so the job can label everything made with one.

This module imports no torch: the job's driver and I/O actors use it.
"""

from __future__ import annotations

import json
from typing import Any

from pipelines import storage
from pipelines.config import InputError, UsageError
from pipelines.teachers.config import GEOMETRY_ARCHITECTURES, SEMANTIC_ARCHITECTURES

#: ``config.json`` key that marks a randomly initialised stand-in teacher (its value says what it stands in for).
STANDIN_KEY = "vidllm_random_standin"


class TeacherArchitectureError(UsageError):
    """A teacher folder's ``config.json`` describes another architecture than the configured one (a usage error:
    the stage CLIs print it as one line and exit with status 2)."""


_HINTS = {
    ("Dinov2WithRegistersModel", "dinov2"): "a plain DINOv2 has no register tokens: set geometry_architecture="
    "Dinov2Model to use it as it is, or convert VGGT-1B's encoder with `vidllm weights convert-vggt`",
    ("Dinov2Model", "dinov2_with_registers"): "set geometry_architecture=Dinov2WithRegistersModel to use it",
}


def check_architecture(uri: str, role: str, expected: str, source: str | None = None) -> dict:
    """Read the HF folder's ``config.json`` at ``uri`` (local or remote, nothing else is fetched) and check it.

    Args:
        uri: the teacher folder.
        role: ``geometry`` or ``semantic``.
        expected: the configured HF class (a key of ``GEOMETRY_ARCHITECTURES`` / ``SEMANTIC_ARCHITECTURES``).
        source: the folder's name in messages (default ``uri``; the original URI of a downloaded copy).

    Returns:
        The parsed ``config.json``.

    Raises:
        TeacherArchitectureError: its ``model_type`` is not one of ``expected``'s (one line naming both).
        InputError: the folder has no ``config.json``.
    """
    source = source or uri
    allowed = (GEOMETRY_ARCHITECTURES if role == "geometry" else SEMANTIC_ARCHITECTURES)[expected]
    config_uri = storage.join(uri, "config.json")
    if not storage.exists(config_uri):
        raise InputError(f"{role} teacher {source}: no config.json (not an HF model folder)")
    config = json.loads(storage.read_bytes(config_uri))
    model_type = str(config.get("model_type", ""))
    if model_type not in allowed:
        found = ",".join(config.get("architectures") or []) or "an unnamed architecture"
        registers = f", {config['num_register_tokens']} register tokens" if "num_register_tokens" in config else ""
        hint = _HINTS.get((expected, model_type), f"{expected} folders have model_type {' or '.join(allowed)}")
        raise TeacherArchitectureError(
            f"{role} teacher {source}: config.json describes {found} (model_type {model_type!r}{registers}), but "
            f"the teachers config expects {expected} ({role}_architecture); {hint}")
    return config


def standin_label(config: dict[str, Any]) -> str:
    """The stand-in label of a parsed ``config.json`` (top level, or a full CLIP's ``vision_config``), or ``""``."""
    return str(config.get(STANDIN_KEY) or (config.get("vision_config") or {}).get(STANDIN_KEY) or "")
