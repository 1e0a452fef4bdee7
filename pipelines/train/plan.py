"""Check a training run before it books a cluster, and describe it (``python -m pipelines.train --dry-run``).

:func:`check_run` resolves every input the config names and reports each problem as one line naming the field:
missing paths, inputs that do not exist (shard manifest, ``init_from``, pretrained weights, tokenizer), an
unreadable model config, tokenizer ids that disagree with the LLM config, frames that are not multiples of the patch
size, teacher widths that differ from the distillation config, more workers than the data can feed, and a
connected cluster too small for the workers asked for. The model is built on the meta device (no memory, no
weights), so the plan can report parameters per component, what trains and a per-GPU memory estimate
(:func:`pipelines.train.memory.estimate_model_state`) for any preset, up to the paper's 8 B-parameter ``base()``.
The real run does the same checks before Ray starts.
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
from pipelines.train.memory import estimate_model_state


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


def _first_sample(manifest_uri: str) -> tuple[dict[str, Any], tuple[int, int]]:
    """The first training sample's ``teacher.json`` and frame size ``(H, W)`` (one sample streamed, no more)."""
    from pipelines import storage
    from pipelines.schema import decode_frames, iter_tar_samples
    from pipelines.train.data import load_shards

    shard = load_shards(manifest_uri)[0].uri
    with storage.open_uri(shard, "rb") as stream:
        sample = next(iter_tar_samples(stream, shard))
    frames = decode_frames(sample, sample["__key__"])
    teacher = json.loads(bytes(sample["teacher.json"])) if "teacher.json" in sample else {}
    return teacher, (int(frames.shape[1]), int(frames.shape[2]))


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


def check_run(cfg: TrainConfig, tracking_uri: str | None = None, cluster: dict[str, float] | None = None) -> RunPlan:
    """Every check of a run, and its plan.

    Args:
        cfg: the resolved training config.
        tracking_uri: MLflow tracking URI for registry/run URIs (``init_from``).
        cluster: the connected cluster's total resources (``ray.cluster_resources()``), when there is one.
    """
    import torch

    from model import VidLLM, VidLLMConfig
    from model.freezing import apply_freezing
    from pipelines.train.data import load_shards, steps_per_epoch
    from pipelines.train.deepspeed_config import use_bf16

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
    if shards:
        total = sum(s.num_samples for s in shards)
        spe = _attempt(plan, lambda: steps_per_epoch(shards, workers, cfg.data.micro_batch_size,
                                                     cfg.deepspeed.grad_accum_steps))
        if spe is None:
            plan.problems[-1] = f"train config field 'run.num_workers': {plan.problems[-1].split(': ', 1)[-1]}"
        else:
            steps = cfg.schedule.max_steps or spe * cfg.schedule.num_epochs
            plan.lines.append(f"data: {total} samples in {len(shards)} shards, {spe} steps per epoch, {steps} steps")
        sample = _attempt(plan, lambda: _first_sample(cfg.data.manifest_uri))
        if sample is not None and vidllm_cfg is not None:
            teacher, (h, w) = sample
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
        bf16 = use_bf16(cfg, cfg.run.use_gpu)
        estimate = estimate_model_state(total, counts["trainable"], cfg.deepspeed.zero_stage, workers, bf16)
        plan.lines.append(f"memory ({'bf16' if bf16 else 'fp32'}, {workers} ranks): {estimate.describe()}")
    return plan
