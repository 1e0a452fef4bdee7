"""Benchmark: Ray Train + DeepSpeed step time vs a plain PyTorch loop, 2 workers vs 1, and the time a step waits for
its data with the shards on object storage.

The shards (JPEG frames and fp32 teacher targets, as the teachers stage writes them) are on the local S3 server
(moto on 127.0.0.1, started and stopped here; ``--storage local`` puts them on disk). All three runs train the
same model on them with the same micro-batch, reading, decoding and collating batches through the same code and
the same background loader (:func:`pipelines.train.data.micro_batch_loader`, ``--loader-workers`` processes), so a
step is equal work:

* ``plain``: one process with the worker's thread count (1), ``torch.optim.AdamW`` on the trainable parameters,
  gradient clipping 1.0, no DeepSpeed, no Ray. Step time = waiting for data + forward + backward + clip + optimizer
  step.
* ``ray1``: ``run_training`` with 1 Ray Train worker and a DeepSpeed ZeRO-2 engine; step times and data waits come
  from the worker's step log (the same span: data wait + forward + backward + engine step). The start-up (Ray,
  worker group, DeepSpeed init) is reported separately.
* ``ray2``: the same with 2 workers; throughput = global samples per second.

Data wait = the time a step spent blocked on the loader (``data_wait_s``, the slowest rank's); its fraction is the
sum over the measured steps divided by their summed step time. The first ``--warmup`` steps of each run are
excluded. Medians are reported (the CI machine is shared; the load average is printed at the start and the end).

``--model small`` (default) is the ``small`` Vid-LLM (DINOv2-S encoder, SmolLM2-135M-shaped LM) at
``--image-size`` pixels, whose step is dominated by compute as on a real cluster; ``--model tiny`` is the test
preset, whose ~10 ms step is mostly Python and framework overhead (it shows DeepSpeed's fixed per-step cost).
The shards are written to match the model (frame size, teacher dimensions).

Run: ``python bench/bench_train.py [--model small --steps 8 --storage s3 --workdir /tmp/vidllm-bench-train]``. Ends with
``RESULT <name> <value> <unit> target <op> <value>`` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from pipelines.train.config import resolve_config  # noqa: E402
from pipelines.train.data import Collator, load_shards, micro_batch_loader, plan_rank, steps_per_epoch  # noqa: E402
from pipelines.train.progress import read_step_logs  # noqa: E402
from pipelines.train.synthetic_shards import write_synthetic_shards  # noqa: E402
from pipelines.train.trainer import param_groups  # noqa: E402


def plain_loop(cfg, steps: int) -> tuple[list[float], list[float]]:
    """Step times and data waits (s) of a plain PyTorch loop over the same data path."""
    from model import VidLLM, VidLLMConfig
    from model.freezing import apply_freezing
    from model.losses import MultitaskLoss

    # Ray Train gives each worker OMP_NUM_THREADS = its CPUs (1 here); the plain loop gets the same thread count,
    # so both measure one core's work (more intra-op threads than free cores slows a shared machine down).
    torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))
    torch.manual_seed(cfg.data.seed)
    model = VidLLM(VidLLMConfig.from_dict(cfg.model)).train()
    apply_freezing(model, cfg.freeze.trainable, cfg.freeze.frozen)
    opt = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas)
    loss_fn = MultitaskLoss(cfg.loss)
    shards = load_shards(cfg.data.manifest_uri)
    spe = steps_per_epoch(shards, 1, cfg.data.micro_batch_size, 1)
    times, waits, epoch = [], [], 0
    while len(times) < steps:
        plan = plan_rank(shards, 0, 1, epoch, cfg.data.seed, cfg.data.shuffle_shards)
        batches = iter(micro_batch_loader(plan, Collator(cfg.data, 1, None, epoch), cfg.data, spe))
        while len(times) < steps:
            t0 = time.perf_counter()
            item = next(batches, None)
            if item is None:
                break
            waits.append(time.perf_counter() - t0)
            batch = item.batch
            loss, _ = loss_fn(model(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            times.append(time.perf_counter() - t0)
        epoch += 1
    return times, waits


def start_s3() -> tuple[subprocess.Popen, str]:
    """A moto S3 server on a free 127.0.0.1 port, with the AWS environment pointing at it."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(endpoint + "/", timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("bench-train")
    return proc, endpoint


def ray_run(cfg) -> tuple[list[dict], float]:
    """Per-step records of a Ray Train run and its wall time."""
    from pipelines.train.launch import run_training

    t0 = time.perf_counter()
    run_training(cfg)
    wall = time.perf_counter() - t0
    records = [r for attempt in read_step_logs(cfg.run.output_dir) for r in attempt if "loss" in r]
    return records, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("small", "tiny"), default="small",
                        help="model preset (small: compute-bound step; tiny: the test preset)")
    parser.add_argument("--image-size", type=int, default=224, help="frame size of the small model (multiple of 14)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--steps", type=int, default=8, help="measured steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="steps excluded at the start of each run")
    parser.add_argument("--clips", type=int, default=16, help="synthetic clips")
    parser.add_argument("--workdir", default="/tmp/vidllm-bench-train")
    parser.add_argument("--storage", choices=("s3", "local"), default="s3",
                        help="where the shards are: the local S3 server (moto) or the work directory")
    parser.add_argument("--loader-workers", type=int, default=1, help="data.num_workers (loader processes per rank)")
    parser.add_argument("--plain-child", nargs=3, metavar=("CONFIG", "STEPS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_child:
        from pipelines.train.config import TrainConfig

        config_path, steps, out = args.plain_child
        cfg = TrainConfig.from_dict(json.loads(Path(config_path).read_text()))
        Path(out).write_text(json.dumps(plain_loop(cfg, int(steps))))
        return 0
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)

    for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DS_ACCELERATOR": "cpu",
                       "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    from model import VidLLMConfig

    model = VidLLMConfig.tiny() if args.model == "tiny" else VidLLMConfig.small()
    if args.model == "small":
        model.encoder.dinov2["image_size"] = args.image_size
        # No SmolLM2 tokenizer offline: the built-in word tokenizer's special ids, same LM shape and vocab size.
        tiny_llm = VidLLMConfig.tiny().llm
        for name in ("scene_token_id", "loc_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
            setattr(model.llm, name, getattr(tiny_llm, name))
    size = int(model.encoder.dinov2["image_size"])
    s3 = None
    shard_root = str(work / "shards")
    if args.storage == "s3":
        s3, _ = start_s3()
        shard_root = "s3://bench-train/shards"
    manifest = write_synthetic_shards(
        shard_root, num_clips=args.clips, num_shards=8, frames=args.frames, size=size,
        patch=int(model.encoder.dinov2["patch_size"]), geo_dim=model.distill.teacher_geo_dim,
        sem_dim=model.distill.teacher_sem_dim, frame_codec="jpeg")
    total = args.steps + args.warmup
    print(f"model {args.model}: {size} px, {args.frames} frames per clip", flush=True)

    def config(name: str, workers: int):
        return resolve_config("tiny", [f"model={json.dumps(model.to_dict())}",
            f"data.manifest_uri={manifest}", f"run.storage_path={work / 'ray'}", f"run.output_dir={work / name}",
            f"run.name={name}", f"run.num_workers={workers}", f"schedule.max_steps={total}",
            f"schedule.checkpoint_every={total}", "schedule.log_every=10", "optim.warmup_steps=2",
            f"data.num_workers={args.loader_workers}"], stage=1)

    try:
        # In a child process, so that its memory is returned before the Ray runs start (the machine is shared).
        (work / "plain.json").write_text(json.dumps(config("plain", 1).to_dict()))
        subprocess.run([sys.executable, __file__, "--plain-child", str(work / "plain.json"), str(total),
                        str(work / "plain_times.json")], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        plain, plain_waits = (v[args.warmup:] for v in json.loads((work / "plain_times.json").read_text()))
        import ray

        env = ("DS_ACCELERATOR", "HF_HUB_OFFLINE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_DEFAULT_REGION")
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024**2,
                 runtime_env={"env_vars": {k: os.environ[k] for k in env if k in os.environ}})
        one, wall1 = ray_run(config("ray1", 1))
        two, wall2 = ray_run(config("ray2", 2))
        ray.shutdown()
    finally:
        if s3 is not None:
            s3.terminate()
            s3.wait(timeout=10)

    def wait_fraction(records: list[dict]) -> float:
        measured = records[args.warmup:]
        return sum(r["data_wait_s"] for r in measured) / sum(r["step_time_s"] for r in measured)

    t_plain = statistics.median(plain)
    t_one = statistics.median(r["step_time_s"] for r in one[args.warmup:])
    sps_one = statistics.median(r["samples_per_s"] for r in one[args.warmup:])
    sps_two = statistics.median(r["samples_per_s"] for r in two[args.warmup:])
    startup1 = wall1 - sum(r["step_time_s"] for r in one)
    print(f"plain step {t_plain * 1e3:.1f} ms | ray+deepspeed 1 worker step {t_one * 1e3:.1f} ms "
          f"(start-up and export {startup1:.1f} s of {wall1:.1f} s) | 2 workers {sps_two:.2f} samples/s vs "
          f"1 worker {sps_one:.2f} samples/s ({wall2:.1f} s wall)")
    where = "the local S3 server" if args.storage == "s3" else "local disk"
    print(f"shards on {where}, {args.loader_workers} loader process(es) per rank | data wait: plain "
          f"{sum(plain_waits) / sum(plain) * 100:.1f} %, 1 worker {wait_fraction(one) * 100:.1f} %, 2 workers "
          f"{wait_fraction(two) * 100:.1f} % of step time")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"RESULT train_step_overhead_ray_ds_vs_plain {t_one / t_plain:.3f} x target <= 1.10")
    print(f"RESULT train_data_wait_fraction_1worker {wait_fraction(one) * 100:.1f} % target < 10")
    print(f"RESULT train_data_wait_fraction_2workers {wait_fraction(two) * 100:.1f} % target < 10")
    print(f"RESULT train_step_time_plain {t_plain * 1e3:.1f} ms target >= 0")
    print(f"RESULT train_step_time_ray_ds_1worker {t_one * 1e3:.1f} ms target >= 0")
    print(f"RESULT train_throughput_1worker {sps_one:.2f} samples/s target >= 0")
    print(f"RESULT train_throughput_2workers {sps_two:.2f} samples/s target >= 0")
    print(f"RESULT train_scaling_2_vs_1_workers {sps_two / sps_one:.3f} x target >= 1.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
