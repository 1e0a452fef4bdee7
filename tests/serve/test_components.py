"""Fast checks of the Serve building blocks without Ray: config validation, URI allow-list, auth, byte-bounded
cache, point-cloud geometry and PLY, encoding batching and video sampling limits (model URIs: tests/test_artifacts.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipelines.serve.cache import ByteLRU
from pipelines.serve.config import AutoscalingConfig, LimitsConfig, ModelDeploymentConfig, ServeConfig
from pipelines.serve.errors import ApiError
from pipelines.serve.model_deployment import concat_encodings
from pipelines.serve.pointcloud import backproject, camera_centres, to_ply
from pipelines.serve.security import BearerAuth, check_scene_uri
from pipelines.serve.video_input import SamplingSpec, sample_clip, scene_id_for
from tests.conftest import REPO_ROOT
from tests.serve.ply import read_ply

PREFIXES = ("s3://scenes/public/",)


# ---------------------------------------------------------------- config


def test_config_roundtrip_and_serve_options():
    cfg = ServeConfig.tiny("s3://models/vidllm", allowed_uri_prefixes=PREFIXES)
    again = ServeConfig.from_dict(cfg.to_dict())
    assert again == cfg
    scaling = cfg.model.autoscaling.to_serve()
    assert scaling["min_replicas"] == 1 and scaling["max_replicas"] == 2 and scaling["upscale_delay_s"] == 1.0
    assert "metrics_interval_s" not in AutoscalingConfig().to_serve()
    assert cfg.http.to_serve() == {"host": "127.0.0.1", "port": 8000, "request_timeout_s": 60.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_uri": ""}, "model_uri"),
        ({"allowed_uri_prefixes": ("file:///data/",)}, "allowed_uri_prefixes"),
        ({"allowed_uri_prefixes": ("s3://bucket/dir",)}, "must end with '/'"),
        ({"device": "tpu"}, "device"),
        ({"device": "cuda", "model": ModelDeploymentConfig(num_gpus=0.0)}, "num_gpus"),
        ({"model": {"max_ongoing_requests": 2, "max_batch_size": 4, "num_gpus": 0.0}}, "max_batch_size"),
        ({"limits": {"num_frames": 0}}, "limits.num_frames"),
        ({"http": {"port": 70000}}, "http.port"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    values = {"model_uri": "/models/x", "device": "cpu", "model": ModelDeploymentConfig(num_gpus=0.0)}
    values.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ServeConfig(**values)


def test_autoscaling_bounds_and_unknown_keys():
    with pytest.raises(ValueError, match="max_replicas"):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="min_replicas"):
        AutoscalingConfig(min_replicas=0)
    with pytest.raises(ValueError, match="unknown field 'modle'"):
        ServeConfig.from_dict({"model_uri": "/m", "modle": {}})


# ---------------------------------------------------------------- security


def test_allowed_uri_passes():
    assert check_scene_uri("s3://scenes/public/a/scene0000_00.mp4", PREFIXES, 200) == (
        "s3://scenes/public/a/scene0000_00.mp4"
    )


@pytest.mark.parametrize(
    ("uri", "status", "error"),
    [
        ("file:///etc/passwd", 400, "unsupported_uri_scheme"),
        ("FILE:///etc/passwd", 400, "unsupported_uri_scheme"),
        ("http://169.254.169.254/latest/meta-data", 400, "unsupported_uri_scheme"),
        ("/etc/passwd", 400, "unsupported_uri_scheme"),
        ("../../etc/passwd", 400, "unsupported_uri_scheme"),
        ("s3://scenes/public/../private/a.mp4", 400, "path_traversal"),
        ("s3://scenes/public/./a.mp4", 400, "path_traversal"),
        ("s3://scenes/public/%2E%2E/private/a.mp4", 400, "path_traversal"),
        ("s3://scenes/public/..%2fprivate/a.mp4", 400, "path_traversal"),
        ("s3://scenes/public/%252e%252e/a.mp4", 400, "path_traversal"),
        ("s3://scenes/public//a.mp4", 400, "invalid_uri"),
        ("s3://scenes/public/", 400, "invalid_uri"),
        ("s3://scenes/public/a b.mp4", 400, "invalid_uri"),
        ("s3://scenes/public/a\\b.mp4", 400, "invalid_uri"),
        ("s3://scenes/publicity/a.mp4", 403, "uri_not_allowed"),
        ("gs://scenes/public/a.mp4", 403, "uri_not_allowed"),
        ("s3://scenes/public/" + "a" * 300, 422, "invalid_uri"),
        (42, 422, "invalid_uri"),
    ],
)
def test_refused_uris(uri, status, error):
    with pytest.raises(ApiError) as info:
        check_scene_uri(uri, PREFIXES, 200)
    assert (info.value.status, info.value.error, info.value.field) == (status, error, "uri")


def test_bearer_auth(monkeypatch):
    assert not BearerAuth(None).enabled
    BearerAuth(None).check(None)
    monkeypatch.delenv("VIDLLM_UNIT_TOKEN", raising=False)
    with pytest.raises(RuntimeError, match="VIDLLM_UNIT_TOKEN"):
        BearerAuth("VIDLLM_UNIT_TOKEN")
    monkeypatch.setenv("VIDLLM_UNIT_TOKEN", "abc123")
    auth = BearerAuth("VIDLLM_UNIT_TOKEN")
    auth.check("Bearer abc123")
    for header in (None, "", "Bearer", "Bearer abc124", "Token abc123", "bearer abc1234"):
        with pytest.raises(ApiError) as info:
            auth.check(header)
        assert info.value.status == 401 and info.value.headers == {"WWW-Authenticate": "Bearer"}


# ---------------------------------------------------------------- cache


def test_byte_lru_evicts_least_recent_by_bytes():
    cache: ByteLRU[np.ndarray] = ByteLRU(capacity_bytes=1000)
    for key in "abc":
        assert cache.put(key, np.zeros(300, np.uint8))
    assert cache.get("a") is not None  # a is now most recent
    cache.put("d", np.zeros(300, np.uint8))  # evicts b
    assert cache.get("b") is None and "a" in cache and "c" in cache and "d" in cache
    assert cache.size_bytes == 900
    assert not cache.put("huge", np.zeros(1001, np.uint8)) and "huge" not in cache
    cache.put("a", np.zeros(100, np.uint8))  # refresh with a smaller value
    assert cache.size_bytes == 700
    stats = cache.stats()
    assert stats["evictions"] == 1 and stats["hits"] == 1 and stats["misses"] == 1 and stats["entries"] == 3


def test_concat_encodings_pads_scene_tokens():
    from model import SceneEncoding

    def enc(m: int, fill: float) -> SceneEncoding:
        return SceneEncoding(
            tokens=torch.full((1, m, 8), fill), mask=torch.ones(1, m, dtype=torch.bool),
            centres=torch.full((1, m, 3), fill), depth=torch.ones(1, 2, 4, 4), extrinsics=torch.zeros(1, 2, 3, 4),
            intrinsics=torch.eye(3).expand(1, 2, 3, 3), scale=torch.tensor([fill]),
        )

    batch = concat_encodings([enc(3, 1.0), enc(5, 2.0)])
    assert batch.tokens.shape == (2, 5, 8) and batch.depth.shape == (2, 2, 4, 4)
    assert batch.mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert torch.equal(batch.tokens[0, 3:], torch.zeros(2, 8)) and batch.scale.tolist() == [1.0, 2.0]


# ---------------------------------------------------------------- geometry


def test_backproject_and_trajectory_known_geometry():
    k = np.array([[2.0, 0, 1.5], [0, 2.0, 1.5], [0, 0, 1]])
    depth = np.full((2, 4, 4), 2.0)
    depth[1, 0, 0] = 0.0  # invalid pixel
    ext = np.zeros((2, 3, 4))
    ext[:, :, :3] = np.eye(3)
    ext[1, :, 3] = [-1.0, 0.0, 0.0]  # second camera centre at x = +1 m
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    frames[1] = 200
    xyz, rgb = backproject(depth, ext, np.stack([k, k]), frames, max_points=100)
    assert xyz.shape == (31, 3) and rgb.shape == (31, 3)
    assert np.allclose(xyz[:, 2], 2.0)
    first = xyz[:16]
    assert np.allclose(first[0], [(0 - 1.5) / 2 * 2, (0 - 1.5) / 2 * 2, 2.0])
    assert np.allclose(xyz[16:, 0] - 1.0, np.delete(first[:, 0], 0))  # shifted by the camera offset
    assert (rgb[:16] == 0).all() and (rgb[16:] == 200).all()
    assert np.allclose(camera_centres(ext), [[0, 0, 0], [1, 0, 0]])
    capped, _ = backproject(depth, ext, np.stack([k, k]), frames, max_points=10)
    assert capped.shape == (10, 3)


def test_ply_roundtrip_and_truncation():
    xyz = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    rgb = np.arange(21, dtype=np.uint8).reshape(7, 3)
    data = to_ply(xyz, rgb)
    assert b"element vertex 7\n" in data and b"binary_little_endian" in data
    back_xyz, back_rgb = read_ply(data)
    assert np.array_equal(back_xyz, xyz) and np.array_equal(back_rgb, rgb)
    with pytest.raises(Exception, match="early end-of-file"):
        read_ply(data[:-1])


# ---------------------------------------------------------------- video


def test_sample_clip_and_limits(clips):
    spec = SamplingSpec(num_frames=4, height=28, width=28)
    limits = LimitsConfig(max_upload_bytes=300_000, max_duration_s=5.0, max_source_frames=100)
    clip = sample_clip(clips["ok"], spec, limits)
    assert clip.frames.shape == (4, 28, 28, 3) and clip.frames.dtype == np.uint8
    assert clip.num_source_frames == 12 and abs(clip.duration_s - 1.0) < 0.1
    assert scene_id_for(clips["ok"], spec) != scene_id_for(clips["ok"], SamplingSpec(8, 28, 28))
    assert scene_id_for(clips["ok"], spec) == scene_id_for(bytes(clips["ok"]), spec)
    for data, status, error in (
        (b"", 400, "empty_video"),
        (b"GIF89a not a video", 422, "unsupported_container"),
        (b"not a video, not even a GIF", 422, "invalid_video"),
        (clips["ok"][: len(clips["ok"]) // 2], 422, "truncated_video"),
        (clips["long"], 422, "video_too_long"),
        (clips["many"], 422, "video_too_long"),
        (b"\0" * 300_001, 413, "video_too_large"),
    ):
        with pytest.raises(ApiError) as info:
            sample_clip(data, spec, limits)
        assert (info.value.status, info.value.error, info.value.field) == (status, error, "video")


# ---------------------------------------------------------------- config files and CLI


def test_shipped_serve_config_file_is_valid():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from pipelines.serve.app import app_builder

    data = yaml.safe_load((REPO_ROOT / "pipelines/serve/serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(data)
    assert schema.applications[0].import_path == "pipelines.serve.app:app_builder"
    cfg = ServeConfig.from_dict(data["applications"][0]["args"])
    assert cfg.http.to_serve() == data["http_options"]
    assert type(app_builder(data["applications"][0]["args"])).__name__ == "Application"


def test_cli_export_matches_flags(tmp_path):
    import subprocess
    import sys

    import yaml

    out = tmp_path / "serve.yaml"
    subprocess.run(
        [sys.executable, "-m", "pipelines.serve", "--model", "s3://models/vidllm/v7", "--preset", "tiny",
         "--allowed-prefix", "s3://scenes/a/", "--allowed-prefix", "s3://scenes/b/", "--max-replicas", "3",
         "--port", "8123", "--export-serve-config", str(out)],
        check=True, cwd=REPO_ROOT, timeout=120, capture_output=True,
    )
    data = yaml.safe_load(out.read_text())
    args = data["applications"][0]["args"]
    cfg = ServeConfig.from_dict(args)
    assert cfg.model_uri == "s3://models/vidllm/v7" and cfg.device == "cpu"
    assert cfg.allowed_uri_prefixes == ("s3://scenes/a/", "s3://scenes/b/")
    assert cfg.model.autoscaling.max_replicas == 3 and data["http_options"]["port"] == 8123


def test_serve_cli_refuses_haproxy_ingress_on_a_joined_cluster_or_without_the_binary(tiny_checkpoint, tmp_path,
                                                                                       monkeypatch, capsys):
    from pipelines.serve.__main__ import main

    args = ["--model", str(tiny_checkpoint), "--preset", "tiny", "--ingress", "haproxy", "--run-dir", str(tmp_path)]
    assert main([*args, "--ray-address", "auto"]) == 2
    assert "uses the mode it was started with" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no haproxy on PATH
    assert main(args) == 2
    assert "needs the haproxy binary" in capsys.readouterr().err
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ


# ---------------------------------------------------------------- hostile input: validation, isolation, URIs


@pytest.mark.parametrize(
    ("text", "ok"),
    [("is there a chair?", True), ("tabs\tand\nnewlines", True), ("emoji 🪑 and RTL \u202e", True),
     ("\ud800", False), ("a\udfffb", False), ("nul\x00", False), ("esc\x1b[31m", False), ("del\x7f", False)],
)
def test_check_text(text, ok):
    from pipelines.serve.schemas import check_text

    if ok:
        assert check_text(text) == text
    else:
        with pytest.raises(ValueError, match="lone surrogate|control characters"):
            check_text(text)


def test_boxes_refuse_numbers_that_are_not_finite_floats():
    from pydantic import ValidationError

    from pipelines.serve.schemas import CaptionRequest

    for center in ([0, 0, 10**400], [0, 0, -(10**400)], [0, 0, float("nan")], [0, 0, float("inf")], [0, 0, True],
                   [0, 0, "1"], [0, 0, None]):
        with pytest.raises(ValidationError) as info:
            CaptionRequest.model_validate({"box": {"center": center, "size": [1, 1, 1]}})
        assert info.value.errors()[0]["loc"][:2] == ("box", "center")
    ok = CaptionRequest.model_validate({"box": {"center": [0, 10**300, 1.5], "size": [1, 2, 3]}})
    assert ok.box.center == (0.0, 1e300, 1.5) and all(isinstance(v, float) for v in ok.box.size)


def test_api_error_bodies_are_always_encodable():
    import json as _json

    body = ApiError(422, "invalid_field", "bad \ud800 value" + "x" * 5000, "f\udc80" + "k" * 500).body()
    encoded = _json.dumps(body, ensure_ascii=False).encode("utf-8")  # what the JSON response renders
    assert b"\\udc80" in encoded and len(body["field"]) == 200 and len(body["detail"]) == 2000


def test_chained_uris_are_refused():
    for uri in ("s3://scenes/public/a.mp4::file:///etc/passwd", "s3://scenes/public/a::b.mp4",
                "simplecache::s3://scenes/public/a.mp4", "s3://scenes/public/a.mp4::memory://x"):
        with pytest.raises(ApiError) as info:
            check_scene_uri(uri, PREFIXES, 200)
        assert (info.value.status, info.value.error, info.value.field) == (400, "invalid_uri", "uri")


def test_exposure_warning_and_build_app_logs_it():
    import logging

    from pipelines.serve.app import build_app
    from pipelines.serve.security import exposure_warning, is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "vidllm.internal"))
    assert exposure_warning("127.0.0.1", auth_enabled=False) is None
    assert exposure_warning("0.0.0.0", auth_enabled=True) is None
    assert "without authentication" in exposure_warning("0.0.0.0", auth_enabled=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("ray.serve")
    logger.addHandler(handler)
    try:
        build_app(ServeConfig.tiny("/m", http={"host": "0.0.0.0"}))
        build_app(ServeConfig.tiny("/m", http={"host": "127.0.0.1"}))
        build_app(ServeConfig.tiny("/m", http={"host": "0.0.0.0"}, auth_token_env="SOME_TOKEN_ENV"))
    finally:
        logger.removeHandler(handler)
    warnings = [r for r in records if r.levelno == logging.WARNING and "without authentication" in r.getMessage()]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0].getMessage()


def test_config_of_the_hostile_input_settings():
    from pipelines.scenes.decode_budget import DecodeBudget

    with pytest.raises(ValueError, match="docs_require_auth needs auth_token_env"):
        ServeConfig(model_uri="/m", device="cpu", model={"num_gpus": 0.0}, docs_require_auth=True)
    cfg = ServeConfig.tiny("/m", limits={"decode": {"max_frame_pixels": 1000}, "min_source_frames": 2})
    assert cfg.limits.decode == DecodeBudget(max_frame_pixels=1000) and cfg.limits.min_source_frames == 2
    assert ServeConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["limits"]["decode"]["formats"] == ["mov", "matroska"]  # YAML-safe
    with pytest.raises(ValueError, match="unknown field 'limits.decode.pixels'"):
        ServeConfig.from_dict({"model_uri": "/m", "limits": {"decode": {"pixels": 5}}})
    with pytest.raises(ValueError, match="min_source_frames"):
        LimitsConfig(min_source_frames=0)
    with pytest.raises(ValueError, match="max_concurrent_decodes"):
        ServeConfig.tiny("/m", ingress={"max_concurrent_decodes": 0})


def test_isolate_failures_gives_each_item_its_own_outcome():
    import asyncio

    from pipelines.serve.model_deployment import Failed, isolate_failures, unwrap

    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError(f"negative item in {items}")
        return [i * 10 for i in items]

    assert asyncio.run(isolate_failures(run, [1, 2, 3])) == [10, 20, 30] and calls == [[1, 2, 3]]
    calls.clear()
    out = asyncio.run(isolate_failures(run, [1, -2, 3]))
    assert calls == [[1, -2, 3], [1], [-2], [3]]
    assert out[0] == 10 and out[2] == 30 and isinstance(out[1], Failed)
    with pytest.raises(ValueError, match=r"negative item in \[-2\]"):
        unwrap(out[1])
    single = asyncio.run(isolate_failures(run, [-1]))
    assert isinstance(single[0], Failed) and unwrap(7) == 7


def test_uri_objects_are_read_once_within_the_cap(s3_bucket):
    import fsspec
    import s3fs

    from pipelines.serve.video_input import read_uri_limited

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe(f"{s3_bucket}/v/exact.mp4", b"a" * 1000)
    fs.pipe(f"{s3_bucket}/v/over.mp4", b"a" * 1001)
    fs.pipe(f"{s3_bucket}/v/huge.mp4", b"a" * 3_000_000)
    fs.pipe(f"{s3_bucket}/v/dir/inner.mp4", b"a")
    fs.pipe(f"{s3_bucket}/v/empty.mp4", b"")
    assert read_uri_limited(f"{s3_bucket}/v/exact.mp4", 1000) == b"a" * 1000
    with pytest.raises(ApiError) as info:  # S3 refuses a byte range of an empty object
        read_uri_limited(f"{s3_bucket}/v/empty.mp4", 1000)
    assert (info.value.status, info.value.error) == (422, "uri_unreadable")
    for name in ("over.mp4", "huge.mp4"):
        with pytest.raises(ApiError) as info:
            read_uri_limited(f"{s3_bucket}/v/{name}", 1000)
        assert (info.value.status, info.value.error) == (413, "video_too_large")
    for name in ("missing.mp4", "dir"):
        with pytest.raises(ApiError) as info:
            read_uri_limited(f"{s3_bucket}/v/{name}", 1000)
        assert (info.value.status, info.value.error) == (404, "uri_not_found")
    # No filesystem object per distinct URI: every plain s3:// URI shares the one cached instance.
    before = len(fsspec.filesystem("s3")._cache)
    for i in range(30):
        with pytest.raises(ApiError):
            read_uri_limited(f"{s3_bucket}/v/other-{i}.mp4", 1000)
    assert len(fsspec.filesystem("s3")._cache) == before


def test_sample_clip_hostile_videos():
    from tests.scenes import video_files as vf

    spec = SamplingSpec(num_frames=4, height=28, width=28)
    limits = LimitsConfig(max_upload_bytes=300_000, min_source_frames=4)
    for data, error in (
        (vf.ffconcat("secret.mp4"), "unsupported_container"),
        (vf.png(), "unsupported_container"),
        (vf.decode_bomb(), "video_over_budget"),
        (vf.mp4(1), "video_too_short"),
        (vf.mp4(3), "video_too_short"),
    ):
        with pytest.raises(ApiError) as info:
            sample_clip(data, spec, limits)
        assert (info.value.status, info.value.error, info.value.field) == (422, error, "video")
    edited = vf.edit_list_mp4(vf.mp4(30), hide_leading=5)
    clip = sample_clip(edited, spec, limits)
    assert clip.num_source_frames == 25 and clip.frames.shape == (4, 28, 28, 3)
    assert sample_clip(vf.mp4(3), spec, LimitsConfig(min_source_frames=3)).num_source_frames == 3
    small = LimitsConfig(decode={"max_frame_pixels": 64 * 48 - 1})
    with pytest.raises(ApiError, match="decode budget allows"):
        sample_clip(vf.mp4(8), spec, small)


def test_model_replica_keeps_a_bounded_window_of_batch_sizes(tiny_checkpoint):
    from pipelines.serve.model_deployment import _BATCH_SIZE_WINDOW, VidLLMModel

    replica = VidLLMModel.func_or_class(ServeConfig.tiny(str(tiny_checkpoint)).to_dict())
    for size in range(3 * _BATCH_SIZE_WINDOW):
        replica.batch_sizes.append(size % 8 + 1)
    sizes = replica.stats()["batch_sizes"]
    assert len(replica.batch_sizes) == len(sizes) == _BATCH_SIZE_WINDOW
    assert "<scene>" in replica.input_spec()["reserved_text"] and "<loc>" in replica.input_spec()["reserved_text"]
