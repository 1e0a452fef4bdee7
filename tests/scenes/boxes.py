"""Box corners of annotated objects, for checks against the boxes the scene files declare."""

from __future__ import annotations

import numpy as np


def minmax(obj) -> tuple[np.ndarray, np.ndarray]:
    """(min corner, max corner) in metres of an axis-aligned :class:`pipelines.scenes.types.ObjectBox`."""
    half = np.asarray(obj.size) / 2.0
    return np.asarray(obj.center) - half, np.asarray(obj.center) + half
