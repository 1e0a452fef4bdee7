"""``vidllm demo`` / ``python -m pipelines.demo``: the whole system on this machine, step by step.

One local Ray instance (started here, used by every step), storage in one local folder (or an ``s3://`` prefix):

    1 ray        start a local Ray instance (all cores, no dashboard)
    2 scenes     synthetic ScanNet-format scenes (.sens + H.264 video) with ScanQA/ScanRefer/... annotations
    3 ingest     Ray Data: scenes -> WebDataset CLIP shards + manifest
    4 teachers   Ray Data actor pools: random stand-in teachers (or the real DINOv2-S) -> TRAINING shards + manifest
    5 stage1     Ray Train + DeepSpeed ZeRO-2: dual-teacher distillation; export; MLflow run + registered model
    6 stage2     the same, joint optimisation from Stage 1's export
    7 eval       Ray Data batch inference + benchmark harness on the clip shards; results to MLflow
    8 serve      Ray Serve on 127.0.0.1 with the registered model version (models:/vidllm-demo/<version>)
    9 query      real HTTP: upload a scene video, ask a question, ground a description; print the answers

``--weights-dir DIR`` (the folder of ``vidllm weights install``) runs the same steps on the ``small`` model from
real weights: the DINOv2-S encoder, SmolLM2-135M-Instruct with its own tokenizer and chat template, the real
DINOv2-S as geometry teacher (a random CLIP stands in for the semantic one, labelled so); ``--size real`` keeps it
to minutes on a CPU machine. Every step's wall time and peak memory (PSS of this process and of the Ray processes
it started) are printed and written to ``demo_result.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

from pipelines import storage
from pipelines.config import CliParser, ConfigSpec, UsageError, alias, print_config, run_cli
from pipelines.demo import serving, steps
from pipelines.demo.config import SIZES, DemoConfig, DemoPaths
from pipelines.demo.runner import Progress, StepFailed, StepRecord

#: Set for the demo process and every Ray worker: offline, no telemetry, one intra-op thread per process (tiny
#: models on few shared cores run far faster without competing OpenMP threads). Existing values win.
DEMO_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}
NUM_STEPS = 9
SPEC = ConfigSpec(DemoConfig, "demo", {"default": dict})


def build_parser() -> CliParser:
    sizes = "; ".join(f"{s.name}: {s.num_scenes} scenes x {s.frames_per_scene} frames, {s.clips_per_scene} clip(s) "
                      f"of {s.frames_per_clip} frames per scene, {s.stage1_steps}+{s.stage2_steps} training steps"
                      for s in SIZES.values())
    parser = CliParser(
        prog="vidllm demo",
        description="Run the whole Vid-LLM system locally on synthetic scenes: generate ScanNet-format scenes, "
        "ingest them into clip shards, compute teacher targets, train Stage 1 and Stage 2 with DeepSpeed "
        "(tiny model), evaluate, register the model in a local MLflow store, serve it with Ray Serve on "
        "127.0.0.1 and ask it a question and a grounding query over HTTP. Rerunning reuses finished steps; "
        "--fresh starts over. Each step's output goes to <workdir>/logs/<step>.log.",
        epilog=__doc__.split("\n", 2)[2] + "\nWithout --weights-dir the model and the teachers are RANDOM tiny stand-ins, so "
        "the answers show the system working end to end, not a trained model's quality; with it the answers are "
        "SmolLM2's, and the semantic teacher is still a random stand-in (no CLIP weights offline).\n\n" + SPEC.describe(),
    )
    group = SPEC.add_arguments(parser)
    alias(group, "--workdir", "workdir",
          help="local folder for everything (default: ./vidllm_demo); with --storage it keeps logs, the MLflow store, "
          "teacher checkpoints and caches")
    alias(group, "--storage", "storage",
          help="s3:// prefix for scenes, shards, checkpoints and exported models (default: the workdir; endpoint and "
          "credentials from the AWS environment)")
    alias(group, "--size", "size", choices=sorted(SIZES), help=f"how much work ({sizes}; default: default)")
    alias(group, "--port", "port", type=int, help="HTTP port of Ray Serve on 127.0.0.1 (default: a free one)")
    alias(group, "--keep-serving", "keep_serving", const=True, help="leave the endpoint up after the demo until Ctrl-C")
    alias(group, "--fresh", "fresh", const=True, help="delete the results of earlier runs and start over")
    alias(group, "--num-cpus", "num_cpus", type=int, help="CPUs of the local Ray instance (default: all cores)")
    alias(group, "--object-store-mb", "object_store_mb", type=int, help="Ray object store size in MiB (default 512)")
    alias(group, "--seed", "seed", type=int, help="seed of the synthetic scenes (default 0)")
    alias(group, "--weights-dir", "weights_dir",
          help="folder of `vidllm weights install`: run the small model from the real DINOv2-S and SmolLM2-135M-"
          "Instruct (use with --size real on a CPU machine)")
    alias(group, "--train-workers", "train_workers", type=int,
          help="Ray Train workers per stage (default: 2 with 2 CPUs or more, else 1)")
    alias(group, "--use-gpu", "use_gpu", const=True, help="train, evaluate and serve on CUDA GPUs")
    return parser


def _wipe(cfg: DemoConfig, paths: DemoPaths) -> None:
    """Delete an earlier demo's folder (and storage prefix); refuse folders that do not look like one."""
    if os.path.isdir(paths.workdir) and os.listdir(paths.workdir) and not (
            os.path.isfile(paths.state) or os.path.isdir(paths.logs)):
        raise ValueError(f"refusing to delete {paths.workdir}: it is not empty and holds no demo "
                         f"({os.path.basename(paths.state)} or logs/); choose another --workdir")
    shutil.rmtree(paths.workdir, ignore_errors=True)
    if cfg.storage and storage.exists(paths.storage):
        fs, path = storage.filesystem(paths.storage)
        fs.rm(path, recursive=True)


def prepare(cfg: DemoConfig, paths: DemoPaths) -> dict:
    """Start over (``--fresh``) or check that the workdir holds a demo of the same options; returns the state."""
    if cfg.weights_dir:
        from pipelines.weights import DINOV2_SMALL, SMOLLM2, missing

        absent = [n for n in missing(cfg.weights_dir) if n in (DINOV2_SMALL, SMOLLM2)]
        if absent:
            raise ValueError(f"--weights-dir {cfg.weights_dir} lacks verified {', '.join(absent)}: run `vidllm "
                             f"weights install --dir {cfg.weights_dir}` first")
    if cfg.fresh:
        _wipe(cfg, paths)
    state = steps.read_state(paths)
    want = {"size": cfg.size, "seed": cfg.seed, "storage": paths.storage,
            "weights_dir": os.path.abspath(cfg.weights_dir) if cfg.weights_dir else ""}
    # A state written before weights_dir existed is a tiny-model run.
    have = {k: state.get(k, "") if k == "weights_dir" else state[k] for k in want if k in state or k == "weights_dir"}
    if state and have != want:
        raise ValueError(f"{paths.workdir} holds a demo run with {have}, this run asks for {want}: rerun with "
                         "--fresh to start over, or use another --workdir")
    state.update(want)
    steps.write_state(paths, state)
    return state


def start_ray(cfg: DemoConfig, step: StepRecord) -> None:
    """Start the one local Ray instance every step uses; the demo's environment reaches every worker."""
    import ray

    env = {k: os.environ[k] for k in (*DEMO_ENV_DEFAULTS, "MLFLOW_TRACKING_URI")}
    # address="local" always starts a new instance, even when RAY_ADDRESS points at a cluster.
    context = ray.init(address="local", num_cpus=cfg.cpus(), include_dashboard=False, log_to_driver=True,
                       object_store_memory=cfg.object_store_mb * 1024**2, runtime_env={"env_vars": env})
    step.note(f"{cfg.cpus()} CPUs, {cfg.object_store_mb} MiB object store; Ray's own logs in "
              f"{os.path.join(context.address_info['session_dir'], 'logs')}")


def run_steps(cfg: DemoConfig, paths: DemoPaths, state: dict, progress: Progress) -> dict:
    """Steps 1-9; returns what the final report needs."""
    with progress.step("ray", "starting a local Ray instance") as step:
        start_ray(cfg, step)
    with progress.step("scenes", "generating synthetic ScanNet-format scenes") as step:
        steps.scenes(cfg, paths, step)
    with progress.step("ingest", "decoding scenes into clip shards (Ray Data)") as step:
        steps.ingest(cfg, paths, step)
    with progress.step("teachers", "computing teacher targets (Ray Data actor pools)") as step:
        steps.teachers(cfg, paths, step)
    for stage in (1, 2):
        what = "dual-teacher distillation" if stage == 1 else "joint optimisation from Stage 1"
        with progress.step(f"stage{stage}", f"training Stage {stage}, {what} (Ray Train + DeepSpeed)") as step:
            state[f"stage{stage}"] = steps.train(cfg, paths, step, stage, state)
            steps.write_state(paths, state)
    registered = state["stage2"]
    model_uri = f"models:/{registered['registered_model']}/{registered['model_version']}"
    with progress.step("eval", f"evaluating {model_uri} (Ray Data batch inference)") as step:
        state["eval"] = steps.evaluate(cfg, paths, step, model_uri, state)
        steps.write_state(paths, state)
    with progress.step("serve", f"starting Ray Serve with {model_uri}") as step:
        source = steps.check_registered(paths, registered["registered_model"], registered["model_version"])
        url = serving.start(cfg, paths, model_uri)
        step.note(f"{model_uri} (artifacts {source}) served at {url}, OpenAPI docs at {url}/docs")
    with progress.step("query", "asking the served model over HTTP") as step:
        result = serving.query(url, paths, steps.VAL_SCENE)
        step.note(f"registered {result.scene_id}'s video {result.video_uri} as scene {result.served_scene_id} "
                  f"({result.frames_used} frames)")
        step.note(f"Q: {result.question}")
        step.note(f"A: {result.answer!r}")
        step.note(f"ground: {result.description!r}")
        if not result.boxes:
            raise RuntimeError("the grounding query returned no box")
        step.note(f"  -> {serving.format_box(result.boxes[0])}")
    return {"url": url, "model_uri": model_uri, "model_source": source, "query": asdict(result)}


def where(cfg: DemoConfig, paths: DemoPaths, state: dict, final: dict) -> list[str]:
    """The "where is everything" section of the report."""
    from pipelines.manifest import manifest_uri

    query = final["query"]
    lines = [
        f"  scenes (ScanNet format)     {paths.scenes}",
        f"  clip shards + manifest      {manifest_uri(paths.clips)}",
        f"  training shards + manifest  {manifest_uri(paths.train_shards)}",
        f"  teacher checkpoints         {paths.teachers} (RANDOM stand-ins)" if not cfg.weights_dir else
        f"  teacher checkpoints         {steps.teacher_folders(cfg, paths)[0]} (real DINOv2-S), {paths.teachers} "
        "(RANDOM CLIP stand-in)",
        "  Ray Train checkpoints       "
        + ", ".join(storage.join(paths.ray_storage, steps.ray_run_name(stage)) for stage in (1, 2)),
        f"  exported models (HF)        {state['stage1']['model_uri']}, {state['stage2']['model_uri']}",
        f"  registered model            {final['model_uri']} (artifacts {final['model_source']})",
        f"  evaluation                  {state['eval']['results']} (+ summary.md, plots/)",
        f"  MLflow store                {paths.tracking_uri} (artifacts {storage.join(paths.storage, 'mlartifacts')})",
        f"      mlflow ui --backend-store-uri {paths.tracking_uri}",
        f"  logs                        {paths.logs}",
        f"  result of this run          {paths.result}",
        f"  endpoint                    {final['url']} (OpenAPI: {final['url']}/docs)",
    ]
    lines += [f"      {c}" for c in serving.curl_examples(final["url"], query["video_uri"], query["question"])]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: _main(argv), "vidllm demo")


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    cfg = SPEC.resolve(args)
    if args.print_config:
        print_config(cfg)
        return 0
    paths = cfg.paths()
    try:
        state = prepare(cfg, paths)
    except ValueError as err:
        raise UsageError(str(err)) from None
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        raise UsageError("Ray is already initialised in this process; run the demo in a process of its own "
                         "(`vidllm demo` or `python -m pipelines.demo`): it starts and stops its own local Ray "
                         "instance")
    for key, value in DEMO_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["MLFLOW_TRACKING_URI"] = paths.tracking_uri
    os.makedirs(os.path.dirname(paths.mlflow_db), exist_ok=True)

    progress = Progress(paths.logs, NUM_STEPS)
    progress.say(f"Vid-LLM demo, size {cfg.size}, workdir {paths.workdir}"
                 + (f", storage {paths.storage}" if cfg.storage else ""))
    load_before, started = os.getloadavg(), time.perf_counter()
    try:
        final = run_steps(cfg, paths, state, progress)
        steps.write_state(paths, state)
        storage.write_bytes(paths.result, json.dumps(
            {**final, "steps": {r.key: {"status": r.status, "seconds": round(r.seconds, 2),
                                        "peak_memory_mb": r.peak_memory_mb} for r in progress.records}}, indent=1).encode())
        progress.say("")
        progress.say("Where everything is:")
        for line in where(cfg, paths, state, final):
            progress.say(line)
        progress.say("")
        progress.say("Summary (steps reuse earlier results on a rerun; --fresh starts over):")
        for line in progress.summary(time.perf_counter() - started, load_before, os.getloadavg()):
            progress.say(line)
        if cfg.keep_serving:
            progress.say(f"\nServing at {final['url']} until Ctrl-C ...")
            try:
                _wait_forever()
            except KeyboardInterrupt:
                progress.say("stopping")
        return 0
    except StepFailed as err:
        progress.say(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        progress.say("interrupted")
        return 130
    finally:
        _stop(progress, served=any(r.key == "serve" for r in progress.records))
        progress.close()


def _wait_forever() -> None:
    while True:
        time.sleep(3600)


def _stop(progress: Progress, served: bool) -> None:
    """Shut Serve and Ray down (their messages go to logs/demo.log)."""
    import ray

    if ray.is_initialized():
        serving.shutdown()
        ray.shutdown()
        if served:
            progress.say("Ray Serve and the local Ray instance are shut down (--keep-serving keeps the endpoint up).")
