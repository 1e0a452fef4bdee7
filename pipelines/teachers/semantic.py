"""Semantic teacher: the CLIP vision tower (ViT-L/14-336 in production, LLaVA-3D's), pooled features per frame.

**Frame content.** The student pools the semantic tokens of the *whole* frame, so the teacher must describe the
same pixels: CLIP never sees a crop. Two views of the whole frame (``TeachersConfig.semantic_view``):

* ``pad`` (default): the frame is resized (bicubic, antialiased) so its longer side is CLIP's ``image_size``, centred,
  and padded to the square with CLIP's mean colour (zero after normalisation). This is LLaVA-1.5's ``pad`` aspect
  mode, the preprocessing LLaVA-family CLIP features are used with, and it keeps CLIP's position embeddings on the
  grid they were trained on; the price is the padded border (518x378 frames: 27 % of the square).
* ``interpolate``: the longer side is resized to ``image_size`` and the shorter one to the nearest multiple of the
  patch size (aspect error under half a patch), and CLIP's position embeddings are interpolated to that grid: no
  padding tokens, but a grid CLIP was not trained on.

Either way :meth:`SemanticTeacher.view` says where the frame landed (``content_box``); it is recorded with every
clip's targets (``teacher.json``'s ``semantic_view``).

**No real CLIP weights are installable offline.** :func:`write_random_clip` saves a randomly initialised
``CLIPVisionModel`` (ViT-L/14-336's architecture by default) whose ``config.json`` carries
``vidllm_random_standin``; the teachers job logs it and records it with every clip's targets, so data made with a
stand-in is labelled wherever it goes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.artifacts import local_dir
from pipelines.teachers.architecture import STANDIN_KEY, check_architecture, standin_label
from pipelines.teachers.config import SEMANTIC_VIEWS
from pipelines.teachers.geometry import TORCH_DTYPES, pick_device, to_pixels

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: ``CLIPVisionConfig`` of CLIP ViT-L/14-336's vision tower (the paper's semantic teacher, LLaVA-3D's).
CLIP_L_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
              "image_size": 336, "patch_size": 14, "projection_dim": 768}


def write_random_clip(out_dir: str, config=None, seed: int = 0) -> str:
    """Save a RANDOM ``CLIPVisionModel`` stand-in (no trained weights exist offline), labelled in its config.

    Args:
        out_dir: local folder to write (HF layout, safetensors).
        config: a ``CLIPVisionConfig``; default: CLIP ViT-L/14-336's vision tower (1024 wide, 24 layers, 336 px).
        seed: torch seed of the random initialisation.

    Returns:
        ``out_dir``.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = config or CLIPVisionConfig(**CLIP_L_336)
    shape = f"{config.num_hidden_layers} layers, width {config.hidden_size}, {config.image_size} px"
    setattr(config, STANDIN_KEY, f"random CLIPVisionModel (seed {seed}; {shape}) standing in for CLIP "
                                 "ViT-L/14-336: no trained CLIP weights are installable offline")
    torch.manual_seed(seed)
    CLIPVisionModel(config).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


class SemanticTeacher:
    """Frozen ``CLIPVisionModel``; :meth:`__call__` maps frames to the pooled (post-layernorm CLS) feature.

    Args:
        path: local path or URI of the HF folder (``CLIPVisionModel``, or ``CLIPModel`` whose vision tower is used).
        cache_dir: where a remote folder is downloaded.
        dtype: compute dtype name.
        num_gpus: > 0 runs on CUDA when available.
        frames_per_forward: frames per forward pass.
        view: ``pad`` or ``interpolate`` (module docstring).
        architecture: the expected HF class (checked against ``config.json`` before loading).
    """

    def __init__(self, path: str, cache_dir: str, dtype: str = "float32", num_gpus: float = 0.0,
                 frames_per_forward: int = 32, view: str = "pad", architecture: str = "CLIPVisionModel"):
        from transformers import CLIPVisionModel

        self.device, self.dtype = pick_device(num_gpus), TORCH_DTYPES[dtype]
        local = local_dir(path, cache_dir, flag="semantic_teacher")
        config = check_architecture(local, "semantic", architecture, source=path)
        self.model = CLIPVisionModel.from_pretrained(local, dtype=self.dtype).to(self.device).eval()
        self.image_size = int(self.model.config.image_size)
        self.patch_size = int(self.model.config.patch_size)
        self.hidden_size = int(self.model.config.hidden_size)
        self.frames_per_forward = frames_per_forward
        if view not in SEMANTIC_VIEWS:
            raise ValueError(f"semantic view must be one of {SEMANTIC_VIEWS}, got {view!r}")
        self.view_policy = view
        self.standin = standin_label(config)

    def view(self, height: int, width: int) -> dict[str, Any]:
        """Where a ``height`` x ``width`` frame lands in CLIP's input.

        Returns:
            ``policy``; ``input_size`` ``[W, H]`` of the model input; ``content_box`` ``[x0, y0, x1, y1]`` of the
            resized frame inside it (pixels, end-exclusive); ``frame_size`` ``[width, height]``.
        """
        s = self.image_size
        scale = s / max(height, width)
        if self.view_policy == "pad":
            rh, rw = max(1, round(height * scale)), max(1, round(width * scale))
            top, left = (s - rh) // 2, (s - rw) // 2
            return {"policy": "pad", "input_size": [s, s], "content_box": [left, top, left + rw, top + rh],
                    "frame_size": [width, height]}
        p = self.patch_size
        rh, rw = (max(p, round(side * scale / p) * p) for side in (height, width))
        return {"policy": "interpolate", "input_size": [rw, rh], "content_box": [0, 0, rw, rh],
                "frame_size": [width, height]}

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """``[S, H, W, 3]`` uint8 -> ``[S, 3, h, w]`` CLIP-normalised model input showing the whole frame."""
        x = to_pixels(frames, CLIP_MEAN, CLIP_STD, self.device, torch.float32)
        view = self.view(*x.shape[-2:])
        x0, y0, x1, y1 = view["content_box"]
        x = F.interpolate(x, size=(y1 - y0, x1 - x0), mode="bicubic", align_corners=False, antialias=True)
        w, h = view["input_size"]
        # Zero after normalisation is CLIP's mean colour: the padding LLaVA's ``pad`` mode uses.
        x = F.pad(x, (x0, w - x1, y0, h - y1))
        return x.to(self.dtype)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``[S, H, W, 3]`` uint8 -> ``[S, C]`` float32 pooled features."""
        outs = []
        for start in range(0, len(frames), self.frames_per_forward):
            x = self.preprocess(frames[start:start + self.frames_per_forward])
            out = self.model(pixel_values=x, interpolate_pos_encoding=self.view_policy == "interpolate")
            outs.append(out.pooler_output.float().cpu().numpy())
        return np.concatenate(outs)
