"""Reading the endpoint's PLY point clouds back with plyfile, a reader independent of the code that writes them."""

from __future__ import annotations

import io

import numpy as np


def read_ply(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``xyz [N, 3]`` float32 and ``rgb [N, 3]`` uint8 of a binary PLY point cloud (plyfile raises on a bad file)."""
    import plyfile

    ply = plyfile.PlyData.read(io.BytesIO(data))
    assert ply.byte_order == "<" and [e.name for e in ply.elements][0] == "vertex"
    v = ply["vertex"].data
    return (np.stack([v[n] for n in ("x", "y", "z")], axis=-1).astype(np.float32),
            np.stack([v[n] for n in ("red", "green", "blue")], axis=-1).astype(np.uint8))
