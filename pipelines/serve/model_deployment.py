"""The model deployment: one Vid-LLM per replica, request batching, and a per-replica scene-encoding cache.

Request flow inside a replica:

* ``register(scene_id, frames)`` runs the video encoder / reconstruction (``VidLLM.encode_scene``) and caches the
  resulting ``SceneEncoding`` (on the model's device) in a byte-bounded LRU.
* ``answer`` / ``caption`` / ``ground`` / ``geometry`` look the encoding up; on a miss they return
  :class:`SceneMiss` and the ingress repeats the call with the scene's frames attached, which the replica
  encodes (and caches) before answering, so evictions and replicas that never saw a scene cost one re-encode,
  never a wrong answer.
* Calls of one kind arriving together run as one model batch (``@serve.batch``; size and wait from the config).
  Cached encodings of different scenes are concatenated along the batch axis, padding the variable number of
  scene tokens with masked-out zeros. A batch that raises is run again item by item (:func:`isolate_failures`),
  so a failing request fails alone and its neighbours are answered.
* Client text is turned into the model's prompt by the exported processor (:class:`model.VidLLMProcessor`: the
  prompt template, and the chat template when the model was trained with one) on its own before it joins a batch:
  text the tokenizer refuses, or whose prompt would not fit the model's context next to the scene tokens and the
  answer, is a :class:`ModelInputError` (422 naming the field) for that request only.

Routing affinity: the ingress tags each call with ``multiplexed_model_id = scene_id``. The replica "loads" that id
through ``@serve.multiplexed`` (a no-op that only advertises the id), so Serve's router prefers the replica that
already holds the scene's encoding. The multiplexed bookkeeping only steers routing; the LRU above decides what is
actually kept.

Model calls run on one dedicated thread so the replica's event loop keeps answering health checks and queueing
requests while a batch computes; no exception escapes as a crash (client errors are typed, the rest propagate to
the ingress as an error response).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import serve

from model.tokenizer import LOC_TOKEN
from pipelines.artifacts import load_model_and_processor, resolve_model
from pipelines.serve.cache import ByteLRU
from pipelines.serve.config import ServeConfig
from pipelines.serve.errors import ModelInputError
from pipelines.serve.pointcloud import camera_centres
from pipelines.serve.video_input import SamplingSpec

logger = logging.getLogger("ray.serve")

# Scene ids a replica advertises to the router (an affinity hint; the byte-bounded LRU bounds memory).
_ROUTING_SLOTS = 1024
# Recent batch sizes kept for stats() (a bounded window, not a log that grows with every batch).
_BATCH_SIZE_WINDOW = 256


@dataclass(frozen=True)
class SceneMiss:
    """Returned (not raised) by a replica that does not hold ``scene_id``'s encoding and was given no frames."""

    scene_id: str


@dataclass(frozen=True)
class Failed:
    """One item's failure inside a batch, returned in its slot so that only its own caller raises."""

    error: Exception


def unwrap(result: Any) -> Any:
    """The value of one batch slot; re-raise the item's own error if it failed."""
    if isinstance(result, Failed):
        raise result.error
    return result


async def isolate_failures(run: Callable[[list[Any]], Awaitable[list[Any]]], items: list[Any]) -> list[Any]:
    """``run(items)``; if it raises, ``run([item])`` for each item, so each slot holds a result or its own
    :class:`Failed`. One bad item then costs its neighbours a second, single-item run, never their answer."""
    try:
        return await run(items)
    except Exception as exc:  # noqa: BLE001 - handed back per item below
        if len(items) == 1:
            return [Failed(exc)]
        logger.warning("a batch of %d failed (%s: %s); running its items one by one", len(items),
                       type(exc).__name__, exc)
    out: list[Any] = []
    for item in items:
        try:
            out.extend(await run([item]))
        except Exception as exc:  # noqa: BLE001 - this item's own failure
            out.append(Failed(exc))
    return out


def concat_encodings(encodings: list[Any]) -> Any:
    """Stack single-scene encodings (``B = 1`` each) into one batch, zero-padding dimension 1 where it differs.

    Scene tokens are voxel-pooled, so ``tokens``/``mask``/``centres`` have a per-scene length ``M``; the padding
    is masked out because ``mask`` pads with ``False``.
    """
    cls = type(encodings[0])
    fields: dict[str, torch.Tensor] = {}
    for f in dataclasses.fields(cls):
        parts = [getattr(e, f.name) for e in encodings]
        if parts[0].dim() >= 2 and len({p.shape[1] for p in parts}) > 1:
            longest = max(p.shape[1] for p in parts)
            padded = []
            for p in parts:
                pad = p.new_zeros((p.shape[0], longest - p.shape[1], *p.shape[2:]))
                padded.append(torch.cat([p, pad], dim=1))
            parts = padded
        fields[f.name] = torch.cat(parts, dim=0)
    return cls(**fields)


def scene_summary(encoding: Any) -> dict[str, Any]:
    """What registration returns: frames used, metric scale and camera centres from a ``B = 1`` encoding."""
    extrinsics = encoding.extrinsics[0].float().cpu().numpy()
    trajectory = camera_centres(extrinsics)
    scale = float(encoding.scale[0])
    return {
        "frames_used": int(extrinsics.shape[0]),
        "metric_scale": scale,
        "camera_trajectory": [[float(v) for v in row] for row in trajectory],
    }


@serve.deployment(name="VidLLMModel")
class VidLLMModel:
    """One Vid-LLM replica. Options (replicas, GPUs, queue limits, autoscaling) are set by :func:`app.build_app`.

    Args:
        config: ``ServeConfig.to_dict()`` (plain data, so the replica gets everything through its arguments).
    """

    def __init__(self, config: dict[str, Any]):
        self._cfg = ServeConfig.from_dict(config)
        checkpoint = resolve_model(self._cfg.model_uri, os.environ.get("MLFLOW_TRACKING_URI"),
                                   self._cfg.model_cache_dir).local_dir
        self._model, self._processor = load_model_and_processor(checkpoint, self._cfg.device,
                                                                self._cfg.torch_dtype())
        self._device = torch.device(self._cfg.device)
        size = self._cfg.limits.frame_size or int(self._model.vidllm_config.encoder.dinov2["image_size"])
        if size % self._processor.patch_size:
            raise ValueError(f"limits.frame_size {size} is not a multiple of the model's patch size "
                             f"{self._processor.patch_size}")
        self._spec = SamplingSpec(num_frames=self._cfg.limits.num_frames, height=size, width=size)
        self._cache: ByteLRU[Any] = ByteLRU(self._cfg.model.cache_bytes)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidllm-model")
        # The decorator arguments below are placeholders; the configured values are applied per replica here.
        for batched in (self._encode_batch, self._answer_batch, self._caption_batch, self._ground_batch):
            batched.set_max_batch_size(self._cfg.model.max_batch_size)
            batched.set_batch_wait_timeout_s(self._cfg.model.batch_wait_timeout_s)
        self.batch_sizes: deque[int] = deque(maxlen=_BATCH_SIZE_WINDOW)
        self._max_positions = getattr(self._model.llm.config, "max_position_embeddings", None)
        # The task tokens (<scene>, <loc>) are among the tokenizer's special tokens.
        self._reserved = sorted({str(t) for t in self._processor.tokenizer.all_special_tokens})
        logger.info("VidLLM loaded from %s (%s, %s); sampling %s", checkpoint, self._cfg.device,
                    self._model.dtype, self._spec)

    # ---- control -------------------------------------------------------------------------------------------

    def input_spec(self) -> dict[str, Any]:
        """``num_frames`` and the ``height``/``width`` frames must be resized to, and ``reserved_text``: the
        tokenizer's special tokens, which client text must not contain (they would rewrite the prompt)."""
        return {"num_frames": self._spec.num_frames, "height": self._spec.height, "width": self._spec.width,
                "reserved_text": list(self._reserved)}

    def stats(self) -> dict[str, Any]:
        """Cache statistics and the last ``_BATCH_SIZE_WINDOW`` batch sizes of this replica."""
        return {"cache": self._cache.stats(), "batch_sizes": list(self.batch_sizes)}

    def _check_text(self, field: str, prompt: str, encoding: Any, answer_prefix: str = "") -> None:
        """Refuse (422) a prompt around client text that the tokenizer cannot encode, or that does not fit the
        model's context next to the scene's tokens and the answer; this runs per request, before the text joins a
        batch. ``prompt`` is the processor's prompt (template and client text), tokenized exactly as the batch
        will tokenize it."""
        try:
            count = len(self._processor.prompt_ids(prompt, answer_prefix))
        except Exception as exc:  # noqa: BLE001 - any tokenizer failure is this text's fault
            raise ModelInputError(f"{field} cannot be tokenized ({type(exc).__name__})", field) from exc
        if self._max_positions is None:
            return
        # The prompt's one <scene> id becomes the scene's tokens.
        needed = count - 1 + int(encoding.mask.sum()) + self._cfg.limits.max_new_tokens
        if needed > self._max_positions:
            raise ModelInputError(
                f"{field} makes a {count}-token prompt; with the scene and the answer it needs {needed} positions, "
                f"the model has {self._max_positions}", field)

    @serve.multiplexed(max_num_models_per_replica=_ROUTING_SLOTS)
    async def _route_scene(self, scene_id: str) -> str:
        return scene_id

    async def _claim_routing(self) -> None:
        scene_id = serve.get_multiplexed_model_id()
        if scene_id:
            await self._route_scene(scene_id)

    async def _run(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _with_scene(self, scene_id: str, frames: np.ndarray | None, step: Callable[[Any], Awaitable[Any]]):
        """Run ``step(encoding)`` on the scene's cached encoding; on a miss, encode ``frames`` first if given.

        Without frames, a miss returns :class:`SceneMiss` (a normal outcome after an eviction, so not an error
        that Serve would log with a traceback); the ingress then repeats the call with the frames attached.
        Encoding and answering happen in that one call, so the retry cannot land on yet another replica that
        lacks the scene.
        """
        await self._claim_routing()
        encoding = self._cache.get(scene_id)
        if encoding is None:
            if frames is None:
                return SceneMiss(scene_id)
            expected = (self._spec.num_frames, self._spec.height, self._spec.width, 3)
            if frames.dtype != np.uint8 or tuple(frames.shape) != expected:
                raise ModelInputError(f"frames must be uint8 {expected}, got {frames.dtype} {tuple(frames.shape)}")
            encoding = unwrap(await self._encode_batch(frames))
            self._cache.put(scene_id, encoding)
        return await step(encoding)

    # ---- public calls (one per request; ``frames`` only when (re-)sending a scene) -----------------------------

    async def register(self, scene_id: str, frames: np.ndarray) -> dict[str, Any]:
        """Encode ``frames`` ``[S, H, W, 3]`` uint8 (unless cached) and return the scene summary."""

        async def summary(enc: Any) -> dict[str, Any]:
            return scene_summary(enc)

        return await self._with_scene(scene_id, frames, summary)

    async def answer(self, scene_id: str, question: str, frames: np.ndarray | None = None) -> str | SceneMiss:
        async def step(enc: Any) -> str:
            self._check_text("question", self._processor.qa_prompt(question), enc)
            return unwrap(await self._answer_batch((enc, question)))

        return await self._with_scene(scene_id, frames, step)

    async def caption(self, scene_id: str, box: list[float], frames: np.ndarray | None = None) -> str | SceneMiss:
        async def step(enc: Any) -> str:
            return unwrap(await self._caption_batch((enc, box)))

        return await self._with_scene(scene_id, frames, step)

    async def ground(
        self, scene_id: str, description: str, frames: np.ndarray | None = None
    ) -> list[dict[str, Any]] | SceneMiss:
        async def step(enc: Any) -> list[dict[str, Any]]:
            self._check_text("description", self._processor.grounding_prompt(description), enc, LOC_TOKEN)
            return unwrap(await self._ground_batch((enc, description)))

        return await self._with_scene(scene_id, frames, step)

    async def geometry(self, scene_id: str, frames: np.ndarray | None = None) -> dict[str, np.ndarray] | SceneMiss:
        """Metric depth ``[S, H, W]``, camera-from-world ``[S, 3, 4]`` and intrinsics ``[S, 3, 3]`` (numpy)."""

        async def arrays(enc: Any) -> dict[str, np.ndarray]:
            return {
                "depth": enc.depth[0].float().cpu().numpy(),
                "extrinsics": enc.extrinsics[0].float().cpu().numpy(),
                "intrinsics": enc.intrinsics[0].float().cpu().numpy(),
            }

        return await self._with_scene(scene_id, frames, arrays)

    # ---- batched model steps ---------------------------------------------------------------------------------

    # Each batched step returns one slot per request: its result, or its own :class:`Failed`.

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, clips: list[np.ndarray]) -> list[Any]:
        self.batch_sizes.append(len(clips))

        def work(batch: list[np.ndarray]) -> list[Any]:
            frames = torch.from_numpy(np.stack(batch)).to(self._device)  # [B, S, H, W, 3] uint8
            # [B, S, 3, H, W] in [0, 1], in the weights' dtype
            frames = self._processor.frames_to_tensor(frames).to(self._model.dtype)
            with torch.inference_mode():
                encoding = self._model.encode_scene(frames)
            return [encoding.select([i]) for i in range(len(batch))]

        return await isolate_failures(lambda batch: self._run(work, batch), clips)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _answer_batch(self, items: list[tuple[Any, str]]) -> list[str]:
        self.batch_sizes.append(len(items))

        def work(batch: list[tuple[Any, str]]) -> list[str]:
            scene = concat_encodings([enc for enc, _ in batch])
            with torch.inference_mode():
                return self._model.answer(
                    scene, [q for _, q in batch], self._processor, max_new_tokens=self._cfg.limits.max_new_tokens
                )

        return await isolate_failures(lambda batch: self._run(work, batch), items)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _caption_batch(self, items: list[tuple[Any, list[float]]]) -> list[str]:
        self.batch_sizes.append(len(items))

        def work(batch: list[tuple[Any, list[float]]]) -> list[str]:
            scene = concat_encodings([enc for enc, _ in batch])
            boxes = torch.tensor([b for _, b in batch], dtype=torch.float32, device=self._device)  # [B, 6]
            with torch.inference_mode():
                return self._model.caption(
                    scene, boxes, self._processor, max_new_tokens=self._cfg.limits.max_new_tokens
                )

        return await isolate_failures(lambda batch: self._run(work, batch), items)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _ground_batch(self, items: list[tuple[Any, str]]) -> list[list[dict[str, Any]]]:
        self.batch_sizes.append(len(items))
        top_k = self._cfg.limits.ground_top_k

        def work(batch: list[tuple[Any, str]]) -> list[list[dict[str, Any]]]:
            scene = concat_encodings([enc for enc, _ in batch])
            with torch.inference_mode():
                out = self._model.ground(scene, [d for _, d in batch], self._processor)
            return ranked_boxes(out.boxes.float().cpu().numpy(), out.scores.float().cpu().numpy(), top_k)

        return await isolate_failures(lambda batch: self._run(work, batch), items)


def ranked_boxes(boxes: np.ndarray, scores: np.ndarray, top_k: int) -> list[list[dict[str, Any]]]:
    """Per item, up to ``top_k`` boxes ``[B, Q, 6]`` by descending score ``[B, Q]``; a box the client cannot use
    (non-finite, or not a volume) is dropped rather than returned."""
    results = []
    for b in range(boxes.shape[0]):
        order = np.argsort(-scores[b], kind="stable")
        kept = []
        for q in order:
            box, score = boxes[b, q], float(scores[b, q])
            if not (np.isfinite(box).all() and (box[3:] > 0).all() and math.isfinite(score)):
                continue
            kept.append({"center": box[:3].tolist(), "size": box[3:].tolist(), "score": score})
            if len(kept) == top_k:
                break
        results.append(kept)
    return results
