"""The data, training and evaluation steps of the demo, each a thin call into its stage's library API.

Every step reuses what an earlier run finished: the synthetic generator skips complete scenes, ingest and teachers
return the existing manifest, training is skipped when the exported model and its registry entry recorded in the
demo state are present, and evaluation when its results for the same registered model version are. A step that
reuses earlier results marks its :class:`~pipelines.demo.runner.StepRecord` as ``reused``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

from pipelines import storage
from pipelines.demo.config import DemoConfig, DemoPaths
from pipelines.demo.runner import StepRecord

#: Registered model names and the MLflow experiments of the demo.
STAGE1_MODEL = "vidllm-demo-stage1"
STAGE2_MODEL = "vidllm-demo"
EXPERIMENT = "vidllm-demo"
EVAL_EXPERIMENT = "vidllm-demo-eval"
#: The synthetic generator puts every ``val_every``-th scene starting at index 1 in val: scene 1 is the val scene.
VAL_SCENE = "scene0001_00"
#: Stage-2 language tasks of the demo: all three, as in the paper's joint stage.
STAGE2_TASK_MIX = {"qa": 1.0, "caption": 1.0, "grounding": 1.0}


def read_state(paths: DemoPaths) -> dict[str, Any]:
    """The demo's state file (what finished steps produced), or ``{}``."""
    if not os.path.isfile(paths.state):
        return {}
    with open(paths.state) as f:
        return json.load(f)


def write_state(paths: DemoPaths, state: dict[str, Any]) -> None:
    """Write the state file atomically (a killed run never leaves half of one)."""
    os.makedirs(os.path.dirname(paths.state), exist_ok=True)
    tmp = paths.state + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, paths.state)


def scenes(cfg: DemoConfig, paths: DemoPaths, step: StepRecord) -> None:
    """Render the synthetic ScanNet-format scenes (``.sens`` for ingest, H.264 video for the HTTP query)."""
    from pipelines.ingest.synthetic import SyntheticConfig, generate

    size = cfg.preset
    config = SyntheticConfig(out=paths.scenes, num_scenes=size.num_scenes, seed=cfg.seed, size="small",
                             num_frames=size.frames_per_scene, layouts=("sens", "video"))
    messages: list[str] = []

    def log(message: str) -> None:
        messages.append(message)
        print(message, flush=True)

    generate(config, log=log)
    skipped = sum(message.endswith("complete, skipped") for message in messages)
    if skipped == size.num_scenes:
        step.reused(f"{skipped} complete scenes in {paths.scenes}")
    else:
        step.note(f"{size.num_scenes} scenes ({size.frames_per_scene} frames of 160x120) in {paths.scenes}")


def ingest_config(cfg: DemoConfig):
    from pipelines.ingest.config import IngestConfig

    size = cfg.preset
    return IngestConfig(frames_per_clip=size.frames_per_clip, min_valid_frames=size.frames_per_clip,
                        clips_per_scene=size.clips_per_scene, resize_to=size.resize_to,
                        target_shard_bytes=1024**2)


def ingest(cfg: DemoConfig, paths: DemoPaths, step: StepRecord) -> None:
    """Decode the scenes into WebDataset CLIP shards (Ray Data)."""
    from pipelines import manifest as mf
    from pipelines.ingest.job import run_ingest

    done_before = storage.exists(mf.manifest_uri(paths.clips))
    manifest = run_ingest(paths.scenes, paths.clips, ingest_config(cfg),
                          annotations_uri=storage.join(paths.scenes, "annotations"))
    written = manifest.summary.get("scenes_written", 0)
    if written == 0:
        raise RuntimeError(f"no scene was ingested; quarantine: {storage.join(paths.clips, 'quarantine.json')}")
    if done_before:
        step.reused(f"manifest {mf.manifest_uri(paths.clips)}")
    step.note(f"{len(manifest.shards)} shard(s), {sum(len(s.keys) for s in manifest.shards)} clips of "
              f"{written} scenes; manifest {mf.manifest_uri(paths.clips)}")


def make_random_teachers(paths: DemoPaths) -> bool:
    """Save tiny RANDOM-initialised teachers in HF layout (no real weights are available offline).

    Their widths match the tiny student's distillation config, so Stage 1 can distil them. Returns True when they
    were created now (False: reused).
    """
    import torch
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    from model import VidLLMConfig

    if all(os.path.isfile(os.path.join(p, "config.json")) for p in (paths.geometry_teacher, paths.semantic_teacher)):
        return False
    distill = VidLLMConfig.tiny().distill
    torch.manual_seed(0)
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=distill.teacher_geo_dim, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * distill.teacher_geo_dim, image_size=56, patch_size=14, num_register_tokens=4,
    )).save_pretrained(paths.geometry_teacher)
    CLIPVisionModel(CLIPVisionConfig(
        hidden_size=distill.teacher_sem_dim, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * distill.teacher_sem_dim, image_size=42, patch_size=14,
    )).save_pretrained(paths.semantic_teacher)
    return True


def teachers(cfg: DemoConfig, paths: DemoPaths, step: StepRecord) -> None:
    """Compute both teachers' targets for every clip (Ray Data actor pools) into TRAINING shards."""
    from pipelines import manifest as mf
    from pipelines.teachers.config import TeacherPoolConfig, TeachersConfig
    from pipelines.teachers.job import run_teachers

    created = make_random_teachers(paths)
    step.note(f"teachers are RANDOM stand-ins (tiny Dinov2WithRegistersModel / CLIPVisionModel configs, "
              f"{'created' if created else 'saved'} under {paths.teachers}): no real weights are available offline")
    done_before = storage.exists(mf.manifest_uri(paths.train_shards))
    pool = TeacherPoolConfig(batch_size=2, num_cpus=0.5)  # both pools and the I/O actors fit 2 CPUs
    config = TeachersConfig(paths.geometry_teacher, paths.semantic_teacher, pool, pool,
                            target_shard_bytes=2 * 1024**2, cache_dir=os.path.join(paths.workdir, "cache", "teachers"))
    manifest = run_teachers(paths.clips, paths.train_shards, config)
    if manifest.summary.get("clips_written", 0) == 0:
        raise RuntimeError(f"no clip got teacher targets; see {storage.join(paths.train_shards, 'quarantine.json')}")
    if done_before:
        step.reused(f"manifest {mf.manifest_uri(paths.train_shards)}")
    step.note(f"{manifest.summary['clips_written']} training clips in {len(manifest.shards)} shard(s); "
              f"manifest {mf.manifest_uri(paths.train_shards)}")


def ray_run_name(stage: int) -> str:
    """Ray Train run name of a stage (its checkpoints are under ``<ray_storage>/<name>``)."""
    return f"vidllm-demo-stage{stage}"


def train_config(cfg: DemoConfig, paths: DemoPaths, stage: int, init_from: str = ""):
    """The ``tiny`` training preset pointed at the demo's shards, storage and MLflow store."""
    from pipelines import manifest as mf
    from pipelines.train.config import tiny

    size = cfg.preset
    steps = size.stage1_steps if stage == 1 else size.stage2_steps
    base = tiny(stage)
    return dataclasses.replace(
        base,
        init_from=init_from if stage == 2 else "",
        data=dataclasses.replace(base.data, manifest_uri=mf.manifest_uri(paths.train_shards), micro_batch_size=1,
                                 task_mix=dict(STAGE2_TASK_MIX)),
        optim=dataclasses.replace(base.optim, warmup_steps=1),
        schedule=dataclasses.replace(base.schedule, max_steps=steps, checkpoint_every=steps,
                                     log_every=max(1, steps // 20)),
        tracking=dataclasses.replace(base.tracking, tracking_uri=paths.tracking_uri, experiment=EXPERIMENT,
                                     registered_model=STAGE1_MODEL if stage == 1 else STAGE2_MODEL),
        run=dataclasses.replace(base.run, name=ray_run_name(stage), storage_path=paths.ray_storage,
                                output_dir=paths.stage1 if stage == 1 else paths.stage2,
                                num_workers=2 if cfg.cpus() >= 2 else 1),
    )


def ensure_experiments(paths: DemoPaths) -> None:
    """Create the demo's MLflow experiments with artifact roots under the demo storage (local or ``s3://``).

    The stages would create them on first use with an artifact root derived from their own output folder; making
    them here keeps every artifact of the store in one place, next to the data it was made from.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(paths.tracking_uri)
    for name in (EXPERIMENT, EVAL_EXPERIMENT):
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=storage.join(paths.storage, "mlartifacts", name))


def train(cfg: DemoConfig, paths: DemoPaths, step: StepRecord, stage: int, state: dict[str, Any]) -> dict[str, Any]:
    """Train one stage with Ray Train + DeepSpeed ZeRO-2 (export, MLflow run and registration included).

    Returns:
        The stage's entry of the demo state: ``run_id``, ``model_uri``, ``registered_model``, ``model_version``.
    """
    from pipelines.train.export import model_uri
    from pipelines.train.launch import run_training

    key = f"stage{stage}"
    out = paths.stage1 if stage == 1 else paths.stage2
    exported = model_uri(out)
    previous = state.get(key)
    if previous and previous.get("model_uri") == exported and storage.exists(storage.join(exported, "model.safetensors")):
        step.reused(f"exported model {exported}, registered as {previous['registered_model']} "
                    f"version {previous['model_version']}")
        return previous
    ensure_experiments(paths)
    init_from = state["stage1"]["model_uri"] if stage == 2 else ""
    config = train_config(cfg, paths, stage, init_from)
    result = run_training(config)
    if result.model_version is None:
        raise RuntimeError(f"stage {stage}: the model at {exported} was not registered in {result.tracking_uri}")
    metrics = result.metrics or {}
    loss = metrics.get("loss")
    step.note(f"{config.schedule.max_steps} steps on {config.run.num_workers} DeepSpeed ZeRO-"
              f"{config.deepspeed.zero_stage} worker(s)" + (f", last loss {loss:.4f}" if loss is not None else "")
              + f"; exported to {result.model_uri}")
    step.note(f"MLflow run {result.run_id}, registered {config.tracking.registered_model} "
              f"version {result.model_version}")
    return {"run_id": result.run_id, "model_uri": result.model_uri, "checkpoint": result.checkpoint_path,
            "registered_model": config.tracking.registered_model, "model_version": result.model_version}


def check_registered(paths: DemoPaths, name: str, version: str) -> str:
    """The source URI of registered model ``name``/``version`` (raises when the registry lacks it)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(paths.tracking_uri).get_model_version(name, version).source


def evaluate(cfg: DemoConfig, paths: DemoPaths, step: StepRecord, model_uri: str,
             state: dict[str, Any]) -> dict[str, Any]:
    """Run the evaluation job (Ray Data batch inference + harness) on the clip shards; results go to MLflow.

    Returns:
        The demo-state entry: ``model_uri``, ``results``, headline ``metrics``.
    """
    from pipelines.eval.config import EvalJobConfig
    from pipelines.eval.report import headline_metrics
    from pipelines.eval.run import run_evaluation

    results_uri = storage.join(paths.eval_out, "results.json")
    previous = state.get("eval")
    if previous and previous.get("model_uri") == model_uri and storage.exists(results_uri):
        step.reused(f"results of {model_uri} in {results_uri}")
        return previous
    base = EvalJobConfig.tiny()
    # METEOR runs a Java scorer; without Java the other caption metrics are still computed.
    protocol = dataclasses.replace(base.protocol, meteor=shutil.which("java") is not None)
    config = base.replace(max_queries_per_task=cfg.preset.eval_queries, cache_dir=paths.eval_cache,
                          experiment=EVAL_EXPERIMENT, protocol=protocol)
    result = run_evaluation(model_uri, paths.clips, paths.eval_out, config, tracking_uri=paths.tracking_uri)
    head = headline_metrics(result.results)
    step.note(f"{result.num_clips} clips, {result.num_prompts} prompts; "
              + ", ".join(f"{k} {v:.2f}" for k, v in list(head.items())[:6]))
    step.note(f"results {results_uri}; MLflow: {result.tracking.message}")
    return {"model_uri": model_uri, "results": results_uri, "metrics": head}
