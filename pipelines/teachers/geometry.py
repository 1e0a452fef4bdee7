"""Geometry teacher: the DINOv2-with-registers encoder VGGT-1B starts from, giving patch tokens per frame.

Teacher folders on object storage are downloaded once per node into the artifact cache of
:mod:`pipelines.artifacts` (atomically renamed into place, so concurrent actors never see half a folder).
"""

from __future__ import annotations

import numpy as np
import torch

from pipelines.artifacts import local_dir
from pipelines.teachers.architecture import check_architecture

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(num_gpus: float) -> torch.device:
    return torch.device("cuda") if num_gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def to_pixels(frames: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], device, dtype) -> torch.Tensor:
    """``[S, H, W, 3]`` uint8 -> ``[S, 3, H, W]`` normalised tensor."""
    x = torch.from_numpy(np.array(frames, dtype=np.uint8))  # a writable copy of Ray's read-only view
    x = x.to(device).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return ((x - m) / s).to(dtype)


class GeometryTeacher:
    """Frozen ``Dinov2WithRegistersModel`` (or plain ``Dinov2Model``); :meth:`__call__` maps frames to patch tokens.

    Args:
        path: local path or URI of the HF folder (``config.json`` + safetensors).
        cache_dir: where a remote folder is downloaded.
        dtype: compute dtype name.
        num_gpus: > 0 runs on CUDA when available.
        frames_per_forward: frames per forward pass (bounds activation memory).
        architecture: the expected HF class, checked against ``config.json`` before loading.
    """

    def __init__(self, path: str, cache_dir: str, dtype: str = "float32", num_gpus: float = 0.0,
                 frames_per_forward: int = 32, architecture: str = "Dinov2WithRegistersModel"):
        from transformers import Dinov2Model, Dinov2WithRegistersModel

        self.device, self.dtype = pick_device(num_gpus), TORCH_DTYPES[dtype]
        local = local_dir(path, cache_dir, flag="geometry_teacher")
        check_architecture(local, "geometry", architecture, source=path)
        model_cls = {"Dinov2WithRegistersModel": Dinov2WithRegistersModel, "Dinov2Model": Dinov2Model}[architecture]
        self.model = model_cls.from_pretrained(local, dtype=self.dtype).to(self.device).eval()
        self.patch_size = int(self.model.config.patch_size)
        self.num_prefix = 1 + int(getattr(self.model.config, "num_register_tokens", 0))
        self.hidden_size = int(self.model.config.hidden_size)
        self.frames_per_forward = frames_per_forward

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Patch tokens of each frame.

        Args:
            frames: ``[S, H, W, 3]`` uint8 RGB, H and W multiples of the patch size.

        Returns:
            ``[S, (H/p) * (W/p), C]`` float32 last-layer patch tokens (CLS and any register tokens dropped), row-major
            over the patch grid.
        """
        h, w = frames.shape[1:3]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"frame size {w}x{h} is not a multiple of the teacher patch size {self.patch_size}")
        outs = []
        for start in range(0, len(frames), self.frames_per_forward):
            x = to_pixels(frames[start:start + self.frames_per_forward], IMAGENET_MEAN, IMAGENET_STD,
                          self.device, self.dtype)
            hidden = self.model(pixel_values=x).last_hidden_state[:, self.num_prefix:]
            outs.append(hidden.float().cpu().numpy())
        return np.concatenate(outs)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size
