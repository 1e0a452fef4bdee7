"""Benchmark: the memory model of ``--dry-run`` (:mod:`pipelines.train.memory`) against measured peak memory of real
training steps on the CPU.

Each case trains a few optimizer steps with the real :class:`~pipelines.train.trainer.Trainer` (DeepSpeed engine,
gloo) on synthetic shards of its clip shape, one child process per rank. A child records its resident set size
after imports, the process group and a throwaway DeepSpeed engine (before the run's model exists: DeepSpeed's
one-time start-up costs ~45 MiB of host memory on the CPU, which no GPU holds) and its peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``) after the steps; the difference is the measured peak of the training run on
that rank (model, optimizer, DeepSpeed buffers, the batch and the step's activations). glibc's mmap threshold is
pinned to 64 KiB in the children (``MALLOC_MMAP_THRESHOLD_``) so that freed tensor buffers leave the resident set
and the peak follows live tensors. The estimate is computed for the same config, clip shape and world size, from
the model on the meta device, as ``--dry-run`` does. Loading runs in the training process (``data.num_workers=0``)
so the measured process holds everything the estimate counts.

The cases cover activation-dominated steps (Stage 2 at 112-168 px with activation checkpointing off and on) and
Stage 1, ZeRO-2 and ZeRO-3 on one and two ranks. ZeRO-2/3 reduce buckets are set to 4 M elements (a tiny model's
buckets would otherwise dwarf it; the estimate counts them either way).

The two Stage-2 cases at 112 px differ only in ``activation_checkpointing.*`` (set in the training config, applied
by the trainer): their measured peaks give the reduction checkpointing brings to a training run whose memory is
dominated by activations (the losses of both are identical: ``tests/train/test_trainer.py``).

Run: ``python bench/bench_memory_model.py [--steps 3 --workdir /tmp/vidllm-bench-memory]``. Ends with
``RESULT <name> <value> <unit> target <op> <value>`` lines; the target is |estimate / measured - 1| <= 25 % in
every case, and a >= 30 % cut of the measured peak by activation checkpointing. Figures are taken on a shared machine; peak RSS varies by a few MiB between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    name: str
    stage: int
    zero: int
    world: int
    frames: int
    size: int
    micro_batch: int
    checkpointing: bool = False


CASES = (
    Case("stage2-z2-112px", 2, 2, 1, 8, 112, 1),
    Case("stage2-z2-112px-ckpt", 2, 2, 1, 8, 112, 1, checkpointing=True),
    Case("stage2-z2-168px-mb2", 2, 2, 1, 4, 168, 2),
    Case("stage2-z3-112px-2ranks", 2, 3, 2, 8, 112, 1),
    Case("stage1-z2-224px-2ranks", 1, 2, 2, 8, 224, 2),
)


def overrides(case: Case, manifest: str, init: str, out: str) -> list[str]:
    """The training-config overrides of ``case`` (the tiny preset otherwise)."""
    sets = [f"data.manifest_uri={manifest}", f"run.output_dir={out}", f"run.storage_path={out}/ray",
            f"data.micro_batch_size={case.micro_batch}", "data.num_workers=0", f"deepspeed.zero_stage={case.zero}",
            "deepspeed.reduce_bucket_size=4000000", "deepspeed.prefetch_bucket_size=4000000",
            "deepspeed.precision=fp32", "optim.warmup_steps=1"]
    if case.stage == 2:
        sets.append(f"init_from={init}")
    if case.checkpointing:
        sets += [f"activation_checkpointing.{p}=true" for p in ("encoder", "reconstruction", "heads", "llm")]
    return sets


def model_config(case: Case):
    """The tiny model with DPT heads and metric depth decoding two frames at a time (as presets chunk 32 by 8)."""
    import dataclasses

    from model import VidLLMConfig

    tiny = VidLLMConfig.tiny()
    return dataclasses.replace(
        tiny, reconstruction=dataclasses.replace(tiny.reconstruction, frames_chunk_size=2),
        metric_depth=dataclasses.replace(tiny.metric_depth, frames_chunk_size=2))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    """One rank: process group, baseline RSS, Trainer.build, ``--steps`` optimizer steps, peak RSS."""
    import torch
    import torch.distributed as dist

    from pipelines.train.checkpointing import TrainState
    from pipelines.train.config import TrainConfig
    from pipelines.train.trainer import TrackingContext, Trainer, WorkerContext

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    # The baseline is what the process holds before the run's model exists: libraries, the process group and
    # DeepSpeed's one-time start-up (lazily imported runtime, ~45 MiB on the CPU, measured by a second engine costing
    # only its tensors), none of which a GPU's memory holds. A throwaway engine over a tiny model pays it.
    import deepspeed

    from model import VidLLM, VidLLMConfig
    from pipelines.train.deepspeed_config import build_deepspeed_config
    from pipelines.train.trainer import skip_shm_comm_build

    skip_shm_comm_build()
    warm = VidLLM(VidLLMConfig.tiny())
    deepspeed.initialize(model=warm, optimizer=torch.optim.AdamW(warm.parameters()),
                         config=build_deepspeed_config(cfg, world, False), dist_init_required=False)
    del warm
    dist.barrier()
    before = rss_bytes()
    trainer = Trainer(cfg, WorkerContext(rank, world, torch.device("cpu")), TrackingContext("")).build()
    built = rss_bytes()
    batches = trainer.micro_batches(TrainState(-1, 0, 0))
    for _ in range(args.steps):
        trainer.train_step(batches)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dist.barrier()
    Path(args.out).write_text(json.dumps({"before": before, "built": built, "peak": peak}))
    dist.destroy_process_group()


def estimate(case: Case, cfg):
    """``--dry-run``'s estimate for ``case`` (meta model, freezing, the case's clip shape and world size)."""
    import torch

    from model import VidLLM, VidLLMConfig
    from model.freezing import apply_freezing
    from pipelines.train.memory import StepShape, estimate_memory
    from pipelines.train.plan import model_tree

    with torch.device("meta"):
        model = VidLLM(VidLLMConfig.from_dict(model_tree(cfg, None)))
    apply_freezing(model, cfg.freeze.trainable, cfg.freeze.frozen)
    text = 48  # the synthetic grounding/QA/caption examples: at most ~45 tokens with the tiny tokenizer
    shape = StepShape(case.micro_batch, case.frames, case.size, case.size, text)
    return estimate_memory(model, cfg, shape, case.world, bf16=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/vidllm-bench-memory")
    parser.add_argument("--cases", nargs="*", default=[c.name for c in CASES], help="case names to run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    for key, value in {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                       "OMP_NUM_THREADS": "1"}.items():
        os.environ.setdefault(key, value)
    import torch

    from model import VidLLM, build_tokenizer
    from pipelines.train.config import resolve_config
    from pipelines.train.synthetic_shards import write_synthetic_shards

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    worst = 0.0
    rows = []
    for case in [c for c in CASES if c.name in args.cases]:
        root = work / case.name
        vcfg = model_config(case)
        manifest = write_synthetic_shards(str(root / "shards"), num_clips=8 * case.world * case.micro_batch,
                                          num_shards=2 * case.world, frames=case.frames, size=case.size,
                                          geo_dim=vcfg.distill.teacher_geo_dim, sem_dim=vcfg.distill.teacher_sem_dim)
        torch.manual_seed(0)
        export = root / "stage1"
        model = VidLLM(vcfg)
        model.save_pretrained(export)
        build_tokenizer(model.vidllm_config).save_pretrained(str(export))
        sets = [*overrides(case, manifest, str(export), str(root / "out")), f"model={json.dumps(vcfg.to_dict())}"]
        cfg = resolve_config("tiny", sets if case.stage == 1 else sets[:-1], stage=case.stage)
        (root / "config.json").write_text(json.dumps(cfg.to_dict()))
        port = free_port()
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "WORLD_SIZE": str(case.world)}
        procs = [subprocess.Popen([sys.executable, __file__, "--child", "--config", str(root / "config.json"),
                                   "--out", str(root / f"rank{r}.json"), "--steps", str(args.steps)],
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for r in range(case.world)]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"{case.name}: a rank failed:\n{err[-3000:]}")
        ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in range(case.world)]
        measured = max(r["peak"] - r["before"] for r in ranks)
        print(f"{case.name}: rank 0 RSS after build +{(ranks[0]['built'] - ranks[0]['before']) / MIB:.1f} MiB, "
              f"peak +{(ranks[0]['peak'] - ranks[0]['before']) / MIB:.1f} MiB", flush=True)
        est = estimate(case, cfg)
        error = est.total / measured - 1
        worst = max(worst, abs(error))
        rows.append((case, measured, est, error))
        print(f"{case.name:26s} measured {measured / MIB:8.1f} MiB  estimate {est.total / MIB:8.1f} MiB "
              f"({error * 100:+.1f} %)  [model state {est.model_state / MIB:.1f}, buffers {est.buffers / MIB:.1f}, "
              f"activations {est.activations / MIB:.1f}]", flush=True)
    for case, _, _, error in rows:
        print(f"RESULT memory_model_error_{case.name} {error * 100:.1f} % target abs <= 25")
    measured = {case.name: m for case, m, _, _ in rows}
    if {"stage2-z2-112px", "stage2-z2-112px-ckpt"} <= set(measured):
        cut = 1 - measured["stage2-z2-112px-ckpt"] / measured["stage2-z2-112px"]
        print(f"RESULT activation_checkpointing_training_peak_reduction {cut * 100:.1f} % target >= 30")
    print(f"RESULT memory_model_max_abs_error {worst * 100:.1f} % target <= 25")
    return 0


if __name__ == "__main__":
    sys.exit(main())
