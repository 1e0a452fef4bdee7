"""The `vidllm` command: every subcommand's --help, and how `submit` builds a Ray job.

A real submission needs a Ray cluster with its dashboard's job agent. A second local cluster started beside the test
session's own one never got a job agent (its Jobs API answered "No available agent to submit job" for 120 s), so
that path is not run in the suite.
"""

from __future__ import annotations

import pytest

from pipelines.cli import STAGES, main
from pipelines.submit import build_runtime_env, entrypoint, parse_env


@pytest.mark.parametrize("command", [*STAGES, "submit"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in [*STAGES, "submit"]:
        assert command in out


def test_job_entrypoint_and_runtime_env():
    assert entrypoint("pipelines.train", ["--stage", "1", "--set", "a=b c"]) == (
        "python -m pipelines.train --stage 1 --set 'a=b c'"
    )
    env = build_runtime_env("/src", ["scipy"], ["MLFLOW_TRACKING_URI=http://m:5000"])
    assert env["working_dir"] == "/src" and ".venv" in env["excludes"] and env["pip"] == ["scipy"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://m:5000"
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert "working_dir" not in build_runtime_env(None, [], [])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_env(["NOVALUE"])
