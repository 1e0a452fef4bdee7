"""Typed configuration of the Vid-LLM Serve application.

One :class:`ServeConfig` drives everything: which checkpoint to load, how the two deployments (HTTP ingress and
model) are sized, scaled and protected against overload, what the request limits are and which storage prefixes
scene URIs may come from. It is built from the CLI (``python -m pipelines.serve``) or from the ``args`` block of a
Serve config file (``serve run pipelines/serve/serve_config.yaml``, or a KubeRay RayService ``serveConfigV2``),
and the resolved dictionary is logged at start-up and written next to the downloaded checkpoint. Loading, type
coercion and error messages follow :mod:`pipelines.config` (presets ``default`` and ``tiny``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from pipelines import config as pconfig
from pipelines.scenes.decode_budget import DecodeBudget


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")


@dataclass
class AutoscalingConfig:
    """Replica autoscaling of the model deployment (Serve ``autoscaling_config``).

    Attributes:
        min_replicas: replicas kept warm (>= 1: a GPU replica's cold start is minutes).
        max_replicas: upper bound on replicas.
        target_ongoing_requests: in-flight requests per replica the autoscaler aims for.
        upscale_delay_s: how long demand must stay high before adding replicas, seconds.
        downscale_delay_s: how long demand must stay low before removing replicas, seconds.
        look_back_period_s: window over which the request metric is averaged, seconds.
        metrics_interval_s: how often load is pushed to the controller, seconds (``None`` = Serve's default of
            10 s). Ray 2.60 still uses it but warns that it will move to environment variables.
    """

    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 300.0
    look_back_period_s: float = 30.0
    metrics_interval_s: float | None = None

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise ValueError(f"autoscaling.min_replicas must be >= 1, got {self.min_replicas}")
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"autoscaling.max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        _positive("autoscaling.target_ongoing_requests", self.target_ongoing_requests)
        _non_negative("autoscaling.upscale_delay_s", self.upscale_delay_s)
        _non_negative("autoscaling.downscale_delay_s", self.downscale_delay_s)
        _positive("autoscaling.look_back_period_s", self.look_back_period_s)
        if self.metrics_interval_s is not None:
            _positive("autoscaling.metrics_interval_s", self.metrics_interval_s)

    def to_serve(self) -> dict[str, Any]:
        """The dictionary Serve's ``autoscaling_config`` option takes."""
        out = dataclasses.asdict(self)
        if out["metrics_interval_s"] is None:
            del out["metrics_interval_s"]
        return out


@dataclass
class ModelDeploymentConfig:
    """Sizing, batching, overload protection and caching of the model deployment.

    Attributes:
        num_gpus: GPUs per replica (``ray_actor_options``); 0 runs on CPU.
        num_cpus: CPUs per replica; <= 0.5 lets two replicas share one CPU core in tests.
        max_ongoing_requests: requests one replica works on at once (batching needs >= max_batch_size).
        max_queued_requests: requests allowed to wait for a replica; beyond that callers get 503 + Retry-After.
        max_batch_size: most requests of one kind (encode/answer/caption/ground) run as one model batch.
        batch_wait_timeout_s: how long a partial batch waits for more requests, seconds.
        cache_bytes: bytes of scene encodings one replica keeps (LRU); misses are recomputed from the frames.
        retry_after_s: the ``Retry-After`` value sent with 503 overload answers, seconds.
        autoscaling: replica autoscaling.
    """

    num_gpus: float = 1.0
    num_cpus: float = 0.5
    max_ongoing_requests: int = 16
    max_queued_requests: int = 64
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.02
    cache_bytes: int = 4 * 1024**3
    retry_after_s: float = 2.0
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)

    def __post_init__(self) -> None:
        if isinstance(self.autoscaling, dict):
            self.autoscaling = AutoscalingConfig(**self.autoscaling)
        _non_negative("model.num_gpus", self.num_gpus)
        _non_negative("model.num_cpus", self.num_cpus)
        for name in ("max_ongoing_requests", "max_queued_requests", "max_batch_size", "cache_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        _non_negative("model.batch_wait_timeout_s", self.batch_wait_timeout_s)
        _non_negative("model.retry_after_s", self.retry_after_s)


@dataclass
class IngressConfig:
    """The HTTP ingress deployment (FastAPI): validation, decoding, auth, scene registry.

    Attributes:
        num_replicas: ingress replicas. Each keeps its own scene registry, so keep 1 unless scenes are
            re-registered by clients (a scene registered through another replica answers 404 ``unknown scene``).
        num_cpus: CPUs per replica (video decoding runs here).
        max_ongoing_requests: HTTP requests one ingress replica handles at once.
        max_queued_requests: HTTP requests waiting in the proxy; beyond that the proxy answers 503 + Retry-After.
        source_cache_bytes: bytes of sampled ``uint8`` frames kept per registered scene (LRU); they let a model
            replica that lost a scene encoding recompute it. An evicted scene answers 404 and must be re-registered.
        call_timeout_s: per-call timeout of ingress -> model calls, seconds (504 when exceeded).
        retry_after_s: ``Retry-After`` on 503 answers produced by the ingress/proxy, seconds.
        max_concurrent_decodes: videos one ingress replica reads and decodes at once; more wait their turn (with
            their upload spooled to disk by the multipart parser), so the replica's memory is bounded by this
            times one video's upload and decode budget, whatever the number of requests.
    """

    num_replicas: int = 1
    num_cpus: float = 0.5
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256
    source_cache_bytes: int = 2 * 1024**3
    call_timeout_s: float = 60.0
    retry_after_s: float = 2.0
    max_concurrent_decodes: int = 2

    def __post_init__(self) -> None:
        for name in ("num_replicas", "max_ongoing_requests", "max_queued_requests", "source_cache_bytes",
                     "max_concurrent_decodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ingress.{name} must be a positive integer, got {value!r}")
        _non_negative("ingress.num_cpus", self.num_cpus)
        _positive("ingress.call_timeout_s", self.call_timeout_s)
        _non_negative("ingress.retry_after_s", self.retry_after_s)


@dataclass
class LimitsConfig:
    """Request limits; anything beyond them is a 4xx naming the field.

    Attributes:
        max_upload_bytes: largest accepted video upload (413 beyond; checked from ``Content-Length`` before the
            body is read, and counted while it streams).
        max_json_bytes: largest accepted JSON body (413 beyond, checked the same way).
        max_duration_s: longest accepted video, seconds.
        max_source_frames: most frames an input video may have.
        min_source_frames: fewest distinct frames a video must present (422 ``video_too_short`` below): sampling
            ``num_frames`` from fewer repeats frames, and one view reconstructs nothing.
        num_frames: frames sampled uniformly from each video for the model (``S``).
        frame_size: side of the square frames the model is fed, pixels (a multiple of the patch size; videos are
            centre-cropped and resized to it). ``0``: the encoder's position-grid size (``image_size``, 518 for
            DINOv2); a model trained at a smaller size is best served at the size it was trained at.
        max_question_chars: longest question.
        max_description_chars: longest grounding description.
        max_uri_chars: longest scene URI.
        max_box_extent_m: largest box size / |centre| accepted in a caption request, metres.
        max_new_tokens: tokens generated per answer/caption.
        ground_top_k: boxes returned per grounding request (highest score first).
        pointcloud_max_points: most points in a PLY download (uniformly subsampled beyond).
        decode: the decode budget of one uploaded video (frame size, frames, decoded bytes, wall time, allowed
            containers); a video over it is a 422 before (or while) it is decoded.
    """

    max_upload_bytes: int = 200 * 1024**2
    max_json_bytes: int = 64 * 1024
    max_duration_s: float = 600.0
    max_source_frames: int = 20_000
    min_source_frames: int = 8
    num_frames: int = 32
    frame_size: int = 0
    max_question_chars: int = 1000
    max_description_chars: int = 500
    max_uri_chars: int = 2048
    max_box_extent_m: float = 1000.0
    max_new_tokens: int = 32
    ground_top_k: int = 5
    pointcloud_max_points: int = 500_000
    decode: DecodeBudget = field(default_factory=lambda: DecodeBudget(max_decoded_bytes=8 * 1024**3,
                                                                      max_decode_s=30.0))

    def __post_init__(self) -> None:
        if isinstance(self.decode, dict):
            self.decode = DecodeBudget(**self.decode)
        for name in (
            "max_upload_bytes", "max_json_bytes", "max_source_frames", "min_source_frames", "num_frames",
            "max_question_chars", "max_description_chars", "max_uri_chars", "max_new_tokens", "ground_top_k",
            "pointcloud_max_points",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"limits.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.frame_size, int) or self.frame_size < 0:
            raise ValueError(f"limits.frame_size must be 0 (the encoder's image_size) or a side in pixels, got "
                             f"{self.frame_size!r}")
        _positive("limits.max_duration_s", self.max_duration_s)
        _positive("limits.max_box_extent_m", self.max_box_extent_m)


@dataclass
class HTTPConfig:
    """Serve's HTTP proxy. ``request_timeout_s`` bounds every HTTP request end to end (the proxy answers 408)."""

    host: str = "127.0.0.1"
    port: int = 8000
    request_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise ValueError(f"http.port must be in 1..65535, got {self.port!r}")
        _positive("http.request_timeout_s", self.request_timeout_s)

    def to_serve(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "request_timeout_s": self.request_timeout_s}


#: ``ServeConfig.dtype`` values and the torch dtype each loads (``auto``: chosen by the device).
DTYPES = {"auto": None, "bf16": "bfloat16", "fp32": "float32"}


@dataclass
class ServeConfig:
    """Everything the Vid-LLM Serve application needs.

    Attributes:
        model_uri: exported checkpoint in HF layout (``config.json`` + safetensors + tokenizer files): a local
            directory, an fsspec URI such as ``s3://bucket/exports/v3``, or ``models:/<name>/<version>`` resolved
            through the MLflow model registry (``MLFLOW_TRACKING_URI``).
        model_cache_dir: local directory remote checkpoints are downloaded to ("" = the system temp dir).
        allowed_uri_prefixes: storage prefixes ``/v1/scenes:from_uri`` may read from (e.g. ``s3://scenes/``);
            empty disables URI registration.
        auth_token_env: name of the environment variable holding the bearer token; ``None`` disables auth.
            The variable must be set in the ingress replicas (a Kubernetes secret, or a runtime_env). Serving
            without auth on an address other than loopback logs a warning at start-up.
        docs_require_auth: ``/docs`` and ``/openapi.json`` need the bearer token too (needs ``auth_token_env``);
            by default they are open.
        app_name: Serve application name.
        route_prefix: HTTP route prefix of the application.
        device: torch device of the model replicas ("cuda" needs ``model.num_gpus`` > 0).
        dtype: weight dtype of the model replicas: ``auto`` (bf16 on ``cuda``, fp32 on ``cpu``), ``bf16`` or
            ``fp32``. Geometry (depth, poses, boxes) is computed in fp32 either way (``model/precision.py``).
        model: model deployment settings.
        ingress: ingress deployment settings.
        limits: request limits.
        http: HTTP proxy settings.
    """

    model_uri: str
    model_cache_dir: str = ""
    allowed_uri_prefixes: tuple[str, ...] = ()
    auth_token_env: str | None = None
    docs_require_auth: bool = False
    app_name: str = "vidllm"
    route_prefix: str = "/"
    device: str = "cuda"
    dtype: str = "auto"
    model: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)

    def __post_init__(self) -> None:
        for name, cls in (
            ("model", ModelDeploymentConfig), ("ingress", IngressConfig), ("limits", LimitsConfig),
            ("http", HTTPConfig),
        ):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        if not isinstance(self.model_uri, str) or not self.model_uri:
            raise ValueError("model_uri must be a non-empty string (checkpoint dir, s3:// URI or models:/name/version)")
        self.allowed_uri_prefixes = tuple(self.allowed_uri_prefixes)
        for prefix in self.allowed_uri_prefixes:
            if "://" not in prefix or prefix.split("://", 1)[0] in ("file", "http", "https") or ".." in prefix:
                raise ValueError(
                    f"allowed_uri_prefixes entry {prefix!r} must be an object-store prefix such as 's3://bucket/dir/'"
                )
            if not prefix.endswith("/"):
                raise ValueError(f"allowed_uri_prefixes entry {prefix!r} must end with '/' (a directory prefix)")
        if self.auth_token_env is not None and not self.auth_token_env:
            raise ValueError("auth_token_env must be a variable name or null")
        if self.docs_require_auth and self.auth_token_env is None:
            raise ValueError("docs_require_auth needs auth_token_env (there is no token to require)")
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {self.route_prefix!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.device == "cuda" and self.model.num_gpus <= 0:
            raise ValueError("device='cuda' needs model.num_gpus > 0; use device='cpu' for CPU replicas")
        if self.model.max_ongoing_requests < self.model.max_batch_size:
            raise ValueError(
                f"model.max_ongoing_requests ({self.model.max_ongoing_requests}) must be >= model.max_batch_size "
                f"({self.model.max_batch_size}), or batches can never fill"
            )

    def torch_dtype(self) -> str:
        """The torch dtype name the replicas load the weights in (``dtype`` with ``auto`` resolved by ``device``)."""
        return DTYPES[self.dtype] or ("bfloat16" if self.device == "cuda" else "float32")

    @classmethod
    def tiny(cls, model_uri: str, **overrides: Any) -> ServeConfig:
        """CPU preset for tests and laptops: one small replica each, short delays, small caches and limits."""
        return dataclasses.replace(SPEC.from_dict({**tiny(), "model_uri": model_uri}), **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dictionary (round-trips through :meth:`from_dict`)."""
        return pconfig.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        """Build from a (possibly partial) nested dictionary, e.g. a Serve config file's ``args``."""
        return SPEC.from_dict(data)


def tiny() -> dict[str, Any]:
    """The ``tiny`` preset (no model): CPU replicas, short delays, small caches and limits."""
    return {
        "device": "cpu",
        "model": {"num_gpus": 0.0, "num_cpus": 0.5, "max_ongoing_requests": 8, "max_queued_requests": 16,
                  "max_batch_size": 4, "batch_wait_timeout_s": 0.01, "cache_bytes": 64 * 1024**2, "retry_after_s": 1.0,
                  "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1.0,
                                  "upscale_delay_s": 1.0, "downscale_delay_s": 4.0, "look_back_period_s": 2.0,
                                  "metrics_interval_s": 0.5}},
        "ingress": {"num_cpus": 0.25, "source_cache_bytes": 64 * 1024**2, "call_timeout_s": 30.0},
        "limits": {"max_upload_bytes": 4 * 1024**2, "max_duration_s": 30.0, "max_source_frames": 600,
                   "min_source_frames": 4, "num_frames": 4, "max_question_chars": 300, "max_new_tokens": 8,
                   "pointcloud_max_points": 50_000,
                   "decode": {"max_frame_pixels": 1920 * 1080, "max_frames": 600, "max_decoded_bytes": 512 * 1024**2,
                              "max_decode_s": 20.0}},
        "http": {"request_timeout_s": 60.0},
    }


SPEC = pconfig.ConfigSpec(ServeConfig, "serve", {"default": dict, "tiny": tiny})
