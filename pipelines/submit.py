"""Submit a pipeline stage to a Ray cluster as a Ray job (Ray Jobs SDK)."""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence

from pipelines.config import UsageError

#: Environment every job gets: no hub downloads, no usage reporting. Credentials are never put here: the cluster's
#: nodes get them from their instance profile / Kubernetes secrets.
JOB_ENV = {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
#: Paths never shipped with a working_dir: environments, caches and local outputs.
WORKING_DIR_EXCLUDES = [".venv", ".git", "**/__pycache__", "*.egg-info", "vidllm_demo", "outputs", "mlruns", "*.db"]


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ``["KEY=VALUE", ...]`` into a dict, with a clear error for a malformed pair."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def build_runtime_env(working_dir: str | None, pip: Sequence[str], env: Sequence[str]) -> dict:
    """The job's Ray runtime environment: optional working_dir (with excludes), pip extras, env vars."""
    runtime_env: dict = {"env_vars": {**JOB_ENV, **parse_env(env)}}
    if working_dir:
        runtime_env["working_dir"] = working_dir
        runtime_env["excludes"] = list(WORKING_DIR_EXCLUDES)
    if pip:
        runtime_env["pip"] = list(pip)
    return runtime_env


def entrypoint(module: str, job_args: Sequence[str]) -> str:
    """The shell command the job runs on the cluster: the same module line as a local run."""
    return shlex.join(["python", "-m", module, *job_args])


def submit_job(
    *,
    job: str,
    module: str,
    job_args: Sequence[str],
    address: str,
    working_dir: str | None,
    pip: Sequence[str],
    env: Sequence[str],
    submission_id: str | None,
    wait: bool,
) -> int:
    """Submit the job; when ``wait``, stream its logs and return 0 only if it succeeded.

    Raises:
        UsageError: the Ray dashboard at ``address`` does not answer, or refuses the job.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    runtime_env = build_runtime_env(working_dir, pip, env)
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, ValueError) as err:
        raise UsageError(f"--address {address}: cannot reach the Ray dashboard ({err}): give the head node's "
                         "dashboard address, e.g. --address http://HEAD:8265, and check that the cluster is up") from None
    job_id = client.submit_job(
        entrypoint=entrypoint(module, job_args),
        runtime_env=runtime_env,
        submission_id=submission_id,
        metadata={"vidllm_job": job},
    )
    print(f"submitted {job} as {job_id} to {address}")
    if not wait:
        return 0
    seen = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        print(logs[seen:], end="", flush=True)
        seen = len(logs)
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            print(f"job {job_id}: {status.value}")
            return 0 if status == JobStatus.SUCCEEDED else 1
        time.sleep(2.0)
