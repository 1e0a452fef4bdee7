"""The README's two commands: CI runs exactly its test command, and the main-job command names a real subcommand."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT


def _shell_lines() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    return [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]


def test_ci_runs_exactly_the_readme_test_command():
    ci = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    test_command = next(line for line in _shell_lines() if line.endswith("-m pytest"))
    assert test_command in ci, f".ci/run does not run the README's test command {test_command!r}"
    assert ci[-1] == test_command  # the last step, so its exit status is CI's


def test_the_main_job_command_runs_the_demo_after_installing():
    main_command = next(line for line in _shell_lines() if "vidllm demo" in line)
    assert main_command.startswith("python3 -m venv .venv && .venv/bin/pip install \"torch==2.13.0\"")
    assert main_command.endswith(".venv/bin/vidllm demo")
