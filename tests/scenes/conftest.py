"""Fixtures for the scene-format tests: the small colour and depth cameras the synthetic frames use."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.scenes.types import Intrinsics
from tests.scenes.frames import COLOR_H, COLOR_W, DEPTH_H, DEPTH_W


@pytest.fixture
def color_intrinsics() -> Intrinsics:
    return Intrinsics(np.array([[90.5, 0.0, 47.75], [0.0, 91.25, 35.5], [0.0, 0.0, 1.0]]), COLOR_W, COLOR_H)


@pytest.fixture
def depth_intrinsics() -> Intrinsics:
    return Intrinsics(
        np.array([[45.25, 0.0, 23.875], [0.0, 45.625, 17.75], [0.0, 0.0, 1.0]]), DEPTH_W, DEPTH_H
    )
