"""The one configuration mechanism of every stage (:mod:`pipelines.config`): types coerced or refused naming the
field, unknown keys named, presets and YAML/JSON files layered, ``--set`` and shortcut flags in command-line order,
and one resume-hash rule under which a new field cannot be silently left out."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from pipelines.config import (
    CliParser,
    ConfigError,
    ConfigSpec,
    alias,
    content_hash,
    run_cli,
    scheduling,
    scheduling_fields,
)
from pipelines.demo.run import SPEC as DEMO
from pipelines.eval.config import SPEC as EVAL
from pipelines.ingest.config import SPEC as INGEST
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.synthetic.__main__ import SPEC as SYNTHETIC
from pipelines.serve.config import SPEC as SERVE
from pipelines.teachers.config import SPEC as TEACHERS
from pipelines.teachers.config import TeachersConfig
from pipelines.train.config import spec as train_spec

TEACHER_PATHS = {"geometry_teacher": "s3://w/geo", "semantic_teacher": "s3://w/sem"}
#: Every stage's spec and a tree its required fields need.
STAGES = {"ingest": (INGEST, {}), "teachers": (TEACHERS, TEACHER_PATHS), "eval": (EVAL, {}),
          "serve": (SERVE, {"model_uri": "/m"}), "synthetic": (SYNTHETIC, {"out": "/o", "num_scenes": 1}),
          "demo": (DEMO, {}), "train": (train_spec(1), {})}


def test_a_string_where_a_number_belongs_is_coerced_from_a_file(tmp_path):
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps({"frames_per_clip": "32", "target_shard_bytes": "1e6", "keep_staging": "true"}))
    cfg = INGEST.load(str(path))
    assert (cfg.frames_per_clip, cfg.target_shard_bytes, cfg.keep_staging) == (32, 1_000_000, True)
    path.write_text(json.dumps({"frames_per_clip": "thirty-two"}))
    with pytest.raises(ConfigError, match=r"^ingest config field 'frames_per_clip': expected an integer, got "
                                          r"'thirty-two'$"):
        INGEST.load(str(path))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_names_unknown_keys_and_round_trips_its_presets(stage):
    spec, needed = STAGES[stage]
    with pytest.raises(ConfigError, match=f"{spec.name} config: unknown field 'no_such_field'"):
        spec.load(None, [*(f"{k}={v}" for k, v in needed.items()), "no_such_field=1"])
    for preset in spec.presets:
        cfg = spec.load(preset, [f"{k}={v}" for k, v in needed.items()])
        assert spec.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg), default=list))) == cfg
    assert spec.describe().count("\n") >= 3


def test_yaml_files_layer_over_presets_and_set_flags_apply_in_order(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("model:\n  max_batch_size: 2\n  autoscaling: {max_replicas: 5}\nhttp: {port: 9000}\n")
    parser = CliParser(prog="t")
    group = SERVE.add_arguments(parser)
    alias(group, "--port", "http.port", type=int, help="port")
    alias(group, "--allowed-prefix", "allowed_uri_prefixes", append=True, help="prefix")
    args = parser.parse_args(["--config", "tiny", "--config", str(path), "--port", "9100", "--set", "http.port=9200",
                              "--allowed-prefix", "s3://a/", "--allowed-prefix", "s3://b/", "--set", "model_uri=/m"])
    cfg = SERVE.resolve(args)
    assert cfg.device == "cpu" and cfg.model.num_gpus == 0.0  # from the tiny preset
    assert cfg.model.max_batch_size == 2 and cfg.model.autoscaling.max_replicas == 5  # the file over the preset
    assert cfg.model.autoscaling.min_replicas == 1 and cfg.http.port == 9200  # later --set wins over --port
    assert cfg.allowed_uri_prefixes == ("s3://a/", "s3://b/")


def test_a_bad_set_is_one_usage_line(capsys):
    parser = CliParser(prog="t")
    INGEST.add_arguments(parser)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--set", "no-equals-sign"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected KEY=VALUE" in err

    def main() -> int:
        INGEST.load(None, ["frames_per_clip=0"])
        return 0

    assert run_cli(main, "t") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("t: error: ingest config: frames_per_clip")


def test_the_resume_hash_excludes_only_declared_scheduling_fields():
    assert scheduling_fields(IngestConfig) == ["write_sens_index", "num_cpus_per_task", "concurrency",
                                               "scenes_per_task", "keep_staging"]
    assert scheduling_fields(TeachersConfig) == [
        "geometry.num_gpus", "geometry.num_cpus", "geometry.batch_size", "geometry.concurrency",
        "semantic.num_gpus", "semantic.num_cpus", "semantic.batch_size", "semantic.concurrency",
        "cache_dir", "io_num_cpus", "io_concurrency", "keep_staging"]
    tiny = IngestConfig.tiny()
    assert dataclasses.replace(tiny, concurrency=3).hash() == tiny.hash()
    assert dataclasses.replace(tiny, resize_to=70).hash() != tiny.hash()
    teachers = TeachersConfig.tiny("g", "s")
    pool = dataclasses.replace(teachers.geometry, concurrency=4, dtype="bfloat16")
    assert dataclasses.replace(teachers, geometry=dataclasses.replace(pool, dtype="float32")).hash() == \
        teachers.hash()
    assert dataclasses.replace(teachers, geometry=pool).hash() != teachers.hash()


@pytest.mark.parametrize(("cls", "name", "needed"), [(IngestConfig, "ingest", {}),
                                                      (TeachersConfig, "teachers", TEACHER_PATHS)])
def test_a_new_field_is_one_declaration_away_from_the_cli_the_saved_config_and_the_hash(cls, name, needed):
    """Adding a field is a one-place change: declare it, and ``--set``, ``--help``, the saved config and the resume
    hash all have it; a field declared with ``scheduling`` stays out of the hash."""
    extended = dataclasses.make_dataclass(
        f"Extended{cls.__name__}",
        [("new_knob", int, dataclasses.field(default=3)), ("new_workers", int, scheduling(1))],
        bases=(cls,), frozen=True)
    extended.__doc__ = cls.__doc__
    spec = ConfigSpec(extended, name, {"default": dict})
    parser = argparse.ArgumentParser()
    spec.add_arguments(parser)
    base = [f"{k}={v}" for k, v in needed.items()]

    def load(*sets: str):
        args = parser.parse_args([item for s in [*base, *sets] for item in ("--set", s)])
        return spec.resolve(args)

    default, changed, rescheduled = load(), load("new_knob=5"), load("new_workers=8")
    assert changed.new_knob == 5 and changed.to_dict()["new_knob"] == 5
    assert content_hash(changed) != content_hash(default)
    assert content_hash(rescheduled) == content_hash(default) and rescheduled.new_workers == 8
    assert "new_knob = 3" in spec.describe() and "new_workers* = 1" in spec.describe()
    with pytest.raises(ConfigError, match="'new_knob': expected an integer, got 'many'"):
        load("new_knob=many")


def test_ingest_min_valid_frames_follows_frames_per_clip_unless_set():
    assert INGEST.load(None, ["frames_per_clip=64"]).min_valid_frames == 64
    assert INGEST.load("tiny").min_valid_frames == 6
    with pytest.raises(ConfigError, match="min_valid_frames"):
        INGEST.load(None, ["frames_per_clip=8", "min_valid_frames=4"])


def test_cli_shortcuts_are_the_same_as_set(tmp_path):
    from pipelines.eval.__main__ import build_parser as eval_parser
    from pipelines.ingest.__main__ import build_parser as ingest_parser
    from pipelines.teachers.__main__ import build_parser as teachers_parser

    ingest = ingest_parser().parse_args(["--scenes", "s", "--out", "o", "--tiny", "--short-side", "70",
                                         "--target-shard-mb", "2", "--resize-side", "long"])
    cfg = INGEST.resolve(ingest)
    assert (cfg.resize_to, cfg.target_shard_bytes, cfg.resize_side, cfg.frame_codec) == (70, 2 * 1024**2, "long",
                                                                                         "npy")
    teachers = teachers_parser().parse_args(["--clips", "c", "--out", "o", "--geometry-teacher", "g",
                                             "--semantic-teacher", "s", "--dtype", "bfloat16",
                                             "--set", "semantic.dtype=float16"])
    cfg = TEACHERS.resolve(teachers)
    assert (cfg.geometry.dtype, cfg.semantic.dtype) == ("bfloat16", "float16")
    evaluation = eval_parser().parse_args(["--model", "m", "--data", "d", "--tasks", "scanqa, sqa3d", "--no-meteor",
                                           "--no-plots", "--max-queries", "2"])
    cfg = EVAL.resolve(evaluation)
    assert cfg.tasks == ("scanqa", "sqa3d") and cfg.protocol.meteor is False and cfg.plots is False
    assert cfg.max_queries_per_task == 2
