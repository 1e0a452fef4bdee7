"""The MLflow pyfunc flavour of a Vid-LLM checkpoint: ``mlflow.pyfunc.load_model(uri).predict(...)`` answers
questions about videos, so every registered version works with MLflow's own loaders and ``mlflow models serve``.

Layout of the run's ``model`` artifact written by :func:`save_pyfunc_model`: ``MLmodel`` (flavour, signature),
the environment files, ``python_model.pkl`` (a reference to :class:`VidLLMPyfunc`, which must be importable: the
project is installed where the model is loaded) and ``artifacts/<name>/``, the HF-layout checkpoint itself, which
:mod:`pipelines.artifacts` finds for eval, serve and Stage 2.

Input schema (a pandas DataFrame, or a list of dicts, one row per question):

    =============  ========  ==========================================================================
    column         type      meaning
    =============  ========  ==========================================================================
    question       string    the question (a ScanQA/SQA3D-style question about the scene)
    video          string    local path or URI (``s3://``) of the scene video; or ...
    video_bytes    binary    ... the video file's bytes (exactly one of ``video``/``video_bytes``)
    =============  ========  ==========================================================================

Params: ``max_new_tokens`` (default 16), ``num_frames`` (frames sampled from the video, default 8) and
``frame_size`` (side of the square frames the model is fed; default 0: the encoder's ``image_size``). Output: a
DataFrame with one column ``answer``. Frames are sampled and resized exactly as the HTTP endpoint does
(:func:`pipelines.serve.video_input.sample_clip`) and questions prompted through the checkpoint's own processor
(:class:`model.VidLLMProcessor`), so the same video and question get the same answer.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import mlflow.pyfunc

#: Distributions the flavour needs at load time (pinned to the versions it was saved with).
REQUIREMENTS = ("torch", "transformers", "safetensors", "av", "pillow", "numpy", "fsspec", "s3fs", "pandas")
CHECKPOINT_ARTIFACT = "checkpoint"


def signature():
    """The model signature: inputs ``question`` + ``video``/``video_bytes``, output ``answer``, three params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "question"), ColSpec("string", "video", required=False),
                       ColSpec("binary", "video_bytes", required=False)]),
        outputs=Schema([ColSpec("string", "answer")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 16), ParamSpec("num_frames", "long", 8),
                            ParamSpec("frame_size", "long", 0)]),
    )


class VidLLMPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint once (:meth:`load_context`) and answers one question per input row."""

    def load_context(self, context) -> None:
        from pipelines.artifacts import load_model_and_processor

        self.model, self.processor = load_model_and_processor(context.artifacts[CHECKPOINT_ARTIFACT])
        self.size = int(self.model.vidllm_config.encoder.dinov2["image_size"])

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd
        import torch

        params = {"max_new_tokens": 16, "num_frames": 8, "frame_size": 0, **(params or {})}
        size = int(params["frame_size"]) or self.size
        if size % self.processor.patch_size:
            raise ValueError(f"frame_size {size} is not a multiple of the model's patch size "
                             f"{self.processor.patch_size}")
        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        answers = []
        for i, row in enumerate(rows):
            frames = self._frames(row, i, int(params["num_frames"]), size)
            with torch.inference_mode():
                scene = self.model.encode_scene(self.processor.frames_to_tensor(frames[None]))
                answers += self.model.answer(scene, [str(row["question"])], self.processor,
                                             max_new_tokens=int(params["max_new_tokens"]))
        return pd.DataFrame({"answer": answers})

    def _frames(self, row: dict[str, Any], index: int, num_frames: int, size: int):
        from pipelines import storage
        from pipelines.serve.config import LimitsConfig
        from pipelines.serve.errors import ApiError
        from pipelines.serve.video_input import SamplingSpec, sample_clip

        video, data = row.get("video"), row.get("video_bytes")
        if bool(video) == (data is not None and len(data) > 0):
            raise ValueError(f"row {index}: give exactly one of 'video' (path or URI) and 'video_bytes'")
        if video:
            data = storage.read_bytes(str(video))
        try:
            return sample_clip(bytes(data), SamplingSpec(num_frames, size, size), LimitsConfig()).frames
        except ApiError as err:
            raise ValueError(f"row {index}: {err.detail}") from err


def save_pyfunc_model(checkpoint_dir: str, dest: str) -> None:
    """Write the pyfunc model over the local checkpoint ``checkpoint_dir`` to the new directory ``dest``."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in REQUIREMENTS]
    mlflow.pyfunc.save_model(dest, python_model=VidLLMPyfunc(), artifacts={CHECKPOINT_ARTIFACT: checkpoint_dir},
                             signature=signature(), pip_requirements=pins)
