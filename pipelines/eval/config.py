"""Typed, validated configuration of the evaluation job (``python -m pipelines.eval``).

:class:`EvalJobConfig` holds what the job does (tasks, which clip and annotations are scored, generation lengths)
and how Ray runs it (clips per batch, actor pool size, GPUs per actor); the scoring protocol itself is the
harness's :class:`~pipelines.eval.harness.EvalConfig`, nested as ``protocol``. The resolved config is saved as
``<out>/eval_config.json`` and logged as MLflow params. Loading, type coercion and error messages follow
:mod:`pipelines.config` (presets ``default`` and ``tiny``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipelines import config as pconfig
from pipelines.eval.harness import EvalConfig
from pipelines.eval.predictions import TASKS
from pipelines.eval.proposals import MASK_FORMATS, PROPOSAL_FORMATS

QUERY_SELECTIONS: tuple[str, ...] = ("stratified", "first")


@dataclass(frozen=True)
class EvalJobConfig:
    """How a model is evaluated.

    Attributes:
        tasks: benchmarks to run, a subset of :data:`pipelines.eval.predictions.TASKS`.
        split: keep only annotation entries of this split (``train``/``val``/``test``); None keeps every entry the
            shards (or ``--annotations``) carry for the evaluated scenes.
        clip_index: which clip of each scene is evaluated (one clip per scene: the benchmarks key answers by
            question and boxes by scene). None takes the scene's lowest clip index.
        max_queries_per_task: cap on the questions / queries / objects per task and scene (smoke runs); None = all.
        query_selection: which entries a cap keeps: ``stratified`` (round robin over the groups of the scene, in
            file order within a group: QA question families, ScanRefer target objects, Multi3DRefer eval types,
            so that a cap of N does not take N questions of one family) or ``first`` (the first N, file order).
        batch_size: clips per ``map_batches`` batch handed to one model actor.
        prompt_batch_size: prompts generated together for one clip.
        concurrency: number of model actors (each loads the model once).
        num_gpus: GPUs per model actor (0 = CPU inference).
        num_cpus: CPUs per model actor.
        max_new_tokens_answer: generation length of QA answers.
        max_new_tokens_caption: generation length of Scan2Cap captions.
        max_boxes: boxes kept per Multi3DRefer query (highest scores first; ScanRefer keeps the top box).
        min_box_score: Multi3DRefer keeps boxes with a score at least this (the top box of a ScanRefer query is
            always kept).
        cache_dir: local directory for downloaded checkpoints ("" = the system temp dir).
        experiment: MLflow experiment name.
        num_examples: example predictions drawn in the report.
        plots: draw plots (needs matplotlib).
        protocol: the harness's scoring protocol (including the grounding and captioning protocols).
        proposals: instance proposals (file or folder URI, :mod:`pipelines.eval.proposals`); needed when a protocol
            list of ``protocol`` has ``proposals``. Grounding boxes are snapped to them and, for Scan2Cap, every
            proposal of a scene is captioned.
        proposals_format: one of :data:`~pipelines.eval.proposals.PROPOSAL_FORMATS`.
        proposals_scans_root: ScanNet root with ``scans/<scene_id>/`` meshes (mask formats only).
        max_proposals_per_scene: caption at most this many proposals per scene (highest scores first, else file
            order; Video-3D LLM and VG-LLM use LEO's first 50); None = all.
    """

    tasks: tuple[str, ...] = TASKS
    split: str | None = None
    clip_index: int | None = None
    max_queries_per_task: int | None = None
    query_selection: str = "stratified"
    batch_size: int = 2
    prompt_batch_size: int = 16
    concurrency: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    max_new_tokens_answer: int = 16
    max_new_tokens_caption: int = 24
    max_boxes: int = 8
    min_box_score: float = 0.5
    cache_dir: str = ""
    experiment: str = "vidllm-eval"
    num_examples: int = 4
    plots: bool = True
    protocol: EvalConfig = field(default_factory=EvalConfig)
    proposals: str = ""
    proposals_format: str = "vidllm"
    proposals_scans_root: str = ""
    max_proposals_per_scene: int | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must not be empty")
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; expected a subset of {list(TASKS)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks repeat: {list(self.tasks)}")
        if self.split is not None and self.split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val, test or None, got {self.split!r}")
        if self.clip_index is not None and self.clip_index < 0:
            raise ValueError(f"clip_index must be >= 0, got {self.clip_index}")
        if self.max_queries_per_task is not None and self.max_queries_per_task < 1:
            raise ValueError(f"max_queries_per_task must be >= 1, got {self.max_queries_per_task}")
        for name in ("batch_size", "prompt_batch_size", "concurrency", "max_new_tokens_answer",
                     "max_new_tokens_caption", "max_boxes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_gpus < 0 or self.num_cpus <= 0:
            raise ValueError(f"num_gpus must be >= 0 and num_cpus > 0, got {self.num_gpus}, {self.num_cpus}")
        if not 0.0 <= self.min_box_score <= 1.0:
            raise ValueError(f"min_box_score must be in [0, 1], got {self.min_box_score}")
        if self.num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {self.num_examples}")
        if not self.experiment:
            raise ValueError("experiment must not be empty")
        if self.query_selection not in QUERY_SELECTIONS:
            raise ValueError(f"query_selection must be one of {QUERY_SELECTIONS}, got {self.query_selection!r}")
        if self.proposals_format not in PROPOSAL_FORMATS:
            raise ValueError(f"proposals_format must be one of {PROPOSAL_FORMATS}, got {self.proposals_format!r}")
        if self.uses_proposals and not self.proposals:
            raise ValueError("the 'proposals' protocol needs proposals (the URI of an instance proposal file)")
        if self.proposals and self.proposals_format in MASK_FORMATS and not self.proposals_scans_root:
            raise ValueError(f"proposals_format {self.proposals_format!r} needs proposals_scans_root (the meshes)")
        if self.max_proposals_per_scene is not None and self.max_proposals_per_scene < 1:
            raise ValueError(f"max_proposals_per_scene must be >= 1, got {self.max_proposals_per_scene}")

    @property
    def uses_proposals(self) -> bool:
        """Whether an evaluated task is scored under the ``proposals`` protocol."""
        grounding = {"scanrefer", "multi3drefer"} & set(self.tasks) and "proposals" in self.protocol.grounding_protocols
        captioning = "scan2cap" in self.tasks and "proposals" in self.protocol.captioning_protocols
        return bool(grounding or captioning)

    @classmethod
    def tiny(cls) -> EvalJobConfig:
        """Smoke-test preset: a few queries per task and scene, short generations, one CPU actor."""
        return cls(**tiny())

    def to_dict(self) -> dict[str, Any]:
        return pconfig.to_dict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvalJobConfig:
        """Build from a (possibly partial) dict, rejecting unknown keys so that a typo never goes unnoticed."""
        return SPEC.from_dict(raw)

    def replace(self, **changes: Any) -> EvalJobConfig:
        return dataclasses.replace(self, **changes)


def tiny() -> dict[str, Any]:
    """The ``tiny`` preset: a few queries per task and scene, short generations, one CPU actor."""
    return {"max_queries_per_task": 3, "batch_size": 2, "prompt_batch_size": 8, "max_new_tokens_answer": 6,
            "max_new_tokens_caption": 8, "num_examples": 2}


SPEC = pconfig.ConfigSpec(EvalJobConfig, "eval", {"default": dict, "tiny": tiny})
