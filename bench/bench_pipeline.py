"""Benchmark: the Ray Data ingest + teachers jobs vs a single-process loop over the same functions.

Both paths run the same code per scene and per clip (``stage_scene``, the two teachers, ``stage_training_clip``,
the deterministic packer); only the orchestration differs. The single-process loop runs one thing at a time with
one intra-op thread (``--baseline-threads 1``, default), so the speed-up is what Ray's task parallelism and the
overlap of the teacher pools add on the same 2 cores; ``--baseline-threads 0`` keeps torch's default threading
instead (the loop then uses both cores inside the teachers' matmuls, and the comparison measures Ray against
torch's intra-op parallelism). The clip shards of both paths must be byte-identical (checked), so the comparison
is of equal work.

The Ray side uses the pools a 2-core node would be given: ``--geo-actors`` geometry actors and ``--sem-actors``
semantic actors with the given CPU shares (the geometry teacher is the slower one here), one intra-op thread each,
and ``--io-cpus`` for the shard-reading and clip-writing actors. A job is long on a real cluster; ``--scenes``
sets how much work amortises the fixed start-up (Ray Data jobs, actor start and teacher loading).

Run: ``python bench/bench_pipeline.py [--scenes 192 --frames 48 --workdir /tmp/vidllm-bench192]`` (about 10 min).
Ends with ``RESULT <name> <value> <unit> target <op> <value>`` lines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import manifest as mf  # noqa: E402
from pipelines.ingest.config import IngestConfig  # noqa: E402
from pipelines.ingest.job import scene_inputs, stage_scene  # noqa: E402
from pipelines.schema import (  # noqa: E402
    CLIP_SHARD_PREFIX,
    TRAIN_SHARD_PREFIX,
    decode_frames,
    encode_teacher_geo,
    json_bytes,
    sample_members,
    split_key,
    write_tar,
)
from pipelines.teachers.config import TeacherPoolConfig, TeachersConfig  # noqa: E402
from pipelines.teachers.geometry import GeometryTeacher  # noqa: E402
from pipelines.teachers.job import stage_training_clip  # noqa: E402
from pipelines.teachers.semantic import SemanticTeacher  # noqa: E402


def make_teachers(base: Path) -> tuple[str, str]:
    """ViT-S-sized random teachers (hidden 384, 12 layers): real per-frame compute at bench resolution."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(0)
    geo, sem = base / "geo", base / "sem"
    if not geo.exists():
        Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
            hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=112,
            patch_size=14, num_register_tokens=4)).save_pretrained(geo)
    if not sem.exists():
        CLIPVisionModel(CLIPVisionConfig(
            hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=112,
            patch_size=14)).save_pretrained(sem)
    return str(geo), str(sem)


def single_process(scenes: str, out: Path, icfg: IngestConfig, tcfg: TeachersConfig) -> tuple[float, int]:
    """The same stage functions in a plain loop, one scene / one clip at a time, in this process."""
    started = time.perf_counter()
    clips_out, train_out = str(out / "clips"), str(out / "train")
    ihash = icfg.hash()
    rows = [stage_scene(s, clips_out, icfg, ihash) for s in scene_inputs(scenes, icfg.layout)]
    staged, _ = mf.list_staged(clips_out)
    units = [mf.staged_unit_from_uri(sid, uri) for sid, uri in sorted(staged.items())]
    mf.finalize(clips_out, "clips", CLIP_SHARD_PREFIX, icfg.to_dict(), ihash, units, [],
                icfg.target_shard_bytes, summary={})
    geo = GeometryTeacher(tcfg.geometry_teacher, tcfg.cache_dir)
    sem = SemanticTeacher(tcfg.semantic_teacher, tcfg.cache_dir)
    info = {"geometry_teacher": tcfg.geometry_teacher, "semantic_teacher": tcfg.semantic_teacher,
            "clips_config_hash": ihash}
    frames_total = 0
    for sample in mf.iter_manifest_samples(clips_out):
        sample = {k: v for k, v in sample.items() if k != "__url__"}
        frames = decode_frames(sample, sample["__key__"])
        tokens = geo(frames)
        h, w = frames.shape[1:3]
        ginfo = {"patch_grid": list(geo.patch_grid(h, w)), "geo_dim": geo.hidden_size, "patch_size": geo.patch_size}
        geo_tar = write_tar(sorted(encode_teacher_geo(tokens, tcfg.token_codec).items())
                            + [("geo_info.json", json_bytes(ginfo))])
        stage_training_clip(sample["__key__"], write_tar(sample_members(sample)), geo_tar, sem(frames), "",
                            train_out, info, tcfg.token_codec)
        frames_total += len(frames)
    staged, _ = mf.list_staged(train_out)
    units = [mf.staged_unit_from_uri(split_key(k)[0], uri) for k, uri in sorted(staged.items())]
    mf.finalize(train_out, "train", TRAIN_SHARD_PREFIX, {}, "bench", units, [], tcfg.target_shard_bytes, summary={})
    assert sum(r["frames"] for r in rows) == frames_total
    return time.perf_counter() - started, frames_total


def with_ray(scenes: str, out: Path, icfg: IngestConfig, tcfg: TeachersConfig) -> tuple[float, int]:
    import ray

    from pipelines.ingest.job import run_ingest
    from pipelines.teachers.job import run_teachers

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=512 * 1024**2)
    try:
        started = time.perf_counter()
        run_ingest(scenes, str(out / "clips"), icfg, progress=False)
        manifest = run_teachers(str(out / "clips"), str(out / "train"), tcfg, progress=False)
        return time.perf_counter() - started, int(manifest.summary["frames_this_run"])
    finally:
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=192)
    p.add_argument("--frames", type=int, default=48, help="frames per synthetic scene")
    p.add_argument("--frames-per-clip", type=int, default=16)
    p.add_argument("--workdir", default="/tmp/vidllm-bench192")
    p.add_argument("--baseline-threads", type=int, default=1,
                   help="torch intra-op threads of the single-process loop (0 = torch's default, all cores)")
    p.add_argument("--geo-actors", type=int, default=1, help="geometry-teacher actors")
    p.add_argument("--geo-cpus", type=float, default=1.0, help="CPUs per geometry-teacher actor")
    p.add_argument("--sem-actors", type=int, default=1, help="semantic-teacher actors")
    p.add_argument("--sem-cpus", type=float, default=0.5, help="CPUs per semantic-teacher actor")
    p.add_argument("--io-cpus", type=float, default=0.25, help="CPUs per shard-reading and clip-writing actor")
    args = p.parse_args()
    if args.baseline_threads:
        import torch

        torch.set_num_threads(args.baseline_threads)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(args.workdir)
    data = work / "scenes"
    if not (data / "annotations").exists():
        from pipelines.ingest.synthetic import SyntheticConfig, generate

        generate(SyntheticConfig(out=str(data), num_scenes=args.scenes, seed=11, size="small",
                                 num_frames=args.frames, layouts=("sens", "video")), log=lambda _m: None)
    geo, sem = make_teachers(work)
    icfg = IngestConfig(frames_per_clip=args.frames_per_clip, min_valid_frames=args.frames_per_clip,
                        resize_to=112, layout="video", target_shard_bytes=4 * 1024**2, num_cpus_per_task=1.0)
    tcfg = TeachersConfig(
        geo, sem, geometry=TeacherPoolConfig(batch_size=1, concurrency=args.geo_actors, num_cpus=args.geo_cpus),
        semantic=TeacherPoolConfig(batch_size=1, concurrency=args.sem_actors, num_cpus=args.sem_cpus),
        io_num_cpus=args.io_cpus, target_shard_bytes=16 * 1024**2, cache_dir=str(work / "cache"))
    results = {}
    for name, fn in (("single", single_process), ("ray", with_ray)):
        out = work / f"out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        seconds, frames = fn(str(data), out, icfg, tcfg)
        results[name] = (seconds, frames)
        print(f"{name}: {frames} frames in {seconds:.1f} s = {frames / seconds:.1f} frames/s", flush=True)
    same = all(
        (work / "out-single" / kind / r.name).read_bytes() == (work / "out-ray" / kind / r.name).read_bytes()
        for kind in ("clips",) for r in mf.read_manifest(str(work / "out-ray" / kind)).shards
    )
    print(f"clip shards byte-identical between the two paths: {same}")
    (ts, fs_), (tr, fr) = results["single"], results["ray"]
    assert fs_ == fr, "both paths must process the same frames"
    print(f"RESULT single_process_throughput {fs_ / ts:.2f} frames/s target >= 0")
    print(f"RESULT ray_pipeline_throughput {fr / tr:.2f} frames/s target >= 0")
    suffix = f"_threads{args.baseline_threads}" if args.baseline_threads != 1 else ""
    print(f"RESULT ray_speedup{suffix} {ts / tr:.2f} x target >= 1.6")


if __name__ == "__main__":
    main()
