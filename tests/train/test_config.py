"""Unit tests of the training config: presets, files, overrides and validation errors."""

from __future__ import annotations

import json

import pytest

from pipelines.config import ConfigError, parse_override, set_key
from pipelines.train.config import TrainConfig, resolve_config, tiny
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
    cfg = resolve_config("tiny", [], stage=2)
    problems = cfg.run_problems()
    assert [p.split("'")[1] for p in problems] == ["data.manifest_uri", "run.output_dir", "run.storage_path",
                                                    "init_from"]
    assert all("--set" in p for p in problems)
    with pytest.raises(ConfigError, match="data.manifest_uri"):
        cfg.validate_for_run()
    cfg = resolve_config("tiny", ["data.manifest_uri=m", "run.output_dir=o", "run.storage_path=s"], stage=2)
    with pytest.raises(ConfigError, match="init_from.*Stage 2 starts from a Stage-1 model"):
        cfg.validate_for_run()
    resolve_config("tiny", ["data.manifest_uri=m", "run.output_dir=o", "run.storage_path=s", "init_from=/m"],
                   stage=2).validate_for_run()


def test_stage_policy_lives_in_the_presets_and_can_be_overridden():
    s1, s2 = resolve_config("stage1", stage=1), resolve_config("stage2", stage=2)
    assert (s1.loss.geo, s1.loss.lang, s1.loss.sc, s1.loss.lm) == (1.0, 1.0, 1.0, 0.0)
    assert (s2.loss.camera, s2.loss.depth, s2.loss.metric_depth, s2.loss.lm, s2.loss.box, s2.loss.geo) == (
        5.0, 1.0, 1.0, 1.0, 1.0, 0.0)
    assert s1.freeze.trainable == ("encoder.*", "adapter.*", "distill.*") and s1.freeze.frozen == ()
    assert s2.freeze.frozen == ("encoder.*", "distill.*")
    assert tiny(1).loss == s1.loss and tiny(2).freeze == s2.freeze
    cfg = resolve_config("stage2", ["loss.box=2", "freeze.frozen=[encoder.*]", "loss.camera_gamma=0.8"], stage=2)
    assert cfg.loss.box == 2.0 and cfg.freeze.frozen == ("encoder.*",) and cfg.loss.camera_gamma == 0.8
    with pytest.raises(ConfigError, match="loss.bogus"):
        resolve_config("stage2", ["loss.bogus=1"], stage=2)
    off = resolve_config("tiny", [f"loss.{w}=0" for w in ("geo", "lang", "sc")], stage=1)
    assert any("every loss weight" in p for p in off.run_problems())
    assert "freezing" not in json.dumps(s1.model), "the model config describes architecture only"


def test_a_preset_of_the_other_stage_is_refused():
    with pytest.raises(ConfigError, match="--config stage2"):
        resolve_config("stage1", stage=2)


def test_unknown_preset_or_missing_file():
    with pytest.raises(ConfigError, match="neither a preset"):
        resolve_config("/no/such/file.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.micro_batch_size=two", "'data.micro_batch_size': expected an integer, got 'two'"),
        ("data.micro_batch_size=2.5", "'data.micro_batch_size': expected an integer"),
        ("run.use_gpu=maybe", "'run.use_gpu': expected true or false"),
        ("optim.betas=[0.9]", "'optim.betas': expected a list of 2 values"),
        ("data=3", "'data': expected a mapping"),
    ],
)
def test_values_are_coerced_or_refused_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        resolve_config("tiny", [override], stage=1)
    assert resolve_config("tiny", ["data.micro_batch_size='3'"], stage=1).data.micro_batch_size == 3


def test_override_creates_nested_model_keys():
    tree = {"model": {}}
    set_key(tree, "model.llm.arch.hidden_size", 32)
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
    tree: dict = {}
    for text in ["model.llm.arch.rms_norm_eps=1e-05", "optim.lr=3E-4", "run.name=1e5x", "a=[1e-3, 2]"]:
        set_key(tree, *parse_override(text))
    assert tree["model"]["llm"]["arch"]["rms_norm_eps"] == pytest.approx(1e-5)
    assert isinstance(tree["model"]["llm"]["arch"]["rms_norm_eps"], float)
    assert tree["optim"]["lr"] == pytest.approx(3e-4) and tree["run"]["name"] == "1e5x"
    assert tree["a"] == [pytest.approx(1e-3), 2]
