"""The training loop's steps one at a time, in this process, with a real DeepSpeed engine (gloo, world size 1):
build (model, freezing from the config, optimizer, engine), one optimizer step, the reduced metrics, the progress
line and the export."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch

from pipelines.train.config import resolve_config
from pipelines.train.progress import ProgressLine
from pipelines.train.trainer import TrackingContext, Trainer, WorkerContext, param_groups, warmup_cosine
from tests.conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo group and the variables a launcher (torchrun, Ray Train) sets, which DeepSpeed checks."""
    import torch.distributed as dist

    env = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _trainer(train_manifest, tmp_path, stage=1, *extra):
    cfg = resolve_config("tiny", [f"data.manifest_uri={train_manifest}", f"run.output_dir={tmp_path / 'out'}",
                                  f"run.storage_path={tmp_path / 'ray'}", "schedule.max_steps=3", *extra], stage=stage)
    ctx = WorkerContext(rank=0, world=1, device=torch.device("cpu"))
    return Trainer(cfg, ctx, TrackingContext(f"sqlite:///{tmp_path}/mlflow.db"))


def test_build_applies_the_configs_freezing_and_gives_only_trainable_parameters_to_the_optimizer(
        process_group, train_manifest, tmp_path):
    trainer = _trainer(train_manifest, tmp_path, 1, "freeze.trainable=[adapter.*]").build()
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") for n in trainable)
    groups = param_groups(trainer.model, 0.05)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert all(p.dim() < 2 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0
    assert trainer.param_counts["trainable"] == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert trainer.total_steps == 3 and trainer.steps_per_epoch == 8  # 16 clips / micro-batch 2


def test_one_step_updates_only_trainable_weights_and_reports_every_loss_term(process_group, train_manifest,
                                                                             tmp_path):
    from pipelines.train.checkpointing import TrainState

    trainer = _trainer(train_manifest, tmp_path).build()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    batches = trainer.micro_batches(TrainState(-1, 0, 0))
    result = trainer.train_step(batches)
    assert set(result.terms) == {"geo", "lang", "sc"} and result.samples == 2 and result.tokens == 0
    assert result.position == TrainState(-1, 0, 1)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(n.split(".")[0] in {"encoder", "adapter", "distill"} for n in changed)
    metrics = trainer.step_metrics(result, seconds=0.5)
    assert metrics["loss"] == pytest.approx(result.loss) and metrics["samples_per_s"] == pytest.approx(4.0)
    assert {"loss_geo", "loss_lang", "loss_sc", "lr", "tokens_per_s", "epoch"} <= set(metrics)
    assert trainer.should_checkpoint(1) and not trainer.should_checkpoint(0) and trainer.should_checkpoint(2)


def test_export_writes_an_hf_folder_with_the_resolved_config(process_group, train_manifest, tmp_path):
    from model import VidLLM

    trainer = _trainer(train_manifest, tmp_path).build()
    uri = trainer.export()
    assert {"config.json", "model.safetensors", "train_config.json", "tokenizer.json"} <= set(os.listdir(uri))
    saved = json.loads((tmp_path / "out" / "model" / "train_config.json").read_text())
    assert saved["freeze"]["trainable"] == ["encoder.*", "adapter.*", "distill.*"]
    assert "freezing" not in json.loads((tmp_path / "out" / "model" / "config.json").read_text())["vidllm"]
    reloaded = VidLLM.from_pretrained(uri).state_dict()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(reloaded[key], value.float()), key


def test_progress_line_shows_step_total_losses_throughput_and_eta():
    now = [100.0]
    stream = io.StringIO()
    line = ProgressLine(stage=2, total=20, start=2, stream=stream, clock=lambda: now[0])
    now[0] = 112.0  # 3 steps (2, 3, 4) in 12 s: 4 s per step
    line.update(4, {"loss": 1.25, "loss_lm": 0.5, "samples_per_s": 3.5, "lr": 1e-4})
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.startswith("stage 2:")
    assert "5/20" in text and "loss=1.25" in text and "loss_lm=0.5" in text and "samples/s=3.5" in text
    assert "<01:00" in text and line.eta_s(4) == pytest.approx(60.0)  # 15 steps left x 4 s


def test_warmup_then_cosine_to_the_floor():
    factor = warmup_cosine(warmup=2, total=10, min_ratio=0.1)
    assert [factor(0), factor(1)] == [0.5, 1.0]
    assert factor(2) == pytest.approx(1.0) and factor(10) == pytest.approx(0.1)


def test_stage2_from_an_export_trains_in_training_mode(process_group, train_manifest, stage1_export, tmp_path):
    from model import VidLLM

    assert not VidLLM.from_pretrained(stage1_export).training  # what from_pretrained returns
    trainer = _trainer(train_manifest, tmp_path, 2, f"init_from={stage1_export}").build()
    assert trainer.model.training and all(m.training for m in trainer.model.modules())


def test_activation_checkpointing_from_the_config_gives_identical_losses_and_updates(process_group, train_manifest,
                                                                                    stage1_export, tmp_path):
    from pipelines.train.checkpointing import TrainState

    runs = {}
    for on in (False, True):
        flags = [f"activation_checkpointing.{part}={str(on).lower()}"
                 for part in ("encoder", "reconstruction", "heads", "llm")]
        trainer = _trainer(train_manifest, tmp_path / str(on), 2, f"init_from={stage1_export}",
                           "data.num_workers=0", *flags).build()
        model = trainer.model
        assert model.reconstruction.alternating.gradient_checkpointing is on
        assert model.reconstruction.gradient_checkpointing is on and model.metric_depth.gradient_checkpointing is on
        assert model.llm.is_activation_checkpointing is on and model.encoder.backbone.is_activation_checkpointing is on
        fixed = next(trainer.micro_batches(TrainState(-1, 0, 0)))
        losses = []
        for _ in range(2):
            torch.manual_seed(0)
            losses.append(trainer.train_step(iter([fixed])).loss)
        runs[on] = losses, {n: p.detach().clone() for n, p in model.named_parameters()}
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-6, abs=1e-7)
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_export_holds_the_fp32_masters_in_shards_with_an_index(process_group, train_manifest, tmp_path):
    """Under bf16 the module's weights are bf16; the export must carry the optimizer's fp32 masters (trainable
    parameters) and the fp32 values the frozen parameters had before DeepSpeed cast the module."""
    from deepspeed.utils import safe_get_full_fp32_param

    from model import VidLLM
    from pipelines.train.checkpointing import TrainState

    torch.manual_seed(0)
    trainer = _trainer(train_manifest, tmp_path, 1, "deepspeed.precision=bf16", "run.export_shard_mib=1")
    trainer.build()
    frozen_before = dict(trainer.frozen_fp32)
    assert frozen_before and all(v.dtype == torch.float32 for v in frozen_before.values())
    trainer.train_step(trainer.micro_batches(TrainState(-1, 0, 0)))
    uri = trainer.export()
    files = sorted(os.listdir(uri))
    shards = [f for f in files if f.startswith("model-") and f.endswith(".safetensors")]
    assert len(shards) >= 2 and "model.safetensors.index.json" in files and "model.safetensors" not in files
    index = json.loads((tmp_path / "out" / "model" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    exported = VidLLM.from_pretrained(uri).state_dict()
    masters = 0
    for name, param in trainer.engine.module.model.named_parameters():
        assert param.dtype == torch.bfloat16
        if param.requires_grad:
            master = safe_get_full_fp32_param(param)
            assert torch.equal(exported[name], master.float()), name
            masters += int(not torch.equal(master, master.bfloat16().float()))
        else:
            assert torch.equal(exported[name], frozen_before[name]), name
    assert masters > 0, "the exported trainable weights are not bf16 values upcast"


@pytest.mark.parametrize("zero", [2, 3])
def test_restore_reads_only_this_ranks_shards(process_group, train_manifest, tmp_path, zero):
    """Another rank's shard is listed in the marker but unreadable: rank 0 restores without touching it."""
    import pyarrow.fs as pafs

    from pipelines.train.checkpointing import (
        DS_SUBDIR,
        DS_TAG,
        MARKER,
        STATE_FILE,
        TrainState,
        load_checkpoint,
        local_files,
        marker_payload,
    )

    trainer = _trainer(train_manifest, tmp_path, 1, f"deepspeed.zero_stage={zero}").build()
    result = trainer.train_step(trainer.micro_batches(TrainState(-1, 0, 0)))
    ckpt = tmp_path / "checkpoint_step00000000"
    state = TrainState(0, result.position.epoch, result.position.micro_in_epoch)
    trainer.engine.save_checkpoint(str(ckpt / DS_SUBDIR), tag=DS_TAG, client_state=state.to_dict())
    (ckpt / STATE_FILE).write_text(json.dumps(state.to_dict()))
    other = ckpt / DS_SUBDIR / DS_TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    other.write_bytes(b"not a torch file")
    (ckpt / MARKER).write_text(json.dumps(marker_payload(0, local_files(ckpt))))
    def values():  # a ZeRO-3 parameter's data lives in its partition (ds_tensor)
        return {n: getattr(p, "ds_tensor", p).detach().clone() for n, p in trainer.engine.module.named_parameters()}

    saved = values()
    trainer.train_step(trainer.micro_batches(TrainState(-1, 0, 0)))  # move away from the checkpoint
    assert any(not torch.equal(v, saved[n]) for n, v in values().items())
    assert load_checkpoint(trainer.engine, pafs.LocalFileSystem(), str(ckpt), rank=0) == state
    restored = values()
    assert all(v.numel() for v in restored.values())
    for name, value in restored.items():
        assert torch.equal(value, saved[name]), name
