"""The memory model behind ``--dry-run`` (:mod:`pipelines.train.memory`): the model-state table, the activation trace
against the same step run on real tensors, and the ``base()`` Stage-2 recipe for 8 x 80 GB GPUs.

Measured peak memory of real DeepSpeed training steps is compared with the estimate in
``bench/bench_memory_model.py`` (a memory target, so a benchmark)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from pipelines.train.config import resolve_config
from pipelines.train.memory import (
    StepShape,
    _geometric_step,
    _LiveBytes,
    estimate_activations,
    estimate_model_state,
)


def _meta_model(cfg, size: str = "tiny"):
    from model import VidLLM, VidLLMConfig
    from model.freezing import apply_freezing

    with torch.device("meta"):
        model = VidLLM(getattr(VidLLMConfig, size)())
    apply_freezing(model, cfg.freeze.trainable, cfg.freeze.frozen)
    return model


def test_model_state_follows_the_zero_stage_and_offload():
    billion = 10**9
    z2 = estimate_model_state(8 * billion, 7 * billion, resolve_config("tiny", ["deepspeed.zero_stage=2"]), 8, True)
    assert z2.weights == 16 * billion  # bf16, replicated
    assert z2.gradients == 7 * billion * 2 / 8 and z2.optimizer == 7 * billion * 12 / 8
    assert z2.buffers == 2 * 200_000_000 * 2  # two reduce buckets under overlap_comm
    z3 = estimate_model_state(8 * billion, 7 * billion, resolve_config("tiny", ["deepspeed.zero_stage=3"]), 8, True)
    assert z3.weights == pytest.approx(16 * billion / 8 + (1_000_000_000 + 50_000_000) * 2)
    assert z3.gradients == z2.gradients and z3.optimizer == z2.optimizer and z3.total < z2.total
    off = estimate_model_state(8 * billion, 7 * billion, resolve_config("tiny", [
        "deepspeed.zero_stage=3", "deepspeed.offload_optimizer=cpu", "deepspeed.offload_params=cpu"]), 8, True)
    assert off.optimizer == 0 and off.gradients == 0
    assert off.host == pytest.approx(z3.optimizer + z3.gradients + 16 * billion / 8)
    assert off.weights == pytest.approx((1_000_000_000 + 50_000_000) * 2)
    fp32 = estimate_model_state(10, 10, resolve_config("tiny", ["deepspeed.zero_stage=3"]), 1, False)
    assert fp32.optimizer == 80  # ZeRO-3 in fp32 steps its fp32 partition in place: Adam m and v only


def _real_geometric_peak(cfg, frames: int, size: int) -> tuple[float, float]:
    """The same geometric step on real CPU tensors of the real size, followed by the same tracker."""
    from model import VidLLM, VidLLMConfig
    from model.freezing import apply_freezing

    torch.manual_seed(0)
    model = VidLLM(VidLLMConfig.tiny()).train()
    apply_freezing(model, cfg.freeze.trainable, cfg.freeze.frozen)
    model.set_activation_checkpointing(**dataclasses.asdict(cfg.activation_checkpointing))
    step = _geometric_step(model, cfg, frames, (size // 14, size // 14), torch.float32)
    hooks = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
             for p in model.parameters() if p.requires_grad]
    tracker = _LiveBytes([*model.parameters(), *model.buffers()])
    with tracker:
        loss = step()
        saved = tracker.live
        loss.backward()
        del loss
    for hook in hooks:
        hook.remove()
    return saved, tracker.peak


@pytest.mark.parametrize(("stage", "checkpointing"), [(2, False), (2, True), (1, False)])
def test_the_extrapolated_fake_tensor_trace_matches_the_real_step(stage, checkpointing):
    """Traced on 2x2 and 4x4 patch grids with fake tensors, extrapolated to 8x8: the real step's bytes."""
    flags = [f"activation_checkpointing.{p}={str(checkpointing).lower()}"
             for p in ("encoder", "reconstruction", "heads", "llm")]
    cfg = resolve_config("tiny", ["loss.lm=0", "loss.box=0", *flags], stage=stage)  # geometric part only
    frames, size = 4, 112
    estimate = estimate_activations(_meta_model(cfg), cfg, StepShape(1, frames, size, size, 0), bf16=False)
    saved, peak = _real_geometric_peak(cfg, frames, size)
    assert peak > 2**21
    assert estimate.activations == pytest.approx(peak, rel=0.05), (estimate.activations, saved, peak)


def test_checkpointing_cuts_the_activations_of_an_activation_dominated_step():
    shape = StepShape(2, 8, 112, 112, 40)
    off = resolve_config("tiny", [], stage=2)
    on = resolve_config("tiny", [f"activation_checkpointing.{p}=true"
                                 for p in ("encoder", "reconstruction", "heads", "llm")], stage=2)
    a_off = estimate_activations(_meta_model(off), off, shape, bf16=False).activations
    a_on = estimate_activations(_meta_model(on), on, shape, bf16=False).activations
    assert a_on < 0.7 * a_off
    bigger = estimate_activations(_meta_model(off), off, StepShape(4, 8, 112, 112, 40), bf16=False).activations
    assert 1.6 * a_off < bigger < 2.0 * a_off  # saved activations double with the micro-batch


@pytest.fixture(scope="module")
def base_inputs(tmp_path_factory) -> dict[str, str]:
    """Shards at the paper's clip shape (32 frames of 378 x 518) and a Stage-1 export config of ``base()``."""
    from pipelines.train.synthetic_shards import write_synthetic_shards
    from tests.infra.test_dry_run import write_export_config

    root = tmp_path_factory.mktemp("base_recipe")
    manifest = write_synthetic_shards(str(root / "shards"), num_clips=16, num_shards=8, frames=32, size=378,
                                      width=518, geo_dim=1024, sem_dim=1024)
    write_export_config(root / "stage1", "base")
    return {"manifest": manifest, "init": str(root / "stage1"), "root": str(root)}


def _dry_run(argv: list[str], capsys) -> tuple[int, str, str]:
    from pipelines.train.__main__ import main

    capsys.readouterr()
    code = main([*argv, "--dry-run"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_the_base_stage2_recipe_fits_8_gpus_of_80_gb_and_without_checkpointing_it_does_not(base_inputs, capsys):
    root = Path(base_inputs["root"])
    sets = [f"data.manifest_uri={base_inputs['manifest']}", f"init_from={base_inputs['init']}",
            f"run.output_dir={root / 'out'}", f"run.storage_path={root / 'ray'}"]
    argv = ["--stage", "2", "--config", "stage2_base", *[a for s in sets for a in ("--set", s)]]
    code, out, err = _dry_run(argv, capsys)
    assert code == 0, err
    assert "8 ranks, ZeRO-3, micro-batch 2 x 32 frames of 378x518 (clip shape of the first sample)" in out
    assert "activation checkpointing: encoder, reconstruction, heads, llm" in out
    assert re.search(r"fits 78 GiB GPUs: \d+\.\d GiB headroom", out), out
    total = float(re.search(r"(\d+\.\d+) GiB per GPU at peak", out).group(1))
    assert 20 < total < 60, out
    assert json.loads(Path(base_inputs["init"], "config.json").read_text())["vidllm"]["llm"]["arch"]["hidden_size"] == 4096
    off = [*argv, *[a for p in ("encoder", "reconstruction", "heads", "llm")
                    for a in ("--set", f"activation_checkpointing.{p}=false")]]
    code, out, err = _dry_run(off, capsys)
    assert code == 2
    assert "'run.gpu_memory_gib'" in err and "does not fit 78 GiB" in err
    assert float(re.search(r"(\d+\.\d+) GiB per GPU at peak", out).group(1)) > 150
