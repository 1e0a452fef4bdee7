"""Prediction heads of the reconstruction branch: camera (pose encoding) and DPT (dense maps)."""

from __future__ import annotations

from model.heads.camera import CameraHead
from model.heads.dpt import DPTHead

__all__ = ["CameraHead", "DPTHead"]
