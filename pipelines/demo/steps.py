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


#: The geometry teacher's HF class in each mode: a random DINOv2 with registers (VGGT's encoder) or the real DINOv2-S.
RANDOM_GEOMETRY_ARCHITECTURE = "Dinov2WithRegistersModel"
REAL_GEOMETRY_ARCHITECTURE = "Dinov2Model"


def teacher_folders(cfg: DemoConfig, paths: DemoPaths) -> tuple[str, str, str]:
    """``(geometry teacher folder, semantic teacher folder, geometry teacher architecture)`` of this demo."""
    if cfg.weights_dir:
        from pipelines.weights import DINOV2_SMALL

        return os.path.join(cfg.weights_dir, DINOV2_SMALL), paths.semantic_teacher, REAL_GEOMETRY_ARCHITECTURE
    return paths.geometry_teacher, paths.semantic_teacher, RANDOM_GEOMETRY_ARCHITECTURE


def make_random_teachers(cfg: DemoConfig, paths: DemoPaths) -> bool:
    """Save the RANDOM-initialised teachers in HF layout, each labelled as a stand-in in its ``config.json``.

    No CLIP weights are installable offline, so the semantic teacher is always
    :func:`pipelines.teachers.semantic.write_random_clip`'s stand-in, as wide as the student's distillation config
    expects. The tiny demo's geometry teacher is a random DINOv2 with registers as wide as the tiny model expects;
    with ``weights_dir`` it is the real DINOv2-S and nothing is written for it. A random teacher carries no
    knowledge, so the stand-ins are 2 layers deep at a small input size: depth would only cost time. Returns True
    when they were created now (False: reused).
    """
    import torch
    from transformers import CLIPVisionConfig, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from model import VidLLMConfig
    from pipelines.teachers.architecture import STANDIN_KEY
    from pipelines.teachers.semantic import CLIP_L_336, write_random_clip

    geometry, semantic, _ = teacher_folders(cfg, paths)
    wanted = [semantic] if cfg.weights_dir else [geometry, semantic]
    if all(os.path.isfile(os.path.join(p, "config.json")) for p in wanted):
        return False
    if cfg.weights_dir:
        # The small model distils CLIP ViT-L/14's width (1024).
        clip = CLIPVisionConfig(**{**CLIP_L_336, "num_hidden_layers": 2, "image_size": 224})
    else:
        distill = VidLLMConfig.tiny().distill
        clip = CLIPVisionConfig(hidden_size=distill.teacher_sem_dim, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=2 * distill.teacher_sem_dim, image_size=42, patch_size=14)
        geo = Dinov2WithRegistersConfig(
            hidden_size=distill.teacher_geo_dim, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=2 * distill.teacher_geo_dim, image_size=56, patch_size=14, num_register_tokens=4)
        setattr(geo, STANDIN_KEY, "random Dinov2WithRegistersModel (seed 0; 2 layers) standing in for VGGT's "
                                  "DINOv2-L/14 with registers: no trained VGGT weights are installable offline")
        torch.manual_seed(0)
        Dinov2WithRegistersModel(geo).save_pretrained(geometry)
    write_random_clip(semantic, clip)
    return True


def teachers(cfg: DemoConfig, paths: DemoPaths, step: StepRecord) -> None:
    """Compute both teachers' targets for every clip (Ray Data actor pools) into TRAINING shards."""
    from pipelines import manifest as mf
    from pipelines.teachers.config import TeacherPoolConfig, TeachersConfig
    from pipelines.teachers.job import run_teachers

    created = make_random_teachers(cfg, paths)
    geometry, semantic, architecture = teacher_folders(cfg, paths)
    made = "created" if created else "saved"
    if cfg.weights_dir:
        step.note(f"geometry teacher: the real DINOv2-S ({geometry}); semantic teacher: a RANDOM stand-in "
                  f"CLIPVisionModel ({made} under {paths.teachers}, labelled vidllm_random_standin): no CLIP weights "
                  "are installable offline")
    else:
        step.note(f"teachers are RANDOM stand-ins (tiny Dinov2WithRegistersModel / CLIPVisionModel configs, "
                  f"{made} under {paths.teachers}): no real weights are available offline")
    done_before = storage.exists(mf.manifest_uri(paths.train_shards))
    pool = TeacherPoolConfig(batch_size=2, num_cpus=0.5, num_gpus=0.5 if cfg.use_gpu else 0.0)
    config = TeachersConfig(geometry, semantic, pool, pool, target_shard_bytes=2 * 1024**2,
                            cache_dir=os.path.join(paths.workdir, "cache", "teachers"),
                            geometry_architecture=architecture)
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
    """The training config of a stage: the ``tiny`` preset, or with ``weights_dir`` the ``stage1``/``stage2`` presets
    (the ``small`` model) with the real-weight overrides, pointed at the demo's shards, storage and MLflow store."""
    from pipelines import manifest as mf
    from pipelines.demo.config import real_weight_overrides
    from pipelines.train.config import resolve_config, tiny

    size = cfg.preset
    steps = size.stage1_steps if stage == 1 else size.stage2_steps
    if cfg.weights_dir:
        overrides = real_weight_overrides(cfg.weights_dir) if stage == 1 else []
        if stage == 1:
            # The geometry teacher of this demo is the real DINOv2-S (384 wide), not VGGT's DINOv2-L (1024).
            overrides.append("model.distill.teacher_geo_dim=384")
        base = resolve_config(f"stage{stage}", overrides)
        # The presets' budget of 64 tokens is for the word-level tokenizer; SmolLM2's chat template and digits take
        # more (a grounding answer alone is about 40).
        data = dataclasses.replace(base.data, max_text_tokens=256)
        # The presets' warm-up stays: full-rate first Adam steps move every pretrained weight by about the learning
        # rate, and two such steps at 1e-4 already break DINOv2-S's features (measured: the CLS cosine of a bus and
        # a photo of people goes from 0.62 to 0.94).
        optim = base.optim
    else:
        base = tiny(stage)
        data, optim = base.data, dataclasses.replace(base.optim, warmup_steps=1)
    return dataclasses.replace(
        base,
        init_from=init_from if stage == 2 else "",
        data=dataclasses.replace(data, manifest_uri=mf.manifest_uri(paths.train_shards), micro_batch_size=1,
                                 task_mix=dict(STAGE2_TASK_MIX)),
        optim=optim,
        schedule=dataclasses.replace(base.schedule, max_steps=steps, checkpoint_every=steps,
                                     log_every=max(1, steps // 20)),
        tracking=dataclasses.replace(base.tracking, tracking_uri=paths.tracking_uri, experiment=EXPERIMENT,
                                     registered_model=STAGE1_MODEL if stage == 1 else STAGE2_MODEL),
        run=dataclasses.replace(base.run, name=ray_run_name(stage), storage_path=paths.ray_storage,
                                output_dir=paths.stage1 if stage == 1 else paths.stage2,
                                num_workers=cfg.workers(), use_gpu=cfg.use_gpu, cpus_per_worker=1),
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
    from pipelines.train.plan import check_run

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
    plan = check_run(config, paths.tracking_uri)  # what `python -m pipelines.train` checks before Ray starts
    if plan.problems:
        raise ValueError("; ".join(plan.problems))
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
                          experiment=EVAL_EXPERIMENT, protocol=protocol, num_gpus=1.0 if cfg.use_gpu else 0.0)
    result = run_evaluation(model_uri, paths.clips, paths.eval_out, config, tracking_uri=paths.tracking_uri)
    head = headline_metrics(result.results)
    step.note(f"{result.num_clips} clips, {result.num_prompts} prompts; "
              + ", ".join(f"{k} {v:.2f}" for k, v in list(head.items())[:6]))
    step.note(f"results {results_uri}; MLflow: {result.tracking.message}")
    return {"model_uri": model_uri, "results": results_uri, "metrics": head}
