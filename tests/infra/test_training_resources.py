"""The cluster files provision the GPUs the training presets are sized for and book exactly the workers they train
with: ``infra/k8s/rayjob-train.yaml``'s GPU pods hold every Ray Train worker of each command it runs (GPUs, CPUs
per worker), and both it and ``ray_cluster.yaml`` run on GPUs with the memory the presets' ``run.gpu_memory_gib``
(and the ``stage2_base`` recipe, checked by ``tests/train/test_memory.py``) assume."""

from __future__ import annotations

import shlex

import pytest
import yaml

from tests.conftest import REPO_ROOT

#: AWS instance types the files may name: GPUs, memory per GPU (GiB), vCPUs, host memory (GiB).
INSTANCES = {
    "p4de.24xlarge": {"gpus": 8, "gpu_gib": 80, "vcpus": 96, "mem_gib": 1152},
    "p5.48xlarge": {"gpus": 8, "gpu_gib": 80, "vcpus": 192, "mem_gib": 2048},
}


def _gib(quantity: str) -> float:
    units = {"Gi": 1, "Ti": 1024, "Mi": 1 / 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    raise ValueError(f"unknown memory quantity {quantity!r}")


def _train_job():
    (job,) = [d for d in yaml.safe_load_all((REPO_ROOT / "infra/k8s/rayjob-train.yaml").read_text()) if d]
    return job


def _train_configs(job) -> list:
    from pipelines.train.__main__ import build_parser
    from pipelines.train.config import resolve_config

    configs = []
    for part in job["spec"]["entrypoint"].split("&&"):
        argv = shlex.split(part)[3:]
        args = build_parser().parse_args(argv)
        configs.append(resolve_config(args.config, args.config_overrides or [], stage=args.stage))
    return configs


def _gpu_groups(job) -> list[dict]:
    groups = []
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)):
            groups.append({"replicas": group["replicas"], "min": group["minReplicas"], "max": group["maxReplicas"],
                           "gpus": int(limits["nvidia.com/gpu"]), "cpus": float(limits["cpu"]),
                           "mem_gib": _gib(limits["memory"]),
                           "instance": group["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]})
    return groups


def test_the_train_job_books_exactly_the_gpu_workers_every_command_trains_with():
    job = _train_job()
    groups = _gpu_groups(job)
    assert groups, "the train job needs a GPU worker group"
    booked = sum(g["replicas"] * g["gpus"] for g in groups)
    assert all(g["replicas"] == g["min"] == g["max"] for g in groups), "a fixed-size group: no idle GPUs booked"
    for cfg in _train_configs(job):
        assert cfg.run.use_gpu
        assert cfg.run.num_workers == booked, f"{cfg.run.name}: {cfg.run.num_workers} workers, {booked} GPUs booked"
        for g in groups:
            # Every worker a pod's GPUs take also finds its CPUs there (else Ray spreads them over more pods).
            assert g["gpus"] * cfg.run.cpus_per_worker <= g["cpus"], (cfg.run.name, g)


def test_the_train_job_pods_fit_their_nodes_and_have_the_gpu_memory_the_presets_assume():
    job = _train_job()
    configs = _train_configs(job)
    for g in _gpu_groups(job):
        node = INSTANCES[g["instance"]]
        assert g["gpus"] == node["gpus"] and g["cpus"] <= node["vcpus"] - 8 and g["mem_gib"] <= node["mem_gib"] - 64
        for cfg in configs:
            assert 0 < cfg.run.gpu_memory_gib <= node["gpu_gib"], cfg.run.name


@pytest.mark.parametrize("preset", ["stage1", "stage2", "stage2_base"])
def test_the_ray_cluster_gpu_nodes_hold_one_training_run_of_every_preset(preset):
    from pipelines.train.config import PRESETS

    cluster = yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text())
    node = INSTANCES[cluster["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"]]
    cfg = PRESETS[preset]()
    assert cfg.run.num_workers == node["gpus"], "one run fills one node"
    assert cfg.run.num_workers * cfg.run.cpus_per_worker <= node["vcpus"]
    assert 0 < cfg.run.gpu_memory_gib <= node["gpu_gib"]
