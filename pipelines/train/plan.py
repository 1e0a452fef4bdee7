"""Check a training run before it books a cluster, and describe it (``python -m pipelines.train --dry-run``).

:func:`check_run` resolves every input the config names and reports each problem as one line naming the field:
missing paths, inputs that do not exist (shard manifest, ``init_from``, pretrained weights, tokenizer), an
unreadable model config, tokenizer ids that disagree with the LLM config, frames that are not multiples of the patch
size, teacher widths that differ from the distillation config, more workers than the data can feed, and a
connected cluster too small for the workers asked for. The model is built on the meta device (no memory, no
weights), so the plan can report parameters per component, what trains and the per-GPU peak memory of a training
step (:func:`pipelines.train.memory.estimate_memory`: model state, DeepSpeed buffers and activations traced for the
run's clip shape) for any preset, up to the paper's 8 B-parameter ``base()``; with ``run.gpu_memory_gib`` set, a
step that does not fit is a problem. The clip shape is the first training sample's (frames subsampled to
``data.num_frames``); without readable data, the encoder's image size and ``data.num_frames`` (or 8 frames) stand in.
The disk the run's checkpoints and export take on this machine's file systems (:mod:`pipelines.train.disk`) is
checked against their free space (a dry run only reports it: it may run elsewhere than the job). The real run does
the same checks before Ray starts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines import preflight
from pipelines.config import UsageError
from pipelines.train.config import MODEL_ARTIFACT_FIELDS, TrainConfig
from pipelines.train.disk import check_disk, disk_uses
from pipelines.train.memory import GIB, StepShape, estimate_memory, headroom_gib

#: Text tokens per example assumed by the memory estimate when ``data.max_text_tokens`` is 0 (no cap): the
#: benchmarks' longest examples (Multi3DRefer answers with several boxes) take about 120 tokens with a BPE tokenizer.
ASSUMED_TEXT_TOKENS = 256


@dataclass
class RunPlan:
    """The outcome of :func:`check_run`.

    Attributes:
        problems: one line per problem (empty: the run can start).
        lines: the plan, for printing.
    """

    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def _attempt(plan: RunPlan, fn: Callable[[], Any]) -> Any:
    """``fn()``, or ``None`` with its one-line error recorded as a problem."""
    try:
        return fn()
    except UsageError as err:
        plan.problems.append(str(err))
    except (ValueError, OSError) as err:
        plan.problems.append(f"{type(err).__name__}: {err}")
    return None


def _first_sample(manifest_uri: str) -> tuple[dict[str, Any], tuple[int, int], int]:
    """The first training sample's ``teacher.json``, frame size ``(H, W)`` and frame count (one sample streamed)."""
    from pipelines import storage
    from pipelines.schema import decode_frames, iter_tar_samples
    from pipelines.train.data import load_shards

    shard = load_shards(manifest_uri)[0].uri
    with storage.open_uri(shard, "rb") as stream:
        sample = next(iter_tar_samples(stream, shard))
    frames = decode_frames(sample, sample["__key__"])
    teacher = json.loads(bytes(sample["teacher.json"])) if "teacher.json" in sample else {}
    return teacher, (int(frames.shape[1]), int(frames.shape[2])), int(frames.shape[0])


def model_tree(cfg: TrainConfig, tracking_uri: str | None) -> dict[str, Any]:
    """The ``VidLLMConfig`` tree the run will build: ``cfg.model``, or ``init_from``'s config.json."""
    from pipelines.artifacts import read_model_config

    if cfg.init_from:
        return read_model_config(cfg.init_from, tracking_uri, flag="init_from")
    return cfg.model


def _check_model_paths(plan: RunPlan, tree: dict[str, Any]) -> None:
    for dotted in MODEL_ARTIFACT_FIELDS:
        node: Any = tree
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node:
            _attempt(plan, lambda uri=node, name=dotted: preflight.readable(
                uri, f"model.{name}", "pretrained folder", "give a local directory or URI of an HF-layout folder"))


def _tokenizer(plan: RunPlan, vidllm_cfg) -> None:
    """Build the tokenizer of a model trained from scratch (small; a URI is downloaded) and check its ids against
    the LLM config. (A run from ``init_from`` uses the tokenizer saved with that checkpoint, checked at export.)"""
    from model import build_tokenizer
    from pipelines.artifacts import is_local, local_dir

    llm = vidllm_cfg.llm
    try:
        path = llm.tokenizer_path
        if path and not is_local(path):
            llm = dataclasses.replace(llm, tokenizer_path=local_dir(path, flag="model.llm.tokenizer_path"))
        build_tokenizer(llm)
    except UsageError as err:
        plan.problems.append(str(err))
    except (ValueError, OSError) as err:
        hint = ("set model.llm.tokenizer_path to the LLM's own tokenizer folder (its <scene>/<loc> ids follow its "
                "vocabulary)" if llm.tokenizer_path is None else "check that the folder holds the LLM's tokenizer")
        plan.problems.append(f"train config field 'model.llm.tokenizer_path': {err}: {hint}")


def check_run(cfg: TrainConfig, tracking_uri: str | None = None, cluster: dict[str, float] | None = None,
              disk: bool = True) -> RunPlan:
    """Every check of a run, and its plan.

    Args:
        cfg: the resolved training config.
        tracking_uri: MLflow tracking URI for registry/run URIs (``init_from``).
        cluster: the connected cluster's total resources (``ray.cluster_resources()``), when there is one.
        disk: this machine runs the job (its driver and local checkpoints): a local file system too small for what
            the run writes is a problem. ``False`` (a dry run, often on another machine than the job's): the disk
            lines are printed for this machine, as information.
    """
    import torch

    from model import VidLLM, VidLLMConfig
    from model.freezing import apply_freezing
    from pipelines.train.data import load_shards, steps_per_epoch

    plan = RunPlan(problems=cfg.run_problems())
    for name in ("run.output_dir", "run.storage_path"):
        value = getattr(cfg.run, name.split(".")[1])
        if value:
            _attempt(plan, lambda v=value, n=name: preflight.writable(v, n))
    shards = None
    if cfg.data.manifest_uri:
        from pipelines.manifest import manifest_uri

        uri = cfg.data.manifest_uri
        before = len(plan.problems)
        _attempt(plan, lambda: preflight.readable(
            uri if uri.endswith(".json") else manifest_uri(uri), "data.manifest_uri", "shard manifest",
            "run the teachers job first, or check the path"))
        if len(plan.problems) == before:
            shards = _attempt(plan, lambda: load_shards(uri))
            if shards is None and "data.manifest_uri" not in plan.problems[-1]:
                plan.problems[-1] = f"train config field 'data.manifest_uri' {uri}: {plan.problems[-1]}"
    tree = _attempt(plan, lambda: model_tree(cfg, tracking_uri)) if (cfg.init_from or cfg.model) else None
    vidllm_cfg = None
    if tree is not None:
        _check_model_paths(plan, tree)
        try:
            vidllm_cfg = VidLLMConfig.from_dict(json.loads(json.dumps(tree)))
        except (ValueError, TypeError) as err:
            plan.problems.append(f"train config field {'init_from' if cfg.init_from else 'model'!r}: not a valid "
                                 f"model config: {err}")
    workers = cfg.run.num_workers
    plan.lines.append(f"stage {cfg.stage}, {workers} worker(s) x ({cfg.run.cpus_per_worker:g} CPU"
                      f"{', 1 GPU' if cfg.run.use_gpu else ''}), ZeRO-{cfg.deepspeed.zero_stage}, micro-batch "
                      f"{cfg.data.micro_batch_size} x {cfg.deepspeed.grad_accum_steps} accumulation")
    if cluster is not None:
        cpus, gpus = workers * cfg.run.cpus_per_worker, workers if cfg.run.use_gpu else 0
        if cluster.get("CPU", 0) < cpus or cluster.get("GPU", 0) < gpus:
            plan.problems.append(
                f"train config field 'run.num_workers': {workers} workers need {cpus:g} CPUs and {gpus} GPUs, the "
                f"cluster has {cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs: lower "
                "run.num_workers or run.cpus_per_worker, or add nodes")
    clip = None
    total_steps = cfg.schedule.max_steps or None
    if shards:
        total = sum(s.num_samples for s in shards)
        spe = _attempt(plan, lambda: steps_per_epoch(shards, workers, cfg.data.micro_batch_size,
                                                     cfg.deepspeed.grad_accum_steps))
        if spe is None:
            plan.problems[-1] = f"train config field 'run.num_workers': {plan.problems[-1].split(': ', 1)[-1]}"
        else:
            total_steps = cfg.schedule.max_steps or spe * cfg.schedule.num_epochs
            plan.lines.append(f"data: {total} samples in {len(shards)} shards, {spe} steps per epoch, "
                              f"{total_steps} steps")
        sample = _attempt(plan, lambda: _first_sample(cfg.data.manifest_uri))
        if sample is not None:
            clip = (sample[2], *sample[1])
        if sample is not None and vidllm_cfg is not None:
            teacher, (h, w), _ = sample
            patch = vidllm_cfg.patch_size
            plan.lines.append(f"frames: {h}x{w} pixels, patch {patch} -> {h // patch}x{w // patch} patches per frame")
            if h % patch or w % patch:
                plan.problems.append(f"train config field 'data.manifest_uri': frames are {h}x{w}, not multiples of "
                                     f"the model's patch size {patch}: ingest with patch_multiple={patch}")
            if cfg.stage == 1 and teacher:
                for key, want in (("geo_dim", vidllm_cfg.distill.teacher_geo_dim),
                                  ("sem_dim", vidllm_cfg.distill.teacher_sem_dim)):
                    if key in teacher and int(teacher[key]) != want:
                        plan.problems.append(
                            f"train config field 'model.distill.teacher_{key}': the shards' teacher width is "
                            f"{teacher[key]}, the model expects {want}: set it to {teacher[key]} or use the "
                            "teachers this model was configured for")
    if vidllm_cfg is None:
        return plan
    if cfg.init_from:
        plan.lines.append(f"model and tokenizer from init_from {cfg.init_from}")
    else:
        _tokenizer(plan, vidllm_cfg)
    meta_cfg = dataclasses.replace(
        vidllm_cfg, encoder=dataclasses.replace(vidllm_cfg.encoder, pretrained_path=None),
        llm=dataclasses.replace(vidllm_cfg.llm, pretrained_path=None, tokenizer_path=None))
    with torch.device("meta"):
        model = VidLLM(meta_cfg)
    counts = _attempt(plan, lambda: apply_freezing(model, cfg.freeze.trainable, cfg.freeze.frozen))
    per = {}
    for name, param in model.named_parameters():
        entry = per.setdefault(name.split(".")[0], [0, 0])
        entry[0] += param.numel()
        entry[1] += param.numel() if param.requires_grad else 0
    plan.lines.append("parameters (total / trainable):")
    plan.lines += [f"  {name:<15} {total / 1e6:10.2f} M / {train / 1e6:10.2f} M" for name, (total, train) in per.items()]
    if counts is not None:
        total = counts["trainable"] + counts["frozen"]
        plan.lines.append(f"  {'all':<15} {total / 1e6:10.2f} M / {counts['trainable'] / 1e6:10.2f} M")
        _memory(plan, cfg, model, vidllm_cfg, clip)
        _disk(plan, cfg, total, counts["trainable"], total_steps, tracking_uri, disk)
    return plan


def _disk(plan: RunPlan, cfg: TrainConfig, total: int, trainable: int, total_steps: int | None,
          tracking_uri: str | None, enforce: bool) -> None:
    """The disk lines of the plan, and (``enforce``) a problem per local file system the run would fill."""
    from pipelines.train.deepspeed_config import use_bf16

    uses = disk_uses(cfg, total, trainable, use_bf16(cfg, cfg.run.use_gpu), total_steps,
                     tracking_uri or cfg.tracking.tracking_uri)
    lines, problems = check_disk(uses)
    plan.lines += lines
    if enforce:
        plan.problems += problems
    else:
        plan.lines += [f"  not enough here, if this machine runs the job: {problem}" for problem in problems]


def _memory(plan: RunPlan, cfg: TrainConfig, model, vidllm_cfg, clip: tuple[int, int, int] | None) -> None:
    """The per-GPU memory lines of the plan, and a problem when the step does not fit ``run.gpu_memory_gib``."""
    from pipelines.train.deepspeed_config import use_bf16

    if clip is None:
        size = int(vidllm_cfg.encoder.dinov2.get("image_size", 224))
        frames, height, width, where = cfg.data.num_frames or 8, size, size, "nominal clip, no sample read"
    else:
        frames, height, width = clip
        frames, where = min(frames, cfg.data.num_frames or frames), "clip shape of the first sample"
    text = cfg.data.max_text_tokens or ASSUMED_TEXT_TOKENS
    shape = StepShape(cfg.data.micro_batch_size, frames, height, width, text)
    bf16 = use_bf16(cfg, cfg.run.use_gpu)
    workers = cfg.run.num_workers
    checkpointed = [k for k, v in dataclasses.asdict(cfg.activation_checkpointing).items() if v] or ["none"]
    plan.lines.append(
        f"memory per GPU ({'bf16' if bf16 else 'fp32'}, {workers} ranks, ZeRO-{cfg.deepspeed.zero_stage}, "
        f"micro-batch {shape.micro_batch} x {frames} frames of {height}x{width} ({where}), "
        f"{text if cfg.stage == 2 else 0} text tokens, activation checkpointing: {', '.join(checkpointed)}, "
        f"offload optimizer {cfg.deepspeed.offload_optimizer}, params {cfg.deepspeed.offload_params}):")
    estimate = _attempt(plan, lambda: estimate_memory(model, cfg, shape, workers, bf16))
    if estimate is None:
        return
    plan.lines.append(f"  {estimate.describe()}")
    gpu = cfg.run.gpu_memory_gib
    if gpu:
        left = headroom_gib(estimate, gpu)
        if left >= 0:
            plan.lines.append(f"  fits {gpu:g} GiB GPUs: {left:.1f} GiB headroom")
        else:
            plan.problems.append(
                f"train config field 'run.gpu_memory_gib': the estimated step peak {estimate.total / GIB:.1f} GiB per "
                f"GPU does not fit {gpu:g} GiB: lower data.micro_batch_size or data.num_frames, switch on "
                "activation_checkpointing.*, use deepspeed.zero_stage=3, offload (deepspeed.offload_optimizer=cpu) "
                "or add GPUs")
