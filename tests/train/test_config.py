"""Unit tests of the training config: presets, files, overrides and validation errors."""

from __future__ import annotations

import json

import pytest

from pipelines.train.config import ConfigError, TrainConfig, apply_overrides, resolve_config, tiny
from pipelines.train.deepspeed_config import build_deepspeed_config


def test_tiny_preset_round_trips_through_dict_and_file(tmp_path):
    cfg = tiny(1)
    as_json = json.loads(json.dumps(cfg.to_dict()))
    again = TrainConfig.from_dict(as_json)
    assert json.loads(json.dumps(again.to_dict())) == as_json
    assert again.data == cfg.data and again.optim == cfg.optim and again.run == cfg.run
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg.to_dict()))
    loaded = resolve_config(str(path), ["deepspeed.zero_stage=3", "optim.lr=1e-3", "data.task_mix={qa: 1.0}"])
    assert loaded.deepspeed.zero_stage == 3
    assert loaded.optim.lr == pytest.approx(1e-3)
    assert loaded.data.task_mix == {"qa": 1.0}
    assert loaded.optim.betas == (0.9, 0.999)


def test_yaml_file_and_stage_flag(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("stage: 1\nmodel: {}\nschedule:\n  max_steps: 7\n")
    cfg = resolve_config(str(path), ["init_from=/x/model"], stage=2)
    assert cfg.stage == 2 and cfg.schedule.max_steps == 7 and cfg.init_from == "/x/model"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["deepspeed.zero_stage=4"], "deepspeed.zero_stage"),
        (["data.task_mix={qa: 0, caption: 0}"], "data.task_mix"),
        (["data.task_mix={chat: 1.0}"], "data.task_mix"),
        (["optim.lr=-1"], "optim.lr"),
        (["run.num_checkpoints_to_keep=1"], "run.num_checkpoints_to_keep"),
        (["schedule.nonsense=1"], "schedule.nonsense"),
    ],
)
def test_bad_fields_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        resolve_config("tiny", overrides, stage=1)


def test_stage2_needs_init_from_and_run_paths():
    with pytest.raises(ConfigError, match="init_from"):
        resolve_config("tiny", ["init_from="], stage=2)
    cfg = resolve_config("tiny", [], stage=2)
    with pytest.raises(ConfigError, match="data.manifest_uri"):
        cfg.validate_for_run()
    cfg = resolve_config("tiny", ["data.manifest_uri=m", "run.output_dir=o", "run.storage_path=s"], stage=2)
    with pytest.raises(ConfigError, match="placeholder"):
        cfg.validate_for_run()


def test_unknown_preset_or_missing_file():
    with pytest.raises(ConfigError, match="neither a preset"):
        resolve_config("/no/such/file.yaml")


def test_override_creates_nested_model_keys():
    tree = apply_overrides({"model": {}}, ["model.llm.arch.hidden_size=32"])
    assert tree == {"model": {"llm": {"arch": {"hidden_size": 32}}}}


def test_deepspeed_config_from_train_config():
    cfg = resolve_config("tiny", ["deepspeed.zero_stage=3", "deepspeed.grad_accum_steps=4"], stage=1)
    ds = build_deepspeed_config(cfg, world_size=2, on_gpu=False)
    assert ds["train_batch_size"] == cfg.data.micro_batch_size * 4 * 2
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["gradient_clipping"] == 1.0 and ds["zero_allow_untested_optimizer"] is True
    assert ds["bf16"]["enabled"] is False
    auto = resolve_config("tiny", ["deepspeed.precision=auto"], stage=1)
    assert build_deepspeed_config(auto, 8, on_gpu=True)["bf16"]["enabled"] is True
    assert build_deepspeed_config(auto, 8, on_gpu=False)["bf16"]["enabled"] is False


def test_override_values_read_exponent_floats_as_numbers():
    tree = apply_overrides({}, ["model.llm.arch.rms_norm_eps=1e-05", "optim.lr=3E-4", "run.name=1e5x", "a=[1e-3, 2]"])
    assert tree["model"]["llm"]["arch"]["rms_norm_eps"] == pytest.approx(1e-5)
    assert isinstance(tree["model"]["llm"]["arch"]["rms_norm_eps"], float)
    assert tree["optim"]["lr"] == pytest.approx(3e-4) and tree["run"]["name"] == "1e5x"
    assert tree["a"] == [pytest.approx(1e-3), 2]
