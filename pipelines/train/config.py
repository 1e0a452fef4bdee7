"""Typed training configuration: one :class:`TrainConfig` tree, stage presets as Python functions, dotted overrides.

A run is chosen as ``preset (or JSON/YAML file) + overrides``::

    cfg = resolve_config("stage1", ["data.manifest_uri=s3://bucket/shards/manifest.json", "schedule.max_steps=100"])

Presets (:func:`stage1`, :func:`stage2`, :func:`tiny`) are plain functions so that a run is a Python value that can be
read, diffed and tested; a file holds the same tree as :meth:`TrainConfig.to_dict` writes (the resolved config saved
next to every artifact round-trips through :meth:`TrainConfig.from_dict`). Every section validates itself in
``__post_init__`` and raises :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TASKS = ("qa", "caption", "grounding")


class ConfigError(ValueError):
    """A training configuration field is missing, of the wrong type or out of range."""


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
        max_text_tokens: prompt+answer length cap (tokens); answers are truncated, the prompt keeps ``<scene>``.
        max_boxes: GT boxes per sample for grounding (padded with ``box_mask=False``).
        shuffle_shards: shuffle each rank's shard order per epoch (seeded by ``seed`` and the epoch).
        seed: base seed for shard order and task sampling.
    """

    manifest_uri: str = ""
    micro_batch_size: int = 2
    num_frames: int = 0
    task_mix: dict[str, float] = field(default_factory=lambda: {"qa": 0.5, "caption": 0.25, "grounding": 0.25})
    max_text_tokens: int = 64
    max_boxes: int = 4
    shuffle_shards: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.micro_batch_size >= 1, "data.micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        _check(self.num_frames >= 0, "data.num_frames", f"must be >= 0, got {self.num_frames}")
        _check(self.max_text_tokens >= 4, "data.max_text_tokens", f"must be >= 4, got {self.max_text_tokens}")
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
        self.betas = tuple(float(b) for b in self.betas)  # JSON/YAML gives lists
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", "two values in [0, 1)")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        _check(self.grad_clip > 0, "optim.grad_clip", "must be > 0")


@dataclass
class DeepSpeedSection:
    """Engine settings turned into a DeepSpeed config by :mod:`pipelines.train.deepspeed_config`.

    Attributes:
        zero_stage: ZeRO stage 1, 2 or 3.
        grad_accum_steps: micro-batches per optimizer step.
        precision: ``"auto"`` (bf16 on GPU, fp32 on CPU), ``"bf16"`` or ``"fp32"``.
    """

    zero_stage: int = 2
    grad_accum_steps: int = 1
    precision: str = "auto"

    def __post_init__(self) -> None:
        _check(self.zero_stage in (1, 2, 3), "deepspeed.zero_stage", f"must be 1, 2 or 3, got {self.zero_stage}")
        _check(self.grad_accum_steps >= 1, "deepspeed.grad_accum_steps", "must be >= 1")
        _check(self.precision in ("auto", "bf16", "fp32"), "deepspeed.precision", "auto, bf16 or fp32")


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
class LossConfig:
    """Loss weights. Stage 1: ``L_geo + L_lang + sc_lambda * L_sc``; Stage 2: ``MultitaskLoss(weights)``.

    Attributes:
        sc_lambda: weight of the structural-consistency (Gram) term in Stage 1 (not given by the paper).
        weights: Stage-2 overrides of ``model.losses.LossWeights`` fields (empty: the model's defaults).
    """

    sc_lambda: float = 1.0
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.sc_lambda >= 0, "loss.sc_lambda", "must be >= 0")


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
class RunSection:
    """Where outputs go and how many Ray workers run.

    Attributes:
        name: Ray Train run name (checkpoints under ``storage_path/name``; re-running the same name resumes).
        storage_path: Ray Train storage (local path or ``s3://``) for checkpoints.
        output_dir: where the exported model, resolved config, step log and default MLflow store go.
        num_workers: Ray Train workers (one DeepSpeed rank each).
        use_gpu: one GPU per worker.
        cpus_per_worker: CPUs reserved per worker.
        max_failures: worker-group restarts from the last complete checkpoint before giving up.
        num_checkpoints_to_keep: checkpoints Ray Train keeps.
    """

    name: str = "vidllm-train"
    storage_path: str = ""
    output_dir: str = ""
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 1
    num_checkpoints_to_keep: int = 3

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "run.name", "non-empty, without '/'")
        _check(self.num_workers >= 1, "run.num_workers", "must be >= 1")
        _check(self.max_failures >= -1, "run.max_failures", "must be >= -1 (-1: unlimited)")
        _check(self.num_checkpoints_to_keep >= 2, "run.num_checkpoints_to_keep",
               "must be >= 2 so that a complete checkpoint survives an incomplete newer one")


@dataclass
class FaultInjection:
    """TEST-ONLY fault-injection hook: rank ``kill_rank`` SIGKILLs its own process when it reaches optimizer step
    ``kill_at_step`` (once per run: a marker file in the output dir stops the resumed run from dying again).
    ``kill_at_step < 0`` (the default) disables it. Used by the fault-tolerance acceptance test.
    """

    kill_rank: int = 1
    kill_at_step: int = -1


@dataclass
class TrainConfig:
    """The whole training run.

    Attributes:
        stage: 1 (dual-teacher distillation) or 2 (joint optimisation, encoder frozen).
        model: ``VidLLMConfig.to_dict()`` tree for a Stage-1 model built from scratch (ignored when ``init_from``).
        init_from: Stage-2 start: an export dir/URI, ``runs:/<run_id>/model`` or ``mlflow-run:<run_id>``.
        parent_run_id: MLflow run that produced ``init_from`` (tagged on this run; filled in from ``init_from``).
    """

    stage: int = 1
    model: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""
    parent_run_id: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunSection = field(default_factory=RunSection)
    fault: FaultInjection = field(default_factory=FaultInjection)

    def __post_init__(self) -> None:
        _check(self.stage in (1, 2), "stage", f"must be 1 or 2, got {self.stage}")
        if self.stage == 2:
            _check(bool(self.init_from), "init_from", "Stage 2 starts from a Stage-1 model: set init_from")

    def validate_for_run(self) -> None:
        """Checks that only matter when launching (presets may leave paths empty)."""
        _check(bool(self.data.manifest_uri), "data.manifest_uri", "must be set")
        _check(bool(self.run.output_dir), "run.output_dir", "must be set")
        _check(bool(self.run.storage_path), "run.storage_path", "must be set")
        if self.stage == 1 and not self.init_from:
            _check(bool(self.model), "model", "Stage 1 from scratch needs a model config")
        _check(not self.init_from.startswith("<"), "init_from", f"placeholder {self.init_from!r} was not replaced")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        return _build(cls, data, "")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"train config field {prefix.rstrip('.') or '<root>'!r}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"train config: unknown field(s) {sorted(prefix + u for u in unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _SECTIONS.get((cls, name))
        kwargs[name] = _build(sub, value, f"{prefix}{name}.") if sub else _coerce(hints[name], value, prefix + name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"train config section {prefix.rstrip('.') or '<root>'!r}: {err}") from err


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Scalars to the declared type (YAML reads ``1e-3`` as a string); anything else unchanged."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"train config field {name!r}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"train config field {name!r}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"train config field {name!r}: expected a number, got {value!r}") from err
        if tp is int:
            if not number.is_integer():
                raise ConfigError(f"train config field {name!r}: expected an integer, got {value!r}")
            return int(number)
        return number
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"train config field {name!r}: expected a string, got {value!r}")
        return str(value)
    return value


_SECTIONS: dict[tuple[type, str], type] = {
    (TrainConfig, "data"): DataConfig,
    (TrainConfig, "optim"): OptimConfig,
    (TrainConfig, "deepspeed"): DeepSpeedSection,
    (TrainConfig, "schedule"): ScheduleConfig,
    (TrainConfig, "loss"): LossConfig,
    (TrainConfig, "tracking"): TrackingConfig,
    (TrainConfig, "run"): RunSection,
    (TrainConfig, "fault"): FaultInjection,
}


def stage1() -> TrainConfig:
    """Stage 1 (dual-teacher distillation) on the ``small`` model; paths come from the CLI."""
    from model import VidLLMConfig

    return TrainConfig(
        stage=1,
        model=VidLLMConfig.small().to_dict(),
        optim=OptimConfig(lr=1e-4, warmup_steps=200),
        schedule=ScheduleConfig(num_epochs=10, checkpoint_every=500, log_every=10),
        run=RunSection(name="vidllm-stage1", num_workers=8, use_gpu=True, cpus_per_worker=8),
    )


def stage2() -> TrainConfig:
    """Stage 2 (joint optimisation, encoder frozen) starting from Stage 1; ``init_from`` comes from the CLI."""
    return TrainConfig(
        stage=2,
        init_from="<set init_from>",
        optim=OptimConfig(lr=2e-5, warmup_steps=200),
        deepspeed=DeepSpeedSection(zero_stage=3),
        schedule=ScheduleConfig(num_epochs=3, checkpoint_every=500, log_every=10),
        run=RunSection(name="vidllm-stage2", num_workers=8, use_gpu=True, cpus_per_worker=8),
    )


def tiny(stage: int = 1) -> TrainConfig:
    """A CPU smoke run: tiny random model, 2 workers, few steps (tests and laptops)."""
    from model import VidLLMConfig

    return TrainConfig(
        stage=stage,
        model=VidLLMConfig.tiny().to_dict() if stage == 1 else {},
        init_from="" if stage == 1 else "<set init_from>",
        data=DataConfig(micro_batch_size=2, max_text_tokens=96),
        optim=OptimConfig(lr=3e-3, warmup_steps=2, min_lr_ratio=0.3),
        deepspeed=DeepSpeedSection(zero_stage=2, precision="fp32"),
        schedule=ScheduleConfig(num_epochs=1, checkpoint_every=2, log_every=1),
        run=RunSection(name=f"vidllm-tiny-stage{stage}", num_workers=2, cpus_per_worker=1),
    )


PRESETS = {"stage1": stage1, "stage2": stage2, "tiny": tiny}


class _YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a float (YAML 1.2 rule; PyYAML's 1.1 rule needs a dot)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (``["a", "b"]``, value parsed as YAML, so ``3``, ``1e-4``, ``true``, ``[1, 2]`` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r}: empty key")
    return parts, load_yaml(raw) if raw.strip() else ""


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply dotted overrides to a config dict in place (``model.*`` keys may go deeper than the dataclasses)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return tree


def resolve_config(source: str, overrides: Sequence[str] = (), stage: int | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from a preset name or a JSON/YAML file, then dotted overrides.

    Args:
        source: preset name (``stage1``, ``stage2``, ``tiny``) or path to a ``.json``/``.yaml``/``.yml`` file.
        overrides: ``dotted.key=value`` strings applied in order.
        stage: when given, forces ``stage`` (the CLI's ``--stage``); ``tiny`` uses it to choose its variant.
    """
    if source in PRESETS:
        preset = tiny(stage or 1) if source == "tiny" else PRESETS[source]()
        tree = preset.to_dict()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config {source!r}: neither a preset ({sorted(PRESETS)}) nor an existing file")
        text = path.read_text()
        try:
            tree = json.loads(text) if path.suffix == ".json" else load_yaml(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"config file {source}: cannot parse: {err}") from err
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {source}: top level must be a mapping")
    if stage is not None:
        tree["stage"] = stage
    apply_overrides(tree, overrides)
    return TrainConfig.from_dict(tree)
