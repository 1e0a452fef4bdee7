"""Learning benchmark: does a model trained by this pipeline answer, ground and reconstruct scenes it never saw?

Scenes of two seeds: training scenes (``--train-seed``) and held-out scenes (``--heldout-seed``, other scene
indices too). The real stages run through their public entry points, in this process, on one local Ray instance:

    synthetic scenes -> ingest (CLIP shards) -> teachers (TRAINING shards, training scenes only)
    -> Stage 1 (distillation) -> Stage 2 (joint) -> evaluation on the held-out CLIP shards

once per run. A run is a model variant trained on one seed pair:

* ``full``: the model as configured;
* ``blind``: the same model trained on the same questions and answers with no scene tokens
  (``model.vl.blind``): it can only learn the answer prior, and its boxes come from the prior too;
* ``no_bridge``: the Cross-Task Adapter's bridge tokens are not written back (``model.adapter.writeback="none"``);
* ``no_metric_depth``: scale fixed to 1 (``model.scale.fixed_scale``) and the metric-depth loss off.

Each variant trains its own Stage 1 as well (the bridge changes the adapter's parameters, and the other flags
belong to the model config the export carries). ``--noise-seeds N`` trains ``full`` and ``blind`` again on N more
seed pairs (training seed + k, held-out seed + k), whose spread is the seed noise.

Reported on the held-out scenes: ScanQA exact match per question family next to its chance level (the best
question-only predictor fitted on the training questions, :mod:`pipelines.ingest.synthetic.priors`); ScanRefer
Acc@0.25 (unique / multiple) and Multi3DRefer F1@0.25 against the blind baseline, next to the ceiling that exact
first-camera boxes reach once mapped to the benchmark frame; metric depth AbsRel and delta < 1.25 and pose
RRA/RTA@30 against a constant-depth baseline (the median training depth). Everything the run produces stays under
``--out``: scenes, shards, the resolved configs of every stage, the MLflow store (``mlflow.db``, ``mlartifacts/``),
per-step logs (``logs/``), the evaluation outputs and ``bench_learning.json``. Rerunning with the same arguments
reuses finished steps; ``--fresh`` starts over.

Run: ``python bench/bench_learning.py`` (the five question families in rooms of several classes, grounding, the
four variants and one more seed pair for full and blind), ``--quick`` (full vs blind on the colour family in
one-class rooms). Both sizes use 256 training and 64 held-out scenes of 10 frames (one 8-frame clip per scene, 56 px
short side) and the tiny random ViT trained end to end in Stage 2, 600 Stage-2 steps at a peak learning rate of
7.5e-4 (at 1.5e-3 the LM stays on the answer prior); measured times, results and seed noise in
``bench/README.md``. Larger settings go through the flags (``--encoder`` for DINOv2-S, ``--train-scenes``,
``--stage2-steps``, ``--short-side``, ``--num-workers``, ``--gpu``, ...). Ends with
``RESULT <name> <value> <unit> target <op> <value>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipelines import storage  # noqa: E402
from pipelines.demo.run import DEMO_ENV_DEFAULTS  # noqa: E402
from pipelines.demo.runner import Progress  # noqa: E402
from pipelines.ingest.synthetic.language import QUESTION_FAMILIES  # noqa: E402
from pipelines.ingest.synthetic.priors import chance_levels  # noqa: E402

VARIANTS = ("full", "blind", "no_bridge", "no_metric_depth")
#: Families whose answers depend on the scene (all of them: the generator balances every family).
SCENE_FAMILIES = QUESTION_FAMILIES
EXPERIMENT = "bench-learning"
EVAL_EXPERIMENT = "bench-learning-eval"
HELDOUT_FIRST_INDEX = 5000


@dataclasses.dataclass(frozen=True)
class Size:
    """How much work a run does (every field is also a flag)."""

    train_scenes: int
    heldout_scenes: int
    frames_per_scene: int
    frames_per_clip: int
    clips_per_scene: int
    short_side: int
    stage1_steps: int
    stage2_steps: int
    micro_batch: int
    lr: float
    class_probability: float
    families: tuple[str, ...]
    variants: tuple[str, ...]
    noise_seeds: int
    grounding: bool


#: The quick recipe (measured in bench/README.md) on the five families in rooms of several classes, with grounding,
#: the four variants and one noise pair. It keeps the tiny random ViT: with DINOv2-S a Stage-2 step took 3.8 s on 2
#: cores against 0.55-0.78 s, about 4 h for the run; --encoder selects DINOv2-S.
DEFAULT_SIZE = Size(train_scenes=256, heldout_scenes=64, frames_per_scene=10, frames_per_clip=8, clips_per_scene=1,
                    short_side=56, stage1_steps=2, stage2_steps=600, micro_batch=4, lr=7.5e-4,
                    class_probability=0.5, families=QUESTION_FAMILIES, variants=VARIANTS, noise_seeds=1, grounding=True)
SIZES = {
    "default": DEFAULT_SIZE,
    # One family in one-class rooms, full vs blind: the CI variant.
    "quick": dataclasses.replace(DEFAULT_SIZE, class_probability=0.02, families=("color",), variants=("full", "blind"),
                                 noise_seeds=0, grounding=False),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the fast variant (colour family, full vs blind)")
    p.add_argument("--out", default="", help="output folder (default: bench_learning_out[_quick] in the cwd)")
    p.add_argument("--fresh", action="store_true", help="delete the output folder first")
    p.add_argument("--train-seed", type=int, default=0, help="seed of the training scenes")
    p.add_argument("--heldout-seed", type=int, default=1, help="seed of the held-out scenes")
    for field in dataclasses.fields(Size):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("int", "float"):
            p.add_argument(flag, type=int if field.type == "int" else float, help=f"override the size's {field.name}")
        elif field.name in ("families", "variants"):
            p.add_argument(flag, help=f"comma-separated override of the size's {field.name}")
    p.add_argument("--grounding", choices=("on", "off"), help="train and score grounding (default: the size's)")
    p.add_argument("--encoder", default="",
                   help="local HF folder of the DINOv2-S encoder, e.g. $VIDLLM_WEIGHTS_DIR/dinov2-small "
                   "(`vidllm weights install`); default: the tiny random ViT, trained end to end in Stage 2")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (DeepSpeed ranks) per stage")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of the local Ray instance (0 = all)")
    p.add_argument("--gpu", action="store_true", help="train and evaluate on GPUs (one per worker / actor)")
    return p


def resolve_size(args: argparse.Namespace) -> Size:
    base = SIZES["quick" if args.quick else "default"]
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(Size):
        value = getattr(args, field.name, None)
        if value is None:
            continue
        if field.name in ("families", "variants"):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        elif field.name == "grounding":
            value = value == "on"
        changes[field.name] = value
    size = dataclasses.replace(base, **changes)
    bad = set(size.families) - set(QUESTION_FAMILIES)
    if bad or not size.families:
        raise ValueError(f"--families must be a non-empty subset of {QUESTION_FAMILIES}, got {size.families}")
    if set(size.variants) - set(VARIANTS) or "full" not in size.variants or "blind" not in size.variants:
        raise ValueError(f"--variants must include full and blind, from {VARIANTS}; got {size.variants}")
    if size.frames_per_scene < size.frames_per_clip + 2:
        raise ValueError("--frames-per-scene must exceed --frames-per-clip by the 2 lost-tracking frames")
    return size


# ------------------------------------------------------------------------------------------------- data steps
def scene_config(root: str, size: Size, seed: int, heldout: bool):
    from pipelines.ingest.synthetic import SyntheticConfig

    return SyntheticConfig(out=root, num_scenes=size.heldout_scenes if heldout else size.train_scenes, seed=seed,
                           size="small", num_frames=size.frames_per_scene, layouts=("sens",),
                           first_scene_index=HELDOUT_FIRST_INDEX if heldout else 0,
                           class_probability=size.class_probability, question_families=size.families,
                           situated_questions=False)


def make_data(out: str, size: Size, train_seed: int, heldout_seed: int, progress: Progress, tag: str) -> dict:
    """Scenes, clip shards and training shards of one seed pair; returns their locations."""
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.job import run_ingest
    from pipelines.ingest.synthetic import generate
    from pipelines.teachers.config import TeacherPoolConfig, TeachersConfig
    from pipelines.teachers.job import run_teachers

    data = os.path.join(out, "data", tag)
    where = {"train_scenes": os.path.join(data, "scenes_train"), "heldout_scenes": os.path.join(data, "scenes_heldout"),
             "train_clips": os.path.join(data, "clips_train"), "heldout_clips": os.path.join(data, "clips_heldout"),
             "train_shards": os.path.join(data, "train_shards")}
    with progress.step(f"scenes-{tag}", f"synthetic scenes (train seed {train_seed}, held-out seed {heldout_seed})"):
        generate(scene_config(where["train_scenes"], size, train_seed, False), log=print)
        generate(scene_config(where["heldout_scenes"], size, heldout_seed, True), log=print)
    with progress.step(f"ingest-{tag}", "ingest: scenes -> clip shards (Ray Data)"):
        for split, clips in (("train", size.clips_per_scene), ("heldout", 1)):
            config = IngestConfig(frames_per_clip=size.frames_per_clip, min_valid_frames=size.frames_per_clip,
                                  clips_per_scene=clips, resize_to=size.short_side, target_shard_bytes=4 * 1024**2)
            scenes = where[f"{split}_scenes"]
            run_ingest(scenes, where[f"{split}_clips"], config, annotations_uri=os.path.join(scenes, "annotations"))
    with progress.step(f"teachers-{tag}", "teachers: training clips -> training shards (Ray Data)"):
        geo, sem = random_teachers(os.path.join(out, "teachers"))
        pool = TeacherPoolConfig(batch_size=4, num_cpus=0.5)
        config = TeachersConfig(geo, sem, pool, pool, target_shard_bytes=4 * 1024**2,
                                cache_dir=os.path.join(out, "cache", "teachers"))
        run_teachers(where["train_clips"], where["train_shards"], config)
    return where


def random_teachers(root: str) -> tuple[str, str]:
    """Tiny RANDOM teachers in HF layout (no VGGT / CLIP weights are installable offline), at the widths of the
    student's distillation config; created once."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    from model import VidLLMConfig

    geo, sem = os.path.join(root, "geometry"), os.path.join(root, "semantic")
    if all(os.path.isfile(os.path.join(p, "config.json")) for p in (geo, sem)):
        return geo, sem
    distill = VidLLMConfig.tiny().distill
    torch.manual_seed(0)
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=distill.teacher_geo_dim, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * distill.teacher_geo_dim, image_size=56, patch_size=14, num_register_tokens=4,
    )).save_pretrained(geo)
    CLIPVisionModel(CLIPVisionConfig(
        hidden_size=distill.teacher_sem_dim, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * distill.teacher_sem_dim, image_size=42, patch_size=14,
    )).save_pretrained(sem)
    return geo, sem


# --------------------------------------------------------------------------------------------- model + training
def model_config(variant: str, encoder_path: str = "") -> dict:
    """The Stage-1 model of ``variant``.

    Without ``encoder_path``: the ``tiny`` preset (random 32-wide ViT). With it: the real DINOv2-S/14 at that local
    path, with the other components kept small enough for CPUs (2-layer reconstruction branch, small DPT heads).
    Either way the LM is a small Llama over the word-level tokenizer extended with the data set's words.
    """
    from model import VidLLMConfig
    from model.adapter import AdapterConfig
    from model.config import GroundingConfig, LLMConfig, VLBranchConfig, _llama_arch
    from model.encoder import EncoderConfig
    from model.metric_depth import MetricDepthConfig
    from model.reconstruction import ReconstructionConfig
    from model.tokenizer import SPACE, word_vocab_size, word_vocabulary
    from pipelines.ingest.synthetic.language import vocabulary

    cfg = VidLLMConfig.tiny()
    known = set(word_vocabulary())
    extra = tuple(w for w in vocabulary() if SPACE + w not in known)
    if encoder_path:
        dim = 384
        encoder = EncoderConfig.small()
        cfg = dataclasses.replace(
            cfg,
            encoder=dataclasses.replace(encoder, pretrained_path=encoder_path),
            adapter=AdapterConfig(dim=dim, num_bridge_tokens=4, num_heads=6, mlp_ratio=2),
            reconstruction=ReconstructionConfig(
                dim=dim, num_layers=2, num_heads=6, num_register_tokens=2, camera_num_layers=1, camera_num_heads=6,
                num_camera_iterations=2, dpt_features=32, dpt_out_channels=(24, 48, 96, 96),
                dpt_layer_indices=(0, 0, 1, 1), frames_chunk_size=0),
            metric_depth=MetricDepthConfig(dim=dim, num_bins=16, features=32, out_channels=(24, 48, 96, 96),
                                           bin_hidden=16, down_ratio=2),
            llm=LLMConfig.word_level(**_llama_arch(128, 3, 4, 2, 256, max_position_embeddings=512)),
            vl=VLBranchConfig(voxel_size_m=0.2, max_tokens=256, pos_hidden=64),
            grounding=GroundingConfig(dim=64, num_queries=4, num_heads=4, num_layers=1),
        )
    else:
        cfg.vl = dataclasses.replace(cfg.vl, max_tokens=256)  # the tiny preset's 64 drops half a clip's voxels
    cfg.llm = dataclasses.replace(cfg.llm, extra_words=extra,
                                  arch={**cfg.llm.arch, "vocab_size": word_vocab_size(extra)})
    if variant == "blind":
        cfg.vl = dataclasses.replace(cfg.vl, blind=True)
    elif variant == "no_bridge":
        cfg.adapter = dataclasses.replace(cfg.adapter, writeback="none")
    elif variant == "no_metric_depth":
        cfg.scale = dataclasses.replace(cfg.scale, fixed_scale=1.0)
    return cfg.to_dict()


def train_config(out: str, size: Size, args, run: str, variant: str, stage: int, shards: str, init_from: str = ""):
    from pipelines import manifest as mf
    from pipelines.train.config import tiny

    base = tiny(stage)
    steps = size.stage1_steps if stage == 1 else size.stage2_steps
    task_mix = {"qa": 1.0, "grounding": 1.0} if size.grounding else {"qa": 1.0}
    loss = dataclasses.replace(base.loss, metric_depth=0.0) if variant == "no_metric_depth" else base.loss
    freeze = base.freeze
    if stage == 1 and args.encoder:
        # The teachers are random stand-ins: distilling them into the real encoder would only erase it.
        freeze = dataclasses.replace(freeze, trainable=("adapter.*", "distill.*"))
    elif stage == 2 and not args.encoder:
        # Stage 2 freezes the encoder because it is pretrained; the tiny ViT is random, and frozen its patch tokens
        # are nearly identical (held-out colour EM stayed at chance with it frozen, see bench/README.md).
        freeze = dataclasses.replace(freeze, frozen=tuple(f for f in freeze.frozen if f != "encoder.*"))
    return dataclasses.replace(
        base,
        model=model_config(variant, args.encoder) if stage == 1 else {},
        init_from=init_from,
        data=dataclasses.replace(base.data, manifest_uri=mf.manifest_uri(shards), micro_batch_size=size.micro_batch,
                                 task_mix=task_mix, max_text_tokens=96),
        optim=dataclasses.replace(base.optim, lr=size.lr, warmup_steps=max(1, steps // 20)),
        # Intermediate checkpoints on long runs: on a shared machine a worker may be killed (memory), and Ray Train
        # resumes from the last one; the quick run keeps only the final one (each save costs seconds).
        schedule=dataclasses.replace(base.schedule, max_steps=steps,
                                     checkpoint_every=steps if args.quick else max(1, steps // 4),
                                     log_every=max(1, steps // 20)),
        loss=loss,
        freeze=freeze,
        tracking=dataclasses.replace(base.tracking, tracking_uri=tracking_uri(out), experiment=EXPERIMENT,
                                     registered_model=f"bench-{run}-stage{stage}"),
        run=dataclasses.replace(base.run, name=f"bench-{run}-stage{stage}", storage_path=os.path.join(out, "ray"),
                                output_dir=os.path.join(out, "runs", run, f"stage{stage}"),
                                num_workers=args.num_workers, use_gpu=args.gpu, cpus_per_worker=1.0),
    )


def tracking_uri(out: str) -> str:
    return f"sqlite:///{os.path.join(out, 'mlflow.db')}"


def ensure_experiments(out: str) -> None:
    """The bench's MLflow experiments, with their artifacts under ``<out>/mlartifacts``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(out))
    for name in (EXPERIMENT, EVAL_EXPERIMENT):
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=os.path.join(out, "mlartifacts", name))


def train_and_evaluate(out: str, size: Size, args, run: str, variant: str, data: dict, progress: Progress) -> dict:
    """Stage 1, Stage 2 and the held-out evaluation of one run (finished parts are reused)."""
    from pipelines.eval.config import EvalJobConfig
    from pipelines.eval.harness import EvalConfig
    from pipelines.eval.run import run_evaluation
    from pipelines.train.export import model_uri
    from pipelines.train.launch import run_training

    exported = ""
    seconds = {}
    for stage in (1, 2):
        cfg = train_config(out, size, args, run, variant, stage, data["train_shards"], exported)
        exported = model_uri(cfg.run.output_dir)
        with progress.step(f"{run}-stage{stage}", f"{run}: Stage {stage} ({cfg.schedule.max_steps} steps)") as step:
            if not storage.exists(storage.join(exported, "model.safetensors")):
                result = run_training(cfg)
                step.note(f"loss {(result.metrics or {}).get('loss', float('nan')):.4f}; MLflow run {result.run_id}")
        seconds[f"stage{stage}"] = step.seconds
    eval_out = os.path.join(out, "runs", run, "eval")
    tasks = ("scanqa", "scanrefer", "multi3drefer", "reconstruction") if size.grounding else ("scanqa", "reconstruction")
    with progress.step(f"{run}-eval", f"{run}: evaluation on the held-out scenes") as step:
        if not os.path.isfile(os.path.join(eval_out, "results.json")):
            config = EvalJobConfig(tasks=tasks, max_new_tokens_answer=4, prompt_batch_size=32, plots=False,
                                   num_examples=0, num_gpus=1.0 if args.gpu else 0.0,
                                   cache_dir=os.path.join(out, "cache", "eval"), experiment=EVAL_EXPERIMENT,
                                   protocol=EvalConfig(meteor=False, caption_tokenizer="whitespace"))
            run_evaluation(exported, data["heldout_clips"], eval_out, config, tracking_uri=tracking_uri(out),
                           progress=print)
    seconds["eval"] = step.seconds
    return {"run": run, "variant": variant, "model_uri": exported, "eval_out": eval_out, "seconds": seconds}


# -------------------------------------------------------------------------------------------------- analysis
def scanqa_records(scenes_root: str) -> list[dict]:
    """Every ScanQA record (both splits) of a generated scene set, with its ``question_type``."""
    records = []
    for split in ("train", "val"):
        path = os.path.join(scenes_root, "annotations", f"ScanQA_v1.0_{split}.json")
        if os.path.isfile(path):
            with open(path) as f:
                records += json.load(f)
    return records


def run_metrics(run: dict) -> dict:
    """The held-out figures of one run, from the evaluation's ``results.json`` (ScanQA EM per question family: the
    eval's ``by_family``, which reads the records' ``question_type``; grounding under the ``free_form`` protocol)."""
    with open(os.path.join(run["eval_out"], "results.json")) as f:
        results = json.load(f)
    qa = results["scanqa"]
    metrics: dict[str, Any] = {"qa": {family: {"em": v["em"], "count": v["count"]}
                                      for family, v in qa["by_family"].items()}}
    metrics["qa"]["all"] = {"em": qa["em"], "count": qa["count"]}
    if "scanrefer" in results:
        ref = results["scanrefer"]["free_form"]
        metrics["grounding"] = {"unique": ref["unique"]["acc@0.25"], "multiple": ref["multiple"]["acc@0.25"],
                                "overall": ref["overall"]["acc@0.25"], "count": ref["overall"]["count"],
                                "mean_iou": ref["mean_iou"],
                                "multi3drefer_f1": results["multi3drefer"]["free_form"]["overall"]["f1@0.25"]}
    rec = results["reconstruction"]
    metrics["reconstruction"] = {"abs_rel": rec["depth"]["abs_rel"], "delta1": rec["depth"]["delta1"],
                                 "rra30": rec["pose"]["rra@30"], "rta30": rec["pose"]["rta@30"]}
    return metrics


def heldout_clips(clips_uri: str) -> list:
    """The held-out clips the evaluation scores (one per scene), decoded."""
    from pipelines.eval.job import plan_clips
    from pipelines.manifest import webdataset_pipeline
    from pipelines.schema import decode_clip_sample

    out = []
    for item in plan_clips(clips_uri):
        keys = set(item["keys"])
        out += [decode_clip_sample(s) for s in webdataset_pipeline([item["shard"]]) if s["__key__"] in keys]
    return out


def constant_depth_baseline(train_clips: str, clips: list) -> dict:
    """AbsRel / delta1 of predicting one depth everywhere: the median valid depth of the training clips."""
    from pipelines.eval.metrics.reconstruction import depth_metrics
    from pipelines.manifest import iter_manifest_samples
    from pipelines.schema import decode_clip_sample

    depths = [decode_clip_sample(s).depth_m for s in iter_manifest_samples(train_clips)]
    valid = np.concatenate([d[d > 0] for d in depths])
    constant = float(np.median(valid))
    rows = [depth_metrics(np.full_like(c.depth_m, constant), c.depth_m) for c in clips]
    return {"depth_m": constant, "abs_rel": float(np.mean([r["abs_rel"] for r in rows])),
            "delta1": float(np.mean([r["delta1"] for r in rows]))}


def grounding_ceiling(clips: list) -> dict:
    """Acc@0.25 that EXACT first-camera boxes reach after the evaluation maps them to the benchmark frame.

    Boxes are axis-aligned in the first camera's frame; mapping them (8 corners, AABB) to the room's axis-aligned
    frame inflates them by the camera's yaw and pitch, so even a perfect model has a ceiling below 100 %.
    """
    from pipelines.eval.alignment import first_camera_to_aligned, transform_boxes
    from pipelines.eval.metrics.boxes import box_iou_matrix

    ious = []
    for clip in clips:
        transform = first_camera_to_aligned(np.asarray(clip.boxes["axis_alignment"]), clip.cam_to_world[0])
        refs = {int(e["object_id"]) for e in clip.annotations.get("scanrefer", [])}
        for o in clip.boxes["objects"]:
            if int(o["object_id"]) in refs:
                mapped = transform_boxes(np.array([o["center_first_cam"] + o["size_first_cam"]]), transform)
                ious.append(float(box_iou_matrix(mapped, np.array([o["center"] + o["size"]]))[0, 0]))
    return {"acc25": 100.0 * float(np.mean(np.array(ious) >= 0.25)) if ious else 0.0, "objects": len(ious)}


def spread(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def summarise(runs: list[dict], chance: dict, baseline: dict, ceiling: dict, size: Size) -> dict:
    """Per variant (seed 0) and across seeds: the figures of the table and the targets."""
    by_variant = {r["variant"]: r["metrics"] for r in runs if r["seed_index"] == 0}
    families = [f for f in SCENE_FAMILIES if f in size.families]
    full, blind = by_variant["full"], by_variant["blind"]

    def mean_em(m: dict) -> float:
        return float(np.mean([m["qa"][f]["em"] for f in families]))

    noise_runs = {v: [r["metrics"] for r in runs if r["variant"] == v] for v in ("full", "blind")}
    margins = [mean_em(f) - mean_em(b) for f, b in zip(noise_runs["full"], noise_runs["blind"], strict=True)]
    summary = {
        "families": families,
        "chance": chance,
        "qa_mean_em": {v: mean_em(m) for v, m in by_variant.items()},
        "qa_margin_over_blind": mean_em(full) - mean_em(blind),
        "qa_margin_over_blind_by_seed": margins,
        "qa_margin_seed_std": spread(margins),
        "full_qa_mean_em_seed_std": spread([mean_em(m) for m in noise_runs["full"]]),
        "constant_depth": baseline,
        "grounding_ceiling": ceiling,
    }
    if "grounding" in full:
        floor = 100.0 / max(1, blind["grounding"]["count"])  # one query's worth: the ratio of a zero blind score
        summary["grounding_ratio"] = full["grounding"]["overall"] / max(blind["grounding"]["overall"], floor)
    return summary


def format_table(runs: list[dict], summary: dict) -> list[str]:
    variants = [r for r in runs if r["seed_index"] == 0]
    families = summary["families"]
    head = f"{'held-out metric':<34}" + "".join(f"{r['variant']:>16}" for r in variants) + f"{'chance':>10}"
    lines = [head, "-" * len(head)]
    for family in [*families, "all"]:
        cells = "".join(f"{r['metrics']['qa'][family]['em']:>16.1f}" for r in variants)
        chance = summary["chance"].get(family, {}).get("chance_em")
        count = variants[0]["metrics"]["qa"][family]["count"]
        lines.append(f"{'QA EM ' + family + f' (n={count})':<34}{cells}"
                     + (f"{chance:>10.1f}" if chance is not None else ""))
    if "grounding" in variants[0]["metrics"]:
        for key, label in (("unique", "ScanRefer Acc@0.25 unique"), ("multiple", "ScanRefer Acc@0.25 multiple"),
                           ("overall", "ScanRefer Acc@0.25 overall"), ("mean_iou", "ScanRefer mean IoU"),
                           ("multi3drefer_f1", "Multi3DRefer F1@0.25")):
            lines.append(f"{label:<34}" + "".join(f"{r['metrics']['grounding'][key]:>16.2f}" for r in variants))
        lines.append(f"{'  ceiling of exact first-cam boxes':<34}{summary['grounding_ceiling']['acc25']:>16.1f}")
    for key, label in (("abs_rel", "depth AbsRel (metric)"), ("delta1", "depth delta<1.25 %"),
                       ("rra30", "pose RRA@30 %"), ("rta30", "pose RTA@30 %")):
        lines.append(f"{label:<34}" + "".join(f"{r['metrics']['reconstruction'][key]:>16.3f}" for r in variants))
    const = summary["constant_depth"]
    lines.append(f"{'  constant depth ' + format(const['depth_m'], '.2f') + ' m':<34}"
                 f"{const['abs_rel']:>16.3f} AbsRel {const['delta1']:>8.1f} % delta<1.25")
    if len(summary["qa_margin_over_blind_by_seed"]) > 1:
        lines.append("QA margin full - blind by seed pair: "
                     + ", ".join(f"{m:.1f}" for m in summary["qa_margin_over_blind_by_seed"])
                     + f" (std {summary['qa_margin_seed_std']:.1f}; full-model mean EM std "
                     f"{summary['full_qa_mean_em_seed_std']:.1f})")
    return lines


def result_lines(summary: dict, runs: list[dict]) -> list[str]:
    full = next(r["metrics"] for r in runs if r["variant"] == "full" and r["seed_index"] == 0)
    lines = [f"RESULT qa_em_margin_over_blind {summary['qa_margin_over_blind']:.1f} points target >= 15"]
    if "grounding_ratio" in summary:
        lines.append(f"RESULT grounding_acc25_vs_blind {summary['grounding_ratio']:.2f} x target >= 2")
    lines.append(f"RESULT heldout_depth_abs_rel {full['reconstruction']['abs_rel']:.3f} ratio target <= 0.25")
    for variant, em in summary["qa_mean_em"].items():
        if variant != "full":
            lines.append(f"RESULT qa_em_full_minus_{variant} {summary['qa_mean_em']['full'] - em:.1f} points "
                         "target >= 0")
    if not np.isnan(summary["qa_margin_seed_std"]):
        lines.append(f"RESULT qa_margin_seed_std {summary['qa_margin_seed_std']:.1f} points target >= 0")
    return lines


# ------------------------------------------------------------------------------------------------------- main
def fingerprint(args: argparse.Namespace, size: Size) -> str:
    """What the finished steps in an output folder depend on. Not the variants or the number of noise seeds: each
    run's steps are keyed by variant and seed index, so a rerun with more of them reuses the finished ones."""
    trained = {k: v for k, v in dataclasses.asdict(size).items() if k not in ("variants", "noise_seeds")}
    keyed = {"size": trained, "train_seed": args.train_seed, "heldout_seed": args.heldout_seed,
             "num_workers": args.num_workers, "gpu": args.gpu, "encoder": args.encoder}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=list).encode()).hexdigest()[:16]


def prepare_out(out: str, fresh: bool, key: str) -> None:
    state = os.path.join(out, "bench_state.json")
    if fresh and os.path.isdir(out):
        if os.listdir(out) and not os.path.isfile(state):
            raise ValueError(f"refusing to delete {out}: it holds no {os.path.basename(state)}")
        shutil.rmtree(out)
    if os.path.isfile(state):
        with open(state) as f:
            have = json.load(f).get("fingerprint")
        if have != key:
            raise ValueError(f"{out} holds a run with other settings; use --fresh or another --out")
    os.makedirs(out, exist_ok=True)
    with open(state, "w") as f:
        json.dump({"fingerprint": key}, f)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        size = resolve_size(args)
        out = os.path.abspath(args.out or ("bench_learning_out_quick" if args.quick else "bench_learning_out"))
        if args.encoder and not os.path.isfile(os.path.join(args.encoder, "config.json")):
            raise ValueError(f"--encoder {args.encoder}: no config.json (install the weights with "
                             "`vidllm weights install --dir DIR`, or pass --encoder '' for the tiny random ViT)")
        prepare_out(out, args.fresh, fingerprint(args, size))
    except ValueError as err:
        parser.error(str(err))
    for key, value in DEMO_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(out)

    import ray

    num_runs = len(size.variants) + 2 * size.noise_seeds
    progress = Progress(os.path.join(out, "logs"), total=3 * (size.noise_seeds + 1) + 3 * num_runs + 1)
    started, load_before = time.perf_counter(), os.getloadavg()
    progress.say(f"bench_learning: {'quick' if args.quick else 'default'} size {dataclasses.asdict(size)}; out {out}")
    env = {k: os.environ[k] for k in (*DEMO_ENV_DEFAULTS, "MLFLOW_TRACKING_URI")}
    ray.init(address="local", num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False,
             runtime_env={"env_vars": env}, object_store_memory=512 * 1024**2)
    try:
        ensure_experiments(out)
        runs: list[dict] = []
        data0 = None
        for k in range(size.noise_seeds + 1):
            seeds = (args.train_seed + k, args.heldout_seed + k)
            data = make_data(out, size, *seeds, progress, tag=f"s{k}")
            data0 = data0 or data
            for variant in size.variants if k == 0 else ("full", "blind"):
                run = train_and_evaluate(out, size, args, f"{variant}-s{k}", variant, data, progress)
                run.update(seed_index=k, seeds=seeds, metrics=run_metrics(run))
                runs.append(run)
        with progress.step("analysis", "chance levels, constant-depth baseline, grounding ceiling"):
            chance = chance_levels(scanqa_records(data0["train_scenes"]), scanqa_records(data0["heldout_scenes"]))
            clips = heldout_clips(data0["heldout_clips"])
            baseline = constant_depth_baseline(data0["train_clips"], clips)
            ceiling = grounding_ceiling(clips)
        summary = summarise(runs, chance, baseline, ceiling, size)
        total = time.perf_counter() - started
        report = {"size": dataclasses.asdict(size), "args": vars(args), "out": out, "runs": runs, "summary": summary,
                  "seconds": total, "load_before": load_before, "load_after": os.getloadavg(),
                  "cpus": os.cpu_count()}
        with open(os.path.join(out, "bench_learning.json"), "w") as f:
            json.dump(report, f, indent=1, default=list)
        progress.say("")
        for line in format_table(runs, summary):
            progress.say(line)
        progress.say("")
        for line in progress.summary(total, load_before, os.getloadavg()):
            progress.say(line)
        for line in result_lines(summary, runs):
            progress.say(line)
    finally:
        ray.shutdown()
        progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
