"""Semantic teacher: the CLIP vision tower (ViT-L/14-336 in production, LLaVA-3D's), pooled features per frame."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.artifacts import local_dir
from pipelines.teachers.geometry import TORCH_DTYPES, pick_device, to_pixels

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class SemanticTeacher:
    """Frozen ``CLIPVisionModel``; :meth:`__call__` maps frames to the pooled (post-layernorm CLS) feature.

    Frames are preprocessed like CLIP's image processor: shorter side resized (bicubic, antialiased) to the
    model's ``image_size``, centre crop to a square, CLIP mean/std.

    Args:
        path: local path or URI of the HF folder.
        cache_dir: where a remote folder is downloaded.
        dtype: compute dtype name.
        num_gpus: > 0 runs on CUDA when available.
        frames_per_forward: frames per forward pass.
    """

    def __init__(self, path: str, cache_dir: str, dtype: str = "float32", num_gpus: float = 0.0,
                 frames_per_forward: int = 32):
        from transformers import CLIPVisionModel

        self.device, self.dtype = pick_device(num_gpus), TORCH_DTYPES[dtype]
        local = local_dir(path, cache_dir, flag="semantic_teacher")
        self.model = CLIPVisionModel.from_pretrained(local, dtype=self.dtype).to(self.device).eval()
        self.image_size = int(self.model.config.image_size)
        self.hidden_size = int(self.model.config.hidden_size)
        self.frames_per_forward = frames_per_forward

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """``[S, H, W, 3]`` uint8 -> ``[S, 3, image_size, image_size]`` normalised."""
        x = to_pixels(frames, CLIP_MEAN, CLIP_STD, self.device, torch.float32)
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        rh, rw = max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale))
        x = F.interpolate(x, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (rh - self.image_size) // 2, (rw - self.image_size) // 2
        return x[..., top:top + self.image_size, left:left + self.image_size].to(self.dtype)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``[S, H, W, 3]`` uint8 -> ``[S, C]`` float32 pooled features."""
        outs = []
        for start in range(0, len(frames), self.frames_per_forward):
            x = self.preprocess(frames[start:start + self.frames_per_forward])
            outs.append(self.model(pixel_values=x).pooler_output.float().cpu().numpy())
        return np.concatenate(outs)
