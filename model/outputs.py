"""Typed outputs of Vid-LLM (shapes, units and frames documented per field).

Every output, of the whole model and of each component (encoder, adapter, reconstruction branch, metric depth,
3D-VL branch, box head), is a :class:`Output`, i.e. a ``transformers.utils.ModelOutput``: a dataclass that is also
a dict of its non-``None`` fields. Code that walks module outputs through dicts, lists and tuples sees every
tensor, which is what DeepSpeed ZeRO-3 needs to hook each sub-module (gather its parameters before its forward,
release them after, and again around its backward) instead of treating the whole model as one leaf. Attribute
access, ``dataclasses.fields``/``replace`` and pickling work as for plain dataclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.utils import ModelOutput

if TYPE_CHECKING:
    from model.adapter import AdapterOutput
    from model.metric_depth import MetricDepthOutput
    from model.reconstruction import ReconstructionOutput


@dataclass
class Output(ModelOutput):
    """Base of every Vid-LLM output.

    ``ModelOutput.__post_init__`` treats a dict-valued first field as a list of key/value pairs when every other
    field is ``None`` (it would turn ``VidLLMOutput(adapter=AdapterOutput(...), ...)`` inside out, since an
    ``AdapterOutput`` is itself a dict). This ``__post_init__`` instead keeps every field as given and mirrors the
    non-``None`` ones into the dict.
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                self[f.name] = value


@dataclass
class SceneEncoding(Output):
    """Everything the LLM needs about a clip; what the serving cache keeps per scene.

    Attributes:
        tokens: ``[B, M, D]`` scene tokens in the LLM embedding space (after voxel pooling and projection).
        mask: ``[B, M]`` bool, True for real (non-padding) tokens.
        centres: ``[B, M, 3]`` voxel centres in metres, first-camera frame.
        depth: ``[B, S, H, W]`` predicted depth at metric scale (metres).
        extrinsics: ``[B, S, 3, 4]`` predicted camera-from-world with metric translation.
        intrinsics: ``[B, S, 3, 3]`` predicted K in pixels.
        scale: ``[B]`` relative-to-metric scale factor applied to depth and translation.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    centres: torch.Tensor
    depth: torch.Tensor
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    scale: torch.Tensor

    def select(self, index: torch.Tensor | list[int]) -> SceneEncoding:
        """Rows ``index`` of every field (e.g. to repeat one scene for several prompts)."""
        return SceneEncoding(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


@dataclass
class GroundingOutput(Output):
    """Box predictions for one ``<loc>`` per batch item.

    Attributes:
        boxes: ``[B, Q, 6]`` (cx, cy, cz, dx, dy, dz) in metres, first-camera frame; sizes > 0.
        scores: ``[B, Q]`` whether each query is a referred object: *logits* in the training forward (the loss
            takes logits), probabilities in [0, 1] sorted descending from :meth:`VidLLM.ground`.
        text: decoded text answer per item (the verbalised coordinates), empty during training.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    text: list[str] = dataclasses.field(default_factory=list)


@dataclass
class DistillFeatures(Output):
    """Stage-1 features in the common distillation space (per frame).

    Attributes:
        student_geo: ``[B, S, Pt, Dd]`` projected student geometry tokens resampled to the teacher grid.
        teacher_geo: ``[B, S, Pt, Dd]`` projected teacher patch tokens (no gradient).
        student_sem: ``[B, S, Dd]`` projected mean-pooled student semantic tokens (``L_lang``).
        student_sem_tokens: ``[B, S, P, Dd]`` projected student semantic tokens (``L_sc``, Eq. 7).
        teacher_sem: ``[B, S, Dd]`` projected teacher pooled features (no gradient).
    """

    student_geo: torch.Tensor | None = None
    teacher_geo: torch.Tensor | None = None
    student_sem: torch.Tensor | None = None
    student_sem_tokens: torch.Tensor | None = None
    teacher_sem: torch.Tensor | None = None


@dataclass
class VidLLMOutput(Output):
    """Output of :meth:`model.vidllm.VidLLM.forward`; branches that did not run are ``None``.

    Attributes:
        adapter: :class:`model.adapter.AdapterOutput` (geom/lang ``[B, S, P, C]``, bridge ``[B, K, C]``).
        grid: ``(h, w)`` patch grid.
        image_hw: ``(H, W)`` frame size in pixels.
        reconstruction: :class:`model.reconstruction.ReconstructionOutput` (relative scale: pose_enc,
            extrinsics, intrinsics, depth, depth_conf, pose_enc_list).
        metric_depth: :class:`model.metric_depth.MetricDepthOutput` (depth in metres).
        scene: :class:`SceneEncoding` (metric geometry and LLM scene tokens).
        distill: :class:`DistillFeatures` when teacher targets were given.
        lm_logits: ``[B, L', V]`` logits over the spliced sequence (``L' = L - 1 + M`` before padding).
        lm_labels: ``[B, L']`` labels aligned with ``lm_logits`` (-100 on scene tokens, prompt and padding).
        grounding: :class:`GroundingOutput` from the ``<loc>`` hidden state (a zero query for rows without
            ``<loc>``; see ``has_loc``).
        has_loc: ``[B]`` bool, True where the sequence contains ``<loc>``.
    """

    adapter: AdapterOutput
    grid: tuple[int, int]
    image_hw: tuple[int, int]
    reconstruction: ReconstructionOutput | None = None
    metric_depth: MetricDepthOutput | None = None
    scene: SceneEncoding | None = None
    distill: DistillFeatures | None = None
    lm_logits: torch.Tensor | None = None
    lm_labels: torch.Tensor | None = None
    grounding: GroundingOutput | None = None
    has_loc: torch.Tensor | None = None
