"""``--dry-run`` passes for every training preset and for every command in infra/ and README.md, given the inputs
those commands name; without them it exits 2 with one line per missing input.

The inputs live where the commands say: the bucket ``vidllm-data`` on the moto S3 server holds real training shards
(teacher widths of the real teachers, 1024), clip manifests, teacher folders, Stage-1 export config.json files (``small`` and ``base``) and a
tokenizer folder with SmolLM2's vocabulary size (49152 tokens, so ``<scene>``/``<loc>`` get the ids the ``small``
LLM config expects). The model itself is built on the meta device, so no weights are needed.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

BUCKET = "vidllm-data"
DRY_RUN_STAGES = ("pipelines.ingest", "pipelines.teachers", "pipelines.train", "pipelines.eval", "pipelines.serve")
SUBCOMMANDS = {"ingest": "pipelines.ingest", "teachers": "pipelines.teachers", "train": "pipelines.train",
               "eval": "pipelines.eval", "serve": "pipelines.serve"}


def write_tokenizer(path: Path) -> None:
    """A word-level tokenizer with SmolLM2's vocabulary size, special-token ids (0 endoftext, 1/2 im_start/end) and
    chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, **{f"w{i}": i for i in range(3, 49152)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    # SmolLM2-Instruct's chat template (the commands prompt through it: model.llm.use_chat_template).
    tokenizer.chat_template = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
                               "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
                               "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tokenizer.save_pretrained(str(path))


def write_export_config(path: Path, size: str) -> None:
    """The config.json of a Stage-1 export of the ``size`` model (no weights: a dry run never loads them)."""
    from model import VidLLMConfig, VidLLMHFConfig

    path.mkdir(parents=True, exist_ok=True)
    VidLLMHFConfig(vidllm=getattr(VidLLMConfig, size)().to_dict()).save_pretrained(str(path))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, s3_endpoint) -> dict[str, str]:
    """Local and ``s3://vidllm-data`` copies of every input the presets and commands name."""
    import s3fs

    from pipelines.train.synthetic_shards import write_synthetic_shards

    root = Path(tmp_path_factory.mktemp("dry_run_inputs"))
    write_synthetic_shards(str(root / "train"), num_clips=16, num_shards=8, geo_dim=1024, sem_dim=1024)
    write_tokenizer(root / "tokenizer")
    write_export_config(root / "stage1" / "model", "small")
    write_export_config(root / "stage2" / "model", "small")
    write_export_config(root / "stage1-base" / "model", "base")
    (root / "inputs").mkdir()
    (root / "inputs" / "scannet_val_pred_box.json").write_text(json.dumps({"scene0000_00": []}))
    (root / "inputs" / "predictions.jsonl").write_text("")
    (root / "inputs" / "pred.json").write_text("[]")
    (root / "clips").mkdir()
    (root / "clips" / "manifest.json").write_text(json.dumps({"kind": "clips"}))
    for folder, model_type in (("geo", "dinov2_with_registers"), ("sem", "clip_vision_model"), ("dinov2", "dinov2")):
        (root / folder).mkdir()
        (root / folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    for local, remote in (("train", "shards/train"), ("train", "shards/val"),
                          ("tokenizer", "weights/smollm2-135m-instruct"),
                          ("stage1/model", "runs/stage1/model"), ("stage2/model", "runs/stage2/model"),
                          ("stage1-base/model", "runs/stage1-base/model"),
                          ("clips", "shards/clips"),
                          ("geo", "weights/dinov2-large-reg"), ("sem", "weights/clip-vit-large-336"),
                          ("dinov2", "weights/dinov2-small")):
        fs.put(str(root / local) + "/", f"{BUCKET}/{remote}/", recursive=True)
    fs.pipe(f"{BUCKET}/scannet/scans/scene0000_00/scene0000_00.sens", b"scene")
    for name, remote in (("scannet_val_pred_box.json", "proposals/scannet_val_pred_box.json"),
                         ("predictions.jsonl", "eval/stage2/predictions/predictions.jsonl"),
                         ("pred.json", "eval/other-system/pred.json")):
        fs.put(str(root / "inputs" / name), f"{BUCKET}/{remote}")
    s3fs.S3FileSystem.clear_instance_cache()
    return {"root": str(root), "manifest": str(root / "train" / "manifest.json"), "tokenizer": str(root / "tokenizer"),
            "stage1": str(root / "stage1" / "model")}


def dry_run(module: str, argv: list[str], capsys) -> tuple[int, str, str]:
    main = importlib.import_module(f"{module}.__main__").main
    capsys.readouterr()
    code = main([*argv, "--dry-run"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _infra_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for path in sorted((REPO_ROOT / "infra" / "k8s").glob("rayjob-*.yaml")):
        (job,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for part in job["spec"]["entrypoint"].split("&&"):
            argv = shlex.split(part)
            commands.append((argv[2], argv[3:]))
    return commands


def _readme_commands() -> list[tuple[str, list[str]]]:
    """Every stage command in README.md's shell blocks: ``python -m pipelines.X``, ``vidllm X`` and
    ``vidllm submit X ... -- ARGS`` (the job's own arguments); ``--help`` lines and the demo are not stage runs."""
    text = (REPO_ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if not argv or "--help" in argv:
                continue
            if argv[:2] == ["python", "-m"] and argv[2] in DRY_RUN_STAGES:
                commands.append((argv[2], argv[3:]))
            elif argv[0] == "vidllm" and len(argv) > 1 and argv[1] in SUBCOMMANDS:
                commands.append((SUBCOMMANDS[argv[1]], argv[2:]))
            elif argv[:2] == ["vidllm", "submit"] and "--" in argv and argv[2] in SUBCOMMANDS:
                commands.append((SUBCOMMANDS[argv[2]], argv[argv.index("--") + 1:]))
    return commands


def test_the_command_lists_are_not_empty():
    assert len(_infra_commands()) == 4
    assert {m for m, _ in _readme_commands()} >= {"pipelines.ingest", "pipelines.train", "pipelines.eval"}


@pytest.mark.parametrize(("module", "argv"), _infra_commands() + _readme_commands(),
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_every_infra_and_readme_command_passes_the_dry_run(inputs, capsys, module, argv):
    code, out, err = dry_run(module, argv, capsys)
    assert code == 0, f"{module} {' '.join(argv)} --dry-run failed:\n{err}"
    assert "dry run:" in err


def _preset_inputs(inputs: dict[str, str], tmp: Path, preset: str, stage: int) -> list[str]:
    common = [f"data.manifest_uri={inputs['manifest']}", f"run.output_dir={tmp / 'out'}",
              f"run.storage_path={tmp / 'ray'}", "run.num_workers=2"]
    if stage == 2:
        if preset == "tiny":
            write_export_config(tmp / "tiny_export", "tiny")
            return [*common, f"init_from={tmp / 'tiny_export'}"]
        return [*common, f"init_from={inputs['stage1']}"]
    if preset == "tiny":
        return [*common, "model.distill.teacher_geo_dim=1024", "model.distill.teacher_sem_dim=1024"]
    return [*common, f"model.llm.tokenizer_path={inputs['tokenizer']}"]


@pytest.mark.parametrize(("preset", "stage"), [("stage1", 1), ("stage2", 2), ("tiny", 1), ("tiny", 2)])
def test_every_preset_passes_with_its_inputs_and_names_each_missing_one(inputs, tmp_path, capsys, preset, stage):
    sets = [item for s in _preset_inputs(inputs, tmp_path, preset, stage) for item in ("--set", s)]
    code, out, err = dry_run("pipelines.train", ["--stage", str(stage), "--config", preset, *sets], capsys)
    assert code == 0, err
    assert "parameters (total / trainable):" in out and "GiB per GPU" in out
    assert "data: 16 samples in 8 shards" in out
    code, out, err = dry_run("pipelines.train", ["--stage", str(stage), "--config", preset], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    missing = {"data.manifest_uri", "run.output_dir", "run.storage_path"} | ({"init_from"} if stage == 2 else set())
    if preset == "stage1":
        missing.add("model.llm.tokenizer_path")
    assert {re.search(r"field '([^']+)'", line).group(1) for line in lines} == missing, err
    assert all(line.startswith("python -m pipelines.train: error: train config field") for line in lines)


def test_the_plan_reports_parameters_trainable_counts_and_memory_for_the_paper_model(inputs, tmp_path, capsys):
    """``base()`` (8 B parameters) on the meta device: the plan is instant and needs no memory."""
    base = json.dumps(__import__("model").VidLLMConfig.base().to_dict())
    code, out, err = dry_run("pipelines.train", ["--stage", "1", "--config", "stage1", f"--set=model={base}",
                                                 *_sets(_preset_inputs(inputs, tmp_path, "stage1", 1)[:4])], capsys)
    assert "llm" in out and re.search(r"all\s+(\d+\.\d+) M", out)
    total = float(re.search(r"all\s+(\d+\.\d+) M", out).group(1))
    assert 7_900 < total < 8_100
    # The base LLM's ids are Vicuna's: the small model's tokenizer folder is not its tokenizer.
    assert code == 2 and "model.llm.tokenizer_path" in err


def test_problems_in_the_data_are_named(inputs, tmp_path, capsys):
    sets = _preset_inputs(inputs, tmp_path, "tiny", 1)
    code, _, err = dry_run("pipelines.train", ["--stage", "1", "--config", "tiny",
                                               *_sets([*sets[:4], "model.distill.teacher_geo_dim=48",
                                                       "data.micro_batch_size=16"])], capsys)
    assert code == 2
    assert "'model.distill.teacher_geo_dim': the shards' teacher width is 1024, the model expects 48" in err
    assert "'run.num_workers'" in err and "cannot fill one step" in err
    code, _, err = dry_run("pipelines.train", ["--stage", "1", "--config", "tiny",
                                               *_sets([f"data.manifest_uri={tmp_path / 'none'}", *sets[1:]])], capsys)
    assert code == 2 and err.count("\n") == 1 and "'data.manifest_uri'" not in err.split("does not exist")[1]


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]
