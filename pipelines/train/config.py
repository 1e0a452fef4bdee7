"""Typed training configuration: one :class:`TrainConfig` tree, stage presets as Python functions, dotted overrides.

A run is chosen as ``preset (or JSON/YAML file) + overrides``::

    cfg = resolve_config("stage1", ["data.manifest_uri=s3://bucket/shards/manifest.json", "schedule.max_steps=100"])

Presets (:func:`stage1`, :func:`stage2`, :func:`tiny`) are plain functions so that a run is a Python value that can be
read, diffed and tested; a file holds the same tree as :meth:`TrainConfig.to_dict` writes (the resolved config saved
next to every artifact round-trips through :meth:`TrainConfig.from_dict`). Loading, type coercion and error messages
follow the project-wide rules of :mod:`pipelines.config`.

Training policy lives here and only here: what is frozen (:class:`FreezeConfig`, glob patterns over parameter names)
and the loss weights (``loss``, a :class:`model.config.LossWeights`) are set by the stage presets and can be changed
per run (``--set freeze.frozen='[encoder.*]'``, ``--set loss.box=2``). The model config saved with a checkpoint
describes the architecture only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.config import LossWeights
from pipelines import config as pconfig
from pipelines.config import ConfigError

TASKS = ("qa", "caption", "grounding")
#: Fields of ``model`` that name artifacts (local directories, or URIs resolved by :mod:`pipelines.artifacts`).
MODEL_ARTIFACT_FIELDS = ("encoder.pretrained_path", "llm.pretrained_path", "llm.tokenizer_path")


def _check(cond: bool, name: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"train config field {name!r}: {problem}")


@dataclass
class DataConfig:
    """Where the shards are and how samples become batches.

    Attributes:
        manifest_uri: shard manifest (local path, ``file://`` or ``s3://``) written by the teacher stage.
        micro_batch_size: samples per worker per forward pass.
        num_frames: frames per clip fed to the model; ``0`` keeps every stored frame.
        task_mix: Stage-2 sampling ratios over the language tasks (``qa``, ``caption``, ``grounding``); a task a
            sample has no annotation for is skipped and the others renormalised.
        max_text_tokens: prompt+answer length cap (tokens); ``0`` (the default): no cap, every text is kept whole
            and a batch is padded to its longest text. Under a cap only prompt bodies are shortened; an example
            whose answer (with EOS) and fixed prompt parts exceed it is not trained on (its row keeps the clip's
            geometry losses, carries no language label) and is reported: counted per step (``text_skipped``) and
            logged with its sample key.
        max_boxes: GT boxes per sample for grounding (padded with ``box_mask=False``).
        shuffle_shards: shuffle each rank's shard order per epoch (seeded by ``seed`` and the epoch).
        seed: base seed for shard order and task sampling.
        num_workers: loader processes per rank that read, decode and collate micro-batches ahead of the training
            step (``torch.utils.data.DataLoader`` workers; ``0``: in the training process, no overlap).
        prefetch_batches: micro-batches each loader process keeps ready.
    """

    manifest_uri: str = ""
    micro_batch_size: int = 2
    num_frames: int = 0
    task_mix: dict[str, float] = field(default_factory=lambda: {"qa": 0.5, "caption": 0.25, "grounding": 0.25})
    max_text_tokens: int = 0
    max_boxes: int = 4
    shuffle_shards: bool = True
    seed: int = 0
    num_workers: int = 1
    prefetch_batches: int = 2

    def __post_init__(self) -> None:
        _check(self.micro_batch_size >= 1, "data.micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        _check(self.num_frames >= 0, "data.num_frames", f"must be >= 0, got {self.num_frames}")
        _check(self.max_text_tokens == 0 or self.max_text_tokens >= 4, "data.max_text_tokens",
               f"must be 0 (no cap) or >= 4, got {self.max_text_tokens}")
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.prefetch_batches >= 1, "data.prefetch_batches", f"must be >= 1, got {self.prefetch_batches}")
        _check(self.max_boxes >= 1, "data.max_boxes", f"must be >= 1, got {self.max_boxes}")
        unknown = set(self.task_mix) - set(TASKS)
        _check(not unknown, "data.task_mix", f"unknown tasks {sorted(unknown)} (known: {list(TASKS)})")
        _check(all(v >= 0 for v in self.task_mix.values()), "data.task_mix", "ratios must be >= 0")
        _check(sum(self.task_mix.values()) > 0, "data.task_mix", "at least one ratio must be > 0")


@dataclass
class OptimConfig:
    """AdamW + linear warm-up + cosine decay (paper §3.4: AdamW, weight decay 0.05, clipping 1.0).

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW betas.
        warmup_steps: optimizer steps of linear warm-up from 0 to ``lr``.
        min_lr_ratio: floor of the cosine as a fraction of ``lr``.
        grad_clip: global gradient-norm clip (DeepSpeed ``gradient_clipping``).
    """

    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", "two values in [0, 1)")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        _check(self.grad_clip > 0, "optim.grad_clip", "must be > 0")


OFFLOAD_DEVICES = ("none", "cpu")


@dataclass
class DeepSpeedConfig:
    """Engine settings turned into a DeepSpeed config by :mod:`pipelines.train.deepspeed_config`.

    Bucket sizes are in elements (DeepSpeed's unit). They bound the communication buffers each rank allocates, so
    they appear in the memory estimate (:mod:`pipelines.train.memory`).

    Attributes:
        zero_stage: ZeRO stage 1, 2 or 3.
        grad_accum_steps: micro-batches per optimizer step.
        precision: ``"auto"`` (bf16 on GPU, fp32 on CPU), ``"bf16"`` or ``"fp32"``. Under bf16 the weights,
            activations and gradients are bf16 and the optimizer keeps fp32 master weights (what is exported);
            the model computes geometry and metric-depth probabilities in fp32 (:mod:`model.precision`).
        offload_optimizer: ``"cpu"`` keeps optimizer states and master weights in host memory (DeepSpeed's
            CPUAdam steps them there); ``"none"`` keeps them on the GPU.
        offload_params: ``"cpu"`` keeps the partitioned parameters in host memory between uses (ZeRO-3 only).
        overlap_comm: overlap gradient reduction (and ZeRO-3 parameter prefetch) with the backward pass.
        reduce_bucket_size: elements per gradient reduce bucket.
        allgather_bucket_size: elements per parameter all-gather bucket after the step (ZeRO-1/2).
        prefetch_bucket_size: elements of parameters fetched ahead of use (ZeRO-3).
        max_live_parameters: elements of gathered parameters kept at once before releasing (ZeRO-3).
        param_persistence_threshold: parameters with fewer elements stay gathered on every rank (ZeRO-3).
    """

    zero_stage: int = 2
    grad_accum_steps: int = 1
    precision: str = "auto"
    offload_optimizer: str = "none"
    offload_params: str = "none"
    overlap_comm: bool = True
    reduce_bucket_size: int = 200_000_000
    allgather_bucket_size: int = 200_000_000
    prefetch_bucket_size: int = 50_000_000
    max_live_parameters: int = 1_000_000_000
    param_persistence_threshold: int = 100_000

    def __post_init__(self) -> None:
        _check(self.zero_stage in (1, 2, 3), "deepspeed.zero_stage", f"must be 1, 2 or 3, got {self.zero_stage}")
        _check(self.grad_accum_steps >= 1, "deepspeed.grad_accum_steps", "must be >= 1")
        _check(self.precision in ("auto", "bf16", "fp32"), "deepspeed.precision", "auto, bf16 or fp32")
        for name in ("offload_optimizer", "offload_params"):
            _check(getattr(self, name) in OFFLOAD_DEVICES, f"deepspeed.{name}",
                   f"one of {list(OFFLOAD_DEVICES)}, got {getattr(self, name)!r}")
        _check(self.offload_params == "none" or self.zero_stage == 3, "deepspeed.offload_params",
               "parameter offload needs deepspeed.zero_stage=3")
        for name in ("reduce_bucket_size", "allgather_bucket_size", "prefetch_bucket_size", "max_live_parameters"):
            _check(getattr(self, name) >= 1, f"deepspeed.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.param_persistence_threshold >= 0, "deepspeed.param_persistence_threshold", "must be >= 0")


@dataclass
class ActivationCheckpointingConfig:
    """Which components recompute their activations in the backward pass instead of storing them
    (:meth:`model.VidLLM.set_activation_checkpointing`, applied to the model whether it is built from ``model`` or
    loaded from ``init_from``). Same losses and gradients; less memory; about one extra forward of those parts.

    Attributes:
        encoder: each DINOv2 layer.
        reconstruction: each frame and global block of the alternating attention.
        heads: the DPT heads and the metric-depth decoder, per frame chunk.
        llm: each LLM decoder layer.
    """

    encoder: bool = False
    reconstruction: bool = False
    heads: bool = False
    llm: bool = False


@dataclass
class ScheduleConfig:
    """How long to train and how often to log and checkpoint (all counts are optimizer steps).

    Attributes:
        num_epochs: passes over the shards.
        max_steps: optimizer steps in total, overriding ``num_epochs`` (``0``: ``num_epochs`` full epochs).
        checkpoint_every: save a checkpoint every this many steps (and always at the end).
        log_every: log metrics to MLflow every this many steps.
    """

    num_epochs: int = 1
    max_steps: int = 0
    checkpoint_every: int = 500
    log_every: int = 10

    def __post_init__(self) -> None:
        _check(self.num_epochs >= 1, "schedule.num_epochs", "must be >= 1")
        _check(self.max_steps >= 0, "schedule.max_steps", "must be >= 0")
        _check(self.checkpoint_every >= 1, "schedule.checkpoint_every", "must be >= 1")
        _check(self.log_every >= 1, "schedule.log_every", "must be >= 1")


@dataclass
class TrackingConfig:
    """MLflow settings (see :mod:`pipelines.train.tracking`).

    Attributes:
        tracking_uri: MLflow URI; empty: ``$MLFLOW_TRACKING_URI``, else a sqlite store under the output dir.
        experiment: experiment name.
        registered_model: name under which the exported model is registered.
        retry_initial_s: first back-off after a failed call to the tracking server (doubles up to ``retry_max_s``).
        retry_max_s: longest back-off.
        max_buffered_metrics: metrics kept while the server is unreachable; older ones are dropped beyond this.
    """

    tracking_uri: str = ""
    experiment: str = "vidllm"
    registered_model: str = "vidllm"
    retry_initial_s: float = 2.0
    retry_max_s: float = 60.0
    max_buffered_metrics: int = 100_000

    def __post_init__(self) -> None:
        _check(bool(self.experiment), "tracking.experiment", "must not be empty")
        _check(bool(self.registered_model), "tracking.registered_model", "must not be empty")
        _check(0 < self.retry_initial_s <= self.retry_max_s, "tracking.retry_initial_s", "0 < initial <= max")


@dataclass
class RunConfig:
    """Where outputs go and how many Ray workers run (its fields do not change what is learnt).

    Attributes:
        name: Ray Train run name (checkpoints under ``storage_path/name``; re-running the same name resumes).
        storage_path: Ray Train storage (local path or ``s3://``) for checkpoints.
        output_dir: where the exported model, resolved config, step log and default MLflow store go.
        num_workers: Ray Train workers (one DeepSpeed rank each).
        use_gpu: one GPU per worker.
        cpus_per_worker: CPUs reserved per worker.
        max_failures: worker-group restarts from the last complete checkpoint before giving up.
        num_checkpoints_to_keep: checkpoints Ray Train keeps.
        gpu_memory_gib: memory of one GPU; ``--dry-run`` says whether the estimated per-GPU peak fits it (``0``:
            not judged).
        export_shard_mib: largest weight file of the export (fp32 MiB); more weights are split into shards with
            an index (:mod:`pipelines.train.export`), written by the ranks in turn.
    """

    name: str = "vidllm-train"
    storage_path: str = ""
    output_dir: str = ""
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 1
    num_checkpoints_to_keep: int = 3
    gpu_memory_gib: float = 0.0
    export_shard_mib: int = 4096

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "run.name", "non-empty, without '/'")
        _check(self.gpu_memory_gib >= 0, "run.gpu_memory_gib", f"must be >= 0, got {self.gpu_memory_gib}")
        _check(self.export_shard_mib >= 1, "run.export_shard_mib", f"must be >= 1, got {self.export_shard_mib}")
        _check(self.num_workers >= 1, "run.num_workers", "must be >= 1")
        _check(self.max_failures >= -1, "run.max_failures", "must be >= -1 (-1: unlimited)")
        _check(self.num_checkpoints_to_keep >= 2, "run.num_checkpoints_to_keep",
               "must be >= 2 so that a complete checkpoint survives an incomplete newer one")


@dataclass
class FaultConfig:
    """Fault injection for the fault-tolerance acceptance test: rank ``kill_rank`` SIGKILLs its own process when
    it reaches optimizer step ``kill_at_step`` (once per run: a marker file in the output dir stops the resumed run
    from dying again). ``kill_at_step < 0`` (the default) disables it.

    Attributes:
        kill_rank: the rank that kills itself.
        kill_at_step: the optimizer step at which it does; negative: never.
    """

    kill_rank: int = 1
    kill_at_step: int = -1


@dataclass
class FreezeConfig:
    """Which parameters train: a parameter trains iff its ``named_parameters`` name matches a ``trainable`` glob
    and no ``frozen`` glob (:func:`model.freezing.apply_freezing`).

    Attributes:
        trainable: glob patterns of trainable parameters.
        frozen: glob patterns excluded from them.
    """

    trainable: tuple[str, ...] = ("*",)
    frozen: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(bool(self.trainable), "freeze.trainable", "at least one pattern (\"*\" for everything)")


@dataclass
class TrainConfig:
    """The whole training run.

    Attributes:
        stage: 1 (dual-teacher distillation) or 2 (joint optimisation, encoder frozen).
        model: ``VidLLMConfig.to_dict()`` tree for a model built from scratch (ignored when ``init_from``); its
            ``encoder.pretrained_path``, ``llm.pretrained_path`` and ``llm.tokenizer_path`` may be URIs.
        init_from: start from a trained model: an export dir/URI, ``models:/name/version``, ``models:/name@alias``,
            ``runs:/<run_id>/model`` or ``mlflow-run:<run_id>`` (:mod:`pipelines.artifacts`).
        parent_run_id: MLflow run that produced ``init_from`` (tagged on this run; filled in from ``init_from``).
        data: shards and batching.
        optim: optimizer and learning-rate schedule.
        deepspeed: DeepSpeed engine settings.
        activation_checkpointing: which components recompute activations in the backward pass.
        schedule: run length, logging and checkpointing.
        loss: loss weights and loss hyper-parameters of :class:`model.losses.MultitaskLoss`.
        freeze: which parameters train.
        tracking: MLflow.
        run: outputs and Ray workers.
        fault: fault injection (tests).
    """

    stage: int = 1
    model: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""
    parent_run_id: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    activation_checkpointing: ActivationCheckpointingConfig = field(default_factory=ActivationCheckpointingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        _check(self.stage in (1, 2), "stage", f"must be 1 or 2, got {self.stage}")

    def run_problems(self) -> list[str]:
        """One message per field a run needs that is missing or unusable (presets leave the paths empty)."""
        needed = [
            ("data.manifest_uri", "the teachers job's output, e.g. s3://bucket/shards/train"),
            ("run.output_dir", "where the export, step logs and resolved config go, e.g. s3://bucket/runs/stage1"),
            ("run.storage_path", "Ray Train checkpoint storage, e.g. s3://bucket/ray-results"),
        ]
        problems = [f"train config field {name!r}: not set: --set {name}=<{hint}>"
                    for name, hint in needed if not _get(self, name)]
        if self.stage == 2 and not self.init_from:
            problems.append("train config field 'init_from': not set: Stage 2 starts from a Stage-1 model, --set "
                            "init_from=<export dir, models:/name/version or mlflow-run:RUN_ID>")
        if self.stage == 1 and not self.init_from and not self.model:
            problems.append("train config field 'model': empty: a model trained from scratch needs a model config "
                            "(the stage1 and tiny presets have one)")
        weights = ("geo", "lang", "sc", "camera", "depth", "metric_depth", "lm", "box")
        if not any(getattr(self.loss, w, 0.0) > 0 for w in weights):
            problems.append(f"train config field 'loss': every loss weight ({', '.join(weights)}) is 0, nothing "
                            "would be trained: start from a preset or --set loss.<name>=1")
        return problems

    def validate_for_run(self) -> None:
        """Raise :class:`ConfigError` with the first of :meth:`run_problems`."""
        problems = self.run_problems()
        if problems:
            raise ConfigError(problems[0])

    def to_dict(self) -> dict[str, Any]:
        return pconfig.to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        return pconfig.from_dict(cls, data, "train")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def stage_policy(stage: int) -> tuple[LossWeights, FreezeConfig]:
    """The loss weights and freezing of a training stage (the presets' policy).

    Stage 1, dual-teacher distillation ``L_geo + L_lang + sc * L_sc`` (``sc`` = λ, not given by the paper), trains
    the encoder, the Cross-Task Adapter and the distillation projections. Stage 2, joint optimisation
    ``L_recon (camera 5, depth 1, point map 1: VGGT's weights) + L_VL (LM 1, box 1) + L_MD (1)``, freezes the
    encoder and the (unused) distillation projections and trains the rest.
    """
    if stage == 1:
        return LossWeights(geo=1.0, lang=1.0, sc=1.0), FreezeConfig(trainable=("encoder.*", "adapter.*", "distill.*"))
    return (LossWeights(camera=5.0, depth=1.0, point=1.0, metric_depth=1.0, lm=1.0, box=1.0),
            FreezeConfig(trainable=("*",), frozen=("encoder.*", "distill.*")))


def stage1() -> TrainConfig:
    """Stage 1 on the ``small`` model (DINOv2-S/14 + a SmolLM2-135M-shaped LLM), 8 GPU workers.

    Inputs a run must name (``--dry-run`` lists the missing ones): ``data.manifest_uri``, ``run.output_dir``,
    ``run.storage_path`` and the LLM's own tokenizer, ``model.llm.tokenizer_path`` (its ``<scene>``/``<loc>`` ids
    follow the 49152-token vocabulary); ``model.encoder.pretrained_path``/``model.llm.pretrained_path`` load real
    weights (random initialisation otherwise).
    """
    from model import VidLLMConfig

    return TrainConfig(
        stage=1,
        model=VidLLMConfig.small().to_dict(),
        data=DataConfig(num_workers=2),
        optim=OptimConfig(lr=1e-4, warmup_steps=200),
        schedule=ScheduleConfig(num_epochs=10, checkpoint_every=500, log_every=10),
        loss=stage_policy(1)[0],
        freeze=stage_policy(1)[1],
        run=_cluster_run("vidllm-stage1"),
    )


#: Usable memory of one 80 GB GPU (A100/H100 80 GB: 80 GiB, less ~2 GiB for the CUDA context and NCCL buffers).
GPU_80GB_USABLE_GIB = 78.0


def _cluster_run(name: str) -> RunConfig:
    """8 GPU workers of 8 CPUs each: one 8-GPU node of ``ray_cluster.yaml``/``infra/k8s/rayjob-train.yaml``."""
    return RunConfig(name=name, num_workers=8, use_gpu=True, cpus_per_worker=8, gpu_memory_gib=GPU_80GB_USABLE_GIB)


def stage2() -> TrainConfig:
    """Stage 2 (joint optimisation, encoder frozen) from a Stage-1 model named by ``init_from``, ZeRO-3."""
    return TrainConfig(
        stage=2,
        data=DataConfig(num_workers=2),
        optim=OptimConfig(lr=2e-5, warmup_steps=200),
        deepspeed=DeepSpeedConfig(zero_stage=3),
        schedule=ScheduleConfig(num_epochs=3, checkpoint_every=500, log_every=10),
        loss=stage_policy(2)[0],
        freeze=stage_policy(2)[1],
        run=_cluster_run("vidllm-stage2"),
    )


def stage2_base() -> TrainConfig:
    """Stage 2 of the paper-size model (a Stage-1 export of ``VidLLMConfig.base()``: DINOv2-L/14-reg, VGGT-1B-size
    reconstruction, a Vicuna-7B-shaped LLM; 8.0 B parameters) on one node of 8 x 80 GB GPUs.

    The recipe the memory model (:mod:`pipelines.train.memory`, ``--dry-run``) says fits: ZeRO-3 (every rank holds
    1/8 of the weights, gradients and optimizer state), bf16, micro-batch 2 of 32 frames, activation checkpointing
    of every component. Without checkpointing one 32-frame clip alone needs ~100 GiB of activations.
    """
    cfg = stage2()
    cfg.data = DataConfig(micro_batch_size=2, num_frames=32, num_workers=2)
    cfg.activation_checkpointing = ActivationCheckpointingConfig(encoder=True, reconstruction=True, heads=True,
                                                                 llm=True)
    cfg.run = _cluster_run("vidllm-stage2-base")
    return cfg


def tiny(stage: int = 1) -> TrainConfig:
    """A CPU smoke run: tiny random model, 2 workers, few steps (tests and laptops); Stage 2 needs ``init_from``."""
    from model import VidLLMConfig

    return TrainConfig(
        stage=stage,
        model=VidLLMConfig.tiny().to_dict() if stage == 1 else {},
        data=DataConfig(micro_batch_size=2),
        optim=OptimConfig(lr=3e-3, warmup_steps=2, min_lr_ratio=0.3),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="fp32"),
        schedule=ScheduleConfig(num_epochs=1, checkpoint_every=2, log_every=1),
        loss=stage_policy(stage)[0],
        freeze=stage_policy(stage)[1],
        run=RunConfig(name=f"vidllm-tiny-stage{stage}", num_workers=2, cpus_per_worker=1),
    )


PRESETS = {"stage1": stage1, "stage2": stage2, "stage2_base": stage2_base, "tiny": tiny}


def spec(stage: int | None = None) -> pconfig.ConfigSpec:
    """The train stage's :class:`~pipelines.config.ConfigSpec`; ``stage`` picks the ``tiny`` variant."""
    presets = {**PRESETS, "tiny": lambda: tiny(stage or 1)}
    return pconfig.ConfigSpec(TrainConfig, "train", presets)


def resolve_config(source: str | Sequence[str] | None, overrides: Sequence[str | tuple[str, Any, bool]] = (),
                   stage: int | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from a preset name or a JSON/YAML file (or several, merged), then overrides.

    Args:
        source: preset name (``stage1``, ``stage2``, ``tiny``) or path/URI of a ``.json``/``.yaml``/``.yml`` file;
            empty: the preset of ``stage``.
        overrides: ``dotted.key=value`` strings (or parsed ``(key, value, append)`` triples) applied in order.
        stage: when given, forces ``stage`` (the CLI's ``--stage``); ``tiny`` uses it to choose its variant.
    """
    sources = [source] if isinstance(source, str) else list(source or [])
    if not sources:
        sources = [f"stage{stage or 1}"]
    for name in sources:
        if stage is not None and name in PRESETS and name != "tiny" and PRESETS[name]().stage != stage:
            raise ConfigError(f"--stage {stage} with --config {name}: that preset holds Stage {PRESETS[name]().stage}'s "
                              f"training policy (loss weights, freezing); use --config stage{stage}")
    forced = [("stage", stage, False)] if stage is not None else []
    return spec(stage).load(sources, [*forced, *overrides])
