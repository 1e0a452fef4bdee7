"""ray_cluster.yaml passes Ray's own cluster-launcher validation and describes the cluster we document."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    with open(REPO_ROOT / "ray_cluster.yaml") as f:
        return yaml.safe_load(f)


def _validate(config: dict) -> None:
    """What `ray up` does before launching: fill provider defaults, then validate against ray-schema.json."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_ray_validates_cluster_config(cluster_config):
    _validate(cluster_config)


def test_validation_rejects_a_broken_config(cluster_config):
    import jsonschema

    broken = copy.deepcopy(cluster_config)
    broken["available_node_types"]["gpu_worker"]["unknown_field"] = 1
    with pytest.raises(jsonschema.ValidationError, match="unknown_field"):
        _validate(broken)


def test_node_types_cover_ingest_and_gpu_work(cluster_config):
    types = cluster_config["available_node_types"]
    assert cluster_config["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0}, "the head schedules no tasks"
    assert "cpu_ingest" in types and "gpu_worker" in types
    for name in ("cpu_ingest", "gpu_worker"):
        assert 0 <= types[name]["min_workers"] <= types[name]["max_workers"]
    total_max = sum(t.get("max_workers", 0) for n, t in types.items() if n != "head")
    assert total_max <= cluster_config["max_workers"]


def test_container_image_and_environment(cluster_config):
    docker = cluster_config["docker"]
    assert docker["image"] == "ghcr.io/vidllm/vidllm:0.1.0"
    env_opts = " ".join(docker["run_options"])
    for var in ("MLFLOW_TRACKING_URI", "VIDLLM_STORAGE_ROOT", "HF_HUB_OFFLINE"):
        assert f"-e {var}=" in env_opts
    assert "AWS_SECRET_ACCESS_KEY" not in yaml.safe_dump(cluster_config), "credentials never live in the config"
