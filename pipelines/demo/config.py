"""Configuration of the local demo: size presets and where every artifact of a demo run lives.

Two roots: ``workdir`` is always a local folder (logs, the MLflow sqlite store, the random teacher checkpoints,
download caches, the demo's state and result files); ``storage`` holds the data and models (scenes, shards,
checkpoints, exports) and defaults to ``workdir`` itself, or is an ``s3://`` prefix.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from pipelines import storage
from pipelines.weights import DINOV2_SMALL, SMOLLM2

#: The ``--set`` overrides that turn the ``stage1`` training preset (the ``small`` model) into the real-weight one,
#: given the folder of ``vidllm weights install``: the encoder is the real DINOv2-S (a plain ``Dinov2Model``, as
#: ``small()`` describes it), the LLM the real SmolLM2-135M-Instruct with its own tokenizer (``<scene>``/``<loc>``
#: become ids 49152/49153, the embeddings are resized to 49154) prompted through its chat template. The same lines
#: work on the command line: ``--set model.encoder.pretrained_path=DIR/dinov2-small`` and so on.
REAL_WEIGHT_OVERRIDES = (
    f"model.encoder.pretrained_path={{dir}}/{DINOV2_SMALL}",
    f"model.llm.pretrained_path={{dir}}/{SMOLLM2}",
    f"model.llm.tokenizer_path={{dir}}/{SMOLLM2}",
    "model.llm.use_chat_template=true",
)


def real_weight_overrides(weights_dir: str) -> list[str]:
    """:data:`REAL_WEIGHT_OVERRIDES` for an installed weights folder."""
    return [line.format(dir=weights_dir.rstrip("/")) for line in REAL_WEIGHT_OVERRIDES]


@dataclass(frozen=True)
class DemoSizeConfig:
    """How much work each stage does.

    Attributes:
        name: preset name.
        num_scenes: synthetic scenes (scene index 1 is the val scene, the rest train).
        frames_per_scene: frames rendered per scene (``small`` sensor preset: 160x120 colour).
        frames_per_clip: frames S per clip.
        clips_per_scene: clips K per scene.
        resize_to: shorter image side of the clips after resizing, pixels (multiple of 14 after the crop).
        stage1_steps: Stage-1 optimizer steps.
        stage2_steps: Stage-2 optimizer steps.
        eval_queries: questions / queries / objects evaluated per task and scene.
    """

    name: str
    num_scenes: int
    frames_per_scene: int
    frames_per_clip: int
    clips_per_scene: int
    resize_to: int
    stage1_steps: int
    stage2_steps: int
    eval_queries: int

    def __post_init__(self) -> None:
        if self.num_scenes < 2:
            raise ValueError(f"size {self.name}: num_scenes must be >= 2 (one train and one val scene)")
        if self.frames_per_clip < 2 or self.frames_per_scene < self.frames_per_clip + 2:
            raise ValueError(f"size {self.name}: frames_per_scene must exceed frames_per_clip by the 2 lost-"
                             "tracking frames the generator writes, and frames_per_clip must be >= 2")
        if min(self.clips_per_scene, self.stage1_steps, self.stage2_steps, self.eval_queries) < 1:
            raise ValueError(f"size {self.name}: clips, steps and queries must be >= 1")
        if self.resize_to < 28:
            raise ValueError(f"size {self.name}: resize_to must be >= 28 (two 14-pixel patches)")


SIZES: dict[str, DemoSizeConfig] = {
    # The acceptance test's size: every stage runs for real, as little as possible. Stage-2 steps are cheap next to
    # the fixed costs (worker start, export, MLflow) and the tiny LLM needs 100-200 of them, depending on the draw
    # of the random teachers, before its answers stop being just the most frequent target token, end-of-sequence
    # (an empty answer): 120 steps did with one draw, not with write_random_clip's; 200 do (measured).
    "smallest": DemoSizeConfig("smallest", num_scenes=2, frames_per_scene=12, frames_per_clip=4, clips_per_scene=1,
                         resize_to=56, stage1_steps=2, stage2_steps=200, eval_queries=1),
    # The default: enough clips and steps that the losses move; under 10 minutes on 2 CPU cores.
    "default": DemoSizeConfig("default", num_scenes=6, frames_per_scene=40, frames_per_clip=8, clips_per_scene=2,
                        resize_to=56, stage1_steps=30, stage2_steps=300, eval_queries=3),
    # The real-weight run (``--weights-dir``) on a CPU machine: 112 px, 6 frames, a few steps. The real LLM answers
    # fluently from the start; the steps show every stage working on the small model, they teach it nothing.
    "real": DemoSizeConfig("real", num_scenes=2, frames_per_scene=10, frames_per_clip=6, clips_per_scene=1,
                           resize_to=112, stage1_steps=2, stage2_steps=2, eval_queries=1),
}


@dataclass(frozen=True)
class DemoConfig:
    """One demo run.

    Attributes:
        workdir: local folder for logs, the MLflow store, teacher checkpoints, caches and state.
        storage: where data and models go: ``""`` (= ``workdir``) or an ``s3://`` prefix.
        size: a :data:`SIZES` preset.
        num_cpus: CPUs the local Ray instance gets (0 = every core of this machine).
        object_store_mb: Ray object store size, MiB.
        port: HTTP port of Ray Serve (0 = a free port).
        keep_serving: leave the endpoint up after the demo until Ctrl-C.
        fresh: delete earlier results and start over.
        seed: synthetic-scene seed.
        weights_dir: the folder of ``vidllm weights install`` (``dinov2-small``, ``smollm2-135m-instruct``). Set:
            the ``small`` model starts from the real DINOv2-S encoder and the real SmolLM2-135M-Instruct with its
            own tokenizer and chat template (the training presets plus the real-weight overrides of
            :data:`REAL_WEIGHT_OVERRIDES`), the real DINOv2-S is the geometry teacher and a random CLIP stands in
            for the semantic one. Empty (default): the tiny random model and random teachers.
        train_workers: Ray Train workers per stage (0: 2 when the machine has 2 CPUs or more, else 1).
        use_gpu: train, evaluate and serve on CUDA GPUs (one per training worker, one per evaluation actor and
            serving replica; bf16 where the stages choose it).
    """

    workdir: str = "vidllm_demo"
    storage: str = ""
    size: str = "default"
    num_cpus: int = 0
    object_store_mb: int = 512
    port: int = 0
    keep_serving: bool = False
    fresh: bool = False
    seed: int = 0
    weights_dir: str = ""
    train_workers: int = 0
    use_gpu: bool = False

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        if "://" in self.workdir:
            raise ValueError(f"workdir must be a local folder, got {self.workdir!r} (use --storage for s3://)")
        if self.storage and not self.storage.startswith("s3://"):
            raise ValueError(f"storage must be empty (the workdir) or an s3:// URI, got {self.storage!r}")
        if self.num_cpus < 0 or self.object_store_mb < 64:
            raise ValueError("num_cpus must be >= 0 and object_store_mb >= 64")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.train_workers < 0:
            raise ValueError(f"train_workers must be >= 0 (0: chosen from the CPUs), got {self.train_workers}")
        if "://" in self.weights_dir:
            raise ValueError(f"weights_dir must be a local folder (vidllm weights install --dir), got "
                             f"{self.weights_dir!r}")

    @property
    def preset(self) -> DemoSizeConfig:
        return SIZES[self.size]

    def cpus(self) -> int:
        return self.num_cpus or os.cpu_count() or 1

    def workers(self) -> int:
        """Ray Train workers of each training stage."""
        return self.train_workers or (2 if self.cpus() >= 2 else 1)

    def paths(self) -> DemoPaths:
        workdir = os.path.abspath(self.workdir)
        return DemoPaths.under(workdir, self.storage.rstrip("/") or workdir)

    def replace(self, **changes) -> DemoConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DemoPaths:
    """Every location of a demo run (local paths under ``workdir``; URIs under ``storage``)."""

    workdir: str
    storage: str
    logs: str
    state: str
    result: str
    mlflow_db: str
    teachers: str
    eval_cache: str
    serve_cache: str
    scenes: str
    clips: str
    train_shards: str
    ray_storage: str
    stage1: str
    stage2: str
    eval_out: str

    @classmethod
    def under(cls, workdir: str, root: str) -> DemoPaths:
        def local(*parts: str) -> str:
            return os.path.join(workdir, *parts)

        return cls(
            workdir=workdir, storage=root, logs=local("logs"), state=local("demo_state.json"),
            result=local("demo_result.json"), mlflow_db=local("mlflow", "mlflow.db"), teachers=local("teachers"),
            eval_cache=local("cache", "eval"), serve_cache=local("cache", "serve"),
            scenes=storage.join(root, "scenes"), clips=storage.join(root, "clips"),
            train_shards=storage.join(root, "train_shards"), ray_storage=storage.join(root, "ray_results"),
            stage1=storage.join(root, "train", "stage1"), stage2=storage.join(root, "train", "stage2"),
            eval_out=storage.join(root, "eval"),
        )

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def geometry_teacher(self) -> str:
        return os.path.join(self.teachers, "geometry-dinov2-reg-random")

    @property
    def semantic_teacher(self) -> str:
        return os.path.join(self.teachers, "semantic-clip-random")

    def log(self, step: str) -> str:
        return os.path.join(self.logs, f"{step}.log")
