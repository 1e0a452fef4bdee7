"""Scene geometry for clients: back-projected coloured points as binary PLY, and the camera trajectory.

Points come from the model's metric depth, intrinsics and camera-from-world extrinsics (world = the first camera),
coloured by the sampled frames. The PLY is ``binary_little_endian 1.0`` with ``float x, y, z`` (metres) and
``uchar red, green, blue`` per vertex, which MeshLab, Open3D and CloudCompare read as-is.
"""

from __future__ import annotations

import numpy as np

PLY_DTYPE = np.dtype([
    ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
])


def camera_centres(extrinsics: np.ndarray) -> np.ndarray:
    """Camera centres in the world frame from camera-from-world ``[S, 3, 4]`` extrinsics: ``C = -R^T t``.

    Returns:
        ``[S, 3]`` float64 metres.
    """
    ext = np.asarray(extrinsics, dtype=np.float64)
    rot, trans = ext[:, :, :3], ext[:, :, 3]
    return -np.einsum("sji,sj->si", rot, trans)


def backproject(
    depth: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray, frames: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """Back-project every valid depth pixel of every frame into the world (first-camera) frame.

    Args:
        depth: ``[S, h, w]`` metres (``<= 0`` or non-finite = invalid).
        extrinsics: ``[S, 3, 4]`` camera-from-world.
        intrinsics: ``[S, 3, 3]`` pixels at the depth resolution.
        frames: ``[S, H, W, 3]`` uint8 colours; sampled at the depth pixel centres when ``H, W`` differ from ``h, w``.
        max_points: cap on the output size; beyond it points are subsampled with a fixed stride (deterministic).

    Returns:
        ``xyz [N, 3]`` float32 metres and ``rgb [N, 3]`` uint8.
    """
    depth = np.asarray(depth, dtype=np.float64)
    num, h, w = depth.shape
    fh, fw = frames.shape[1:3]
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    # Colour of a depth pixel: the frame pixel under its centre.
    cu = np.clip(((u + 0.5) * fw / w).astype(np.int64), 0, fw - 1)
    cv = np.clip(((v + 0.5) * fh / h).astype(np.int64), 0, fh - 1)
    xyz_all, rgb_all = [], []
    for s in range(num):
        d = depth[s]
        valid = np.isfinite(d) & (d > 0)
        if not valid.any():
            continue
        k = np.asarray(intrinsics[s], dtype=np.float64)
        x = (u[valid] - k[0, 2]) / k[0, 0] * d[valid]
        y = (v[valid] - k[1, 2]) / k[1, 1] * d[valid]
        cam = np.stack([x, y, d[valid]], axis=-1)
        ext = np.asarray(extrinsics[s], dtype=np.float64)
        world = (cam - ext[:, 3]) @ ext[:, :3]  # R^T (p - t), row-vector form
        keep = np.isfinite(world).all(axis=1)
        xyz_all.append(world[keep])
        rgb_all.append(frames[s][cv[valid], cu[valid]][keep])
    if not xyz_all:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    xyz = np.concatenate(xyz_all).astype(np.float32)
    rgb = np.concatenate(rgb_all).astype(np.uint8)
    if len(xyz) > max_points:
        idx = np.linspace(0, len(xyz) - 1, max_points).round().astype(np.int64)
        xyz, rgb = xyz[idx], rgb[idx]
    return xyz, rgb


def to_ply(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    """Encode points as binary little-endian PLY (``float`` xyz + ``uchar`` rgb per vertex)."""
    if xyz.shape[0] != rgb.shape[0] or xyz.shape[1:] != (3,) or rgb.shape[1:] != (3,):
        raise ValueError(f"xyz [N,3] and rgb [N,3] must match, got {xyz.shape} and {rgb.shape}")
    vertices = np.empty(len(xyz), dtype=PLY_DTYPE)
    for i, name in enumerate(("x", "y", "z")):
        vertices[name] = xyz[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        vertices[name] = rgb[:, i]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment Vid-LLM reconstruction, metres, first-camera frame\n"
        f"element vertex {len(xyz)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    return header.encode("ascii") + vertices.tobytes()
