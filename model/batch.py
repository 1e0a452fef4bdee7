"""The training/inference batch consumed by :meth:`model.vidllm.VidLLM.forward`.

Every field is a tensor (or ``None`` when the sample set has no such target). Frames are the only required
field; the targets present decide which losses :class:`model.losses.MultitaskLoss` can compute. Like the outputs
it is a ``ModelOutput`` (:class:`model.outputs.Output`), so DeepSpeed ZeRO-3 sees the tensors of the batch that
``VidLLM.forward`` takes as its input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from model.outputs import Output

# Fields that feed the network (cast with the model's compute dtype); everything else is a target.
MODEL_INPUTS = frozenset({"frames", "teacher_geo", "teacher_sem"})


@dataclass
class VidLLMBatch(Output):
    """A batch of video clips with optional geometric, teacher and language targets.

    Attributes:
        frames: ``[B, S, 3, H, W]`` float in [0, 1]; H and W multiples of the patch size (14).
        depth: ``[B, S, H, W]`` float32 GT z-depth in metres at frame resolution, 0 = invalid.
        extrinsics: ``[B, S, 3, 4]`` GT camera-from-world, world = first camera of the clip, metres.
        intrinsics: ``[B, S, 3, 3]`` GT pinhole K in pixels at frame resolution.
        teacher_geo: ``[B, S, Pt, Ct]`` geometry-teacher patch tokens (no CLS/registers), row-major grid.
        teacher_sem: ``[B, S, Cs]`` semantic-teacher pooled feature per frame.
        teacher_grid: ``(ht, wt)`` patch grid of ``teacher_geo``; ``None`` = inferred (``ht * wt = Pt`` with the
            aspect ratio closest to the student grid's).
        input_ids: ``[B, L]`` prompt + answer token ids containing exactly one ``<scene>`` per row.
        attention_mask: ``[B, L]`` 1 for real tokens, 0 for padding (either side).
        labels: ``[B, L]`` next-token targets aligned with ``input_ids`` (the model shifts), -100 = ignored.
        boxes: ``[B, T, 6]`` GT boxes (cx, cy, cz, dx, dy, dz) in metres, first-camera frame.
        box_mask: ``[B, T]`` bool, True for real GT boxes.
    """

    frames: torch.Tensor
    depth: torch.Tensor | None = None
    extrinsics: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    teacher_geo: torch.Tensor | None = None
    teacher_sem: torch.Tensor | None = None
    teacher_grid: tuple[int, int] | None = None
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    box_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frames.dim() != 5 or self.frames.shape[2] != 3:
            raise ValueError(f"VidLLMBatch.frames must be [B,S,3,H,W], got {tuple(self.frames.shape)}")
        b, s, _, h, w = self.frames.shape
        expected = {
            "depth": (b, s, h, w), "extrinsics": (b, s, 3, 4), "intrinsics": (b, s, 3, 3),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"VidLLMBatch.{name} must be {list(shape)}, got {list(value.shape)}")
        if self.teacher_geo is not None and (self.teacher_geo.dim() != 4 or self.teacher_geo.shape[:2] != (b, s)):
            raise ValueError(f"VidLLMBatch.teacher_geo must be [B={b},S={s},Pt,Ct], got "
                             f"{list(self.teacher_geo.shape)}")
        if self.teacher_sem is not None and (self.teacher_sem.dim() != 3 or self.teacher_sem.shape[:2] != (b, s)):
            raise ValueError(f"VidLLMBatch.teacher_sem must be [B={b},S={s},Cs], got "
                             f"{list(self.teacher_sem.shape)}")
        if self.input_ids is not None:
            if self.input_ids.dim() != 2 or self.input_ids.shape[0] != b:
                raise ValueError(f"VidLLMBatch.input_ids must be [B={b},L], got {list(self.input_ids.shape)}")
            for name in ("attention_mask", "labels"):
                value = getattr(self, name)
                if value is not None and value.shape != self.input_ids.shape:
                    raise ValueError(f"VidLLMBatch.{name} must match input_ids {list(self.input_ids.shape)}, "
                                     f"got {list(value.shape)}")
        elif self.labels is not None:
            raise ValueError("VidLLMBatch.labels given without input_ids")
        if self.boxes is not None:
            if self.boxes.dim() != 3 or self.boxes.shape[0] != b or self.boxes.shape[-1] != 6:
                raise ValueError(f"VidLLMBatch.boxes must be [B={b},T,6], got {list(self.boxes.shape)}")
            if self.box_mask is None or self.box_mask.shape != self.boxes.shape[:2]:
                raise ValueError("VidLLMBatch.box_mask must be given with boxes, shape [B,T]")

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> VidLLMBatch:
        """Move every tensor to ``device``; cast the model *inputs* to ``dtype`` when given.

        Only :data:`MODEL_INPUTS` (frames and teacher features, which enter bf16 layers) are cast. Geometric
        targets (depth, extrinsics, intrinsics, boxes) stay fp32: bf16 would quantise a 5 m box to 2-3 cm and
        poses and depth likewise, and the losses compute geometry in fp32 anyway.
        """
        moved = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                cast = dtype is not None and f.name in MODEL_INPUTS and value.is_floating_point()
                value = value.to(device, dtype=dtype if cast else None)
            moved[f.name] = value
        return VidLLMBatch(**moved)
