"""The deployment files parse, carry their required fields, and agree with the CLI and with each other.

Every job command in a manifest is run through the real argument parser (and config resolution) of the stage it
names, so a renamed flag or config key breaks this test instead of a cluster job.
"""

from __future__ import annotations

import importlib
import re
import shlex

import pytest
import yaml

from tests.conftest import REPO_ROOT

INFRA = REPO_ROOT / "infra"
K8S = INFRA / "k8s"


def _cluster_image() -> str:
    return yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text())["docker"]["image"]


def _load_all(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _containers(doc: dict) -> list[dict]:
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _stage_commands(entrypoint: str) -> list[tuple[str, list[str]]]:
    """Split ``python -m pipelines.X ... && python -m pipelines.Y ...`` into (module, argv) pairs."""
    commands = []
    for part in entrypoint.split("&&"):
        argv = shlex.split(part)
        assert argv[:2] == ["python", "-m"], f"job step must be `python -m pipelines.<stage>`: {part!r}"
        commands.append((argv[2], argv[3:]))
    return commands


def _check_command(module: str, argv: list[str]):
    """Parse ``argv`` with the stage's real parser and resolve its config (every stage has the same two steps)."""
    main = importlib.import_module(f"{module}.__main__")
    args = main.build_parser().parse_args(argv)
    if module == "pipelines.train":
        from pipelines.train.config import resolve_config

        return resolve_config(args.config, args.config_overrides or [], stage=args.stage)
    return main.resolve_config(args)


@pytest.mark.parametrize("name", ["rayjob-ingest.yaml", "rayjob-train.yaml"])
def test_rayjobs_run_real_cli_commands(name):
    (job,) = _load_all(name)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    commands = _stage_commands(job["spec"]["entrypoint"])
    assert commands, "a RayJob needs an entrypoint"
    for module, argv in commands:
        _check_command(module, argv)
    assert {c["image"] for c in _containers(job)} == {_cluster_image()}


def test_ingest_job_runs_ingest_then_teachers():
    (job,) = _load_all("rayjob-ingest.yaml")
    modules = [m for m, _ in _stage_commands(job["spec"]["entrypoint"])]
    assert modules == ["pipelines.ingest", "pipelines.teachers"]


def test_train_job_runs_stage1_then_stage2_from_stage1_output():
    (job,) = _load_all("rayjob-train.yaml")
    (m1, a1), (m2, a2) = _stage_commands(job["spec"]["entrypoint"])
    assert m1 == m2 == "pipelines.train"
    c1, c2 = _check_command(m1, a1), _check_command(m2, a2)
    assert (c1.stage, c2.stage) == (1, 2)
    assert str(c2.init_from).startswith(str(c1.run.output_dir)), "Stage 2 must start from Stage 1's export"


def test_rayservice_uses_the_serve_config():
    (svc,) = _load_all("rayservice.yaml")
    assert svc["kind"] == "RayService"
    embedded = yaml.safe_load(svc["spec"]["serveConfigV2"])
    local = yaml.safe_load((REPO_ROOT / "pipelines/serve/serve_config.yaml").read_text())
    # The only intended difference: the cluster binds the pod network instead of loopback.
    assert embedded["http_options"]["host"] == "0.0.0.0"
    embedded["http_options"]["host"] = local["http_options"]["host"]
    for app in embedded["applications"]:
        app["args"]["http"]["host"] = local["applications"][0]["args"]["http"]["host"]
    assert embedded == local
    from pipelines.serve.config import ServeConfig

    (app,) = embedded["applications"]
    ServeConfig.from_dict(app["args"])
    module, _, attr = app["import_path"].partition(":")
    assert hasattr(importlib.import_module(module), attr)
    assert {c["image"] for c in _containers(svc)} == {_cluster_image()}
    token_env = app["args"]["auth_token_env"]
    workers = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    worker_env = {e["name"] for g in workers for c in g["template"]["spec"]["containers"] for e in c.get("env", [])}
    assert token_env in worker_env, "the bearer-token secret must reach the replicas"


def test_mlflow_server_has_database_backend_and_object_storage_artifacts():
    docs = {(d["kind"], d["metadata"]["name"]) for d in _load_all("mlflow.yaml")}
    assert {("Deployment", "mlflow"), ("Service", "mlflow")} <= docs
    deployment = next(d for d in _load_all("mlflow.yaml") if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mlflow", "server"]
    args = dict(a.lstrip("-").split("=", 1) for a in container["args"] if "=" in a)
    assert args["artifacts-destination"].startswith("s3://")
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["BACKEND_STORE_URI"]["valueFrom"], "the database URI is a secret"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    # Jobs and the RayService point at this Service.
    service_url = "http://mlflow.vidllm.svc:5000"
    for name in ("rayjob-train.yaml", "rayservice.yaml"):
        assert service_url in (K8S / name).read_text()


def test_dockerfile_builds_the_project_image():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    instructions = [ln.split()[0] for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert instructions[0] == "ARG" and "FROM" in instructions
    assert re.search(r"pip install [^\n]*\"\.\[cluster\]\"", text), "the image installs the project with its extras"
    for package in ("model", "pipelines", "pyproject.toml"):
        assert re.search(rf"^COPY .*{re.escape(package)}", text, re.M), f"{package} must be copied into the image"
    assert _cluster_image() in text, "the documented build tag is the image the cluster runs"
