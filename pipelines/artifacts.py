"""Model artifacts: resolve any model URI to a local directory (one cache for every stage) and load a checkpoint.

Accepted URIs (``--model`` of eval and serve, ``init_from`` and the pretrained/tokenizer paths of training, the
teacher folders):

* a local directory or ``file://`` URI: used in place;
* an fsspec URI (``s3://bucket/exports/run-7``): copied once into the cache;
* ``models:/<name>/<version>`` or ``models:/<name>@<alias>``: the MLflow registry at the given tracking URI
  resolves it (an alias to its current version) and the version's artifacts are downloaded into the cache;
* ``runs:/<run_id>/<path>``, or ``mlflow-run:<run_id>`` for the ``model`` artifact of a training run.

Registry and run artifacts in a store on this machine's file system are used in place, like local directories:
a copy per consumer (evaluation, serving) would double the disk a real-size model takes (~1 GB each).

A model checkpoint is the HF-layout directory (``config.json`` + ``model.safetensors`` + the processor: tokenizer
files and ``processor_config.json``, loaded together by :func:`load_model_and_processor`); a
registered version is an MLflow pyfunc model that holds it under ``artifacts/`` (:mod:`pipelines.serve.pyfunc`), so
the checkpoint is the one directory of the download that holds ``config.json``.

The cache is ``<cache_dir>/<hash of the resolved source>/``, filled through a temporary directory renamed into place
when complete, so two processes of a node never load half a download and a killed download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines import preflight, storage
from pipelines.config import InputError
from pipelines.tracking import RUN_FILE

_REGISTRY = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))/?$")
_RUNS = re.compile(r"^runs:/(?P<run_id>[0-9a-f]+)(?:/(?P<path>.*))?$")
#: The model artifact of a training run (``mlflow-run:<run_id>`` means ``runs:/<run_id>/model``).
MODEL_ARTIFACT = "model"
CACHE_NAME = "vidllm-artifacts"


class ArtifactError(InputError, FileNotFoundError):
    """A model URI names nothing loadable; the message names the flag or field, the URI and the problem."""

    def __init__(self, uri: str, problem: str, flag: str = "--model"):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{flag} {uri}: {problem}")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model.

    Attributes:
        uri: the URI as given.
        local_dir: local directory with ``config.json`` and the weights.
        registered_name: registered model name (``models:/`` URIs only).
        registered_version: registered version (``models:/`` URIs only).
        source_run_id: the MLflow run that produced the model, when known.
    """

    uri: str
    local_dir: str
    registered_name: str | None = None
    registered_version: str | None = None
    source_run_id: str | None = None

    def tags(self) -> dict[str, str]:
        """MLflow tags linking a run (an evaluation, a Stage-2 training) to this model."""
        tags = {"model_uri": self.uri}
        if self.registered_name:
            tags["registered_model_name"] = self.registered_name
            tags["registered_model_version"] = str(self.registered_version)
        if self.source_run_id:
            tags["model_source_run_id"] = self.source_run_id
        return tags


def is_local(uri: str) -> bool:
    """A local path or ``file://`` URI."""
    if uri.startswith("file://"):
        return True
    return "://" not in uri and not uri.startswith(("models:/", "runs:/", "mlflow-run:"))


def normalise(uri: str) -> str:
    """``mlflow-run:<id>`` -> ``runs:/<id>/model``; other URIs unchanged."""
    if uri.startswith("mlflow-run:"):
        return f"runs:/{uri.split(':', 1)[1]}/{MODEL_ARTIFACT}"
    return uri


def default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), CACHE_NAME)


def checkpoint_dir(root: str, uri: str, flag: str = "--model") -> str:
    """``root`` itself when it holds ``config.json``, else its one sub-directory (4 levels at most) that does."""
    if os.path.isfile(os.path.join(root, "config.json")):
        return root
    found = sorted(str(p.parent) for p in Path(root).rglob("config.json") if len(p.relative_to(root).parts) <= 4)
    if len(found) != 1:
        raise ArtifactError(uri, f"expected one checkpoint directory with config.json, found {len(found)}", flag)
    return found[0]


def _cached(key: str, cache_dir: str, fetch: Callable[[str], None]) -> str:
    """``<cache>/<hash of key>``, filled once with ``fetch(tmp_dir)`` and renamed into place."""
    cache = cache_dir or default_cache_dir()
    os.makedirs(cache, exist_ok=True)
    target = os.path.join(cache, hashlib.sha256(key.encode()).hexdigest()[:24])
    if os.path.isdir(target):
        return target
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    os.makedirs(tmp)
    try:
        fetch(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same download first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _registry_version(uri: str, tracking_uri: str | None, flag: str):
    """The registry's ``ModelVersion`` of a ``models:/`` URI (an alias resolved to its current version)."""
    from mlflow.exceptions import MlflowException

    match = _REGISTRY.match(uri)
    if match is None:
        raise ArtifactError(uri, "registry URIs are models:/<name>/<version> or models:/<name>@<alias>", flag)
    client = _client(tracking_uri)
    try:
        if match.group("version"):
            return client, client.get_model_version(match.group("name"), match.group("version"))
        return client, client.get_model_version_by_alias(match.group("name"), match.group("alias"))
    except MlflowException as err:
        raise ArtifactError(uri, f"not found in the MLflow registry at {tracking_uri} ({err.message})", flag) from None
    except Exception as err:  # noqa: BLE001 - connection errors of any client library: say where we looked
        raise ArtifactError(uri, f"the MLflow registry at {tracking_uri} is unreachable ({err})", flag) from None


def _download(artifact_uri: str, tracking_uri: str | None, uri: str, flag: str) -> Callable[[str], None]:
    def fetch(dst: str) -> None:
        from mlflow.artifacts import download_artifacts

        try:
            download_artifacts(artifact_uri=artifact_uri, dst_path=dst, tracking_uri=tracking_uri)
        except Exception as err:  # noqa: BLE001 - any store or client error: name the URI
            raise ArtifactError(uri, f"cannot download {artifact_uri} ({type(err).__name__}: {err})", flag) from None

    return fetch


def _on_disk(artifact_uri: str) -> str | None:
    """The local directory of an MLflow artifact location on this machine's file system (a file store, or a
    mounted volume), used in place as local model URIs are; ``None`` for remote stores, which are downloaded."""
    path = artifact_uri.removeprefix("file://")
    return path if os.path.isabs(path) and os.path.isdir(path) else None


def _run_artifact_uri(run_id: str, path: str | None, tracking_uri: str | None) -> str:
    """Where the artifact ``path`` of run ``run_id`` is stored; empty when the store does not say (the download
    then reports what is wrong)."""
    try:
        root = _client(tracking_uri).get_run(run_id).info.artifact_uri
    except Exception:  # noqa: BLE001 - unknown run or unreachable store: the download names the problem
        return ""
    return posixpath.join(root, path) if path else root


def _fsspec_copy(uri: str, flag: str) -> tuple[str, Callable[[str], None]]:
    """``(cache key, fetch)`` of a directory on object storage; the key covers every file's name, size and ETag
    (or mtime), so a directory rewritten in place (a rerun into the same output) is downloaded again."""
    preflight.reachable(uri, flag)
    try:
        fs, path = storage.filesystem(uri)
        fs.invalidate_cache(path)  # a listing cached by this process may predate a rewrite of the directory
        listing = {name: info for name, info in fs.find(path, detail=True).items() if info.get("type") == "file"}
    except Exception as err:  # noqa: BLE001 - unknown protocol, bad bucket, credentials: name the URI
        raise ArtifactError(uri, f"cannot be opened ({type(err).__name__}: {err})", flag) from None
    if not listing:
        raise ArtifactError(uri, "directory does not exist", flag)
    signature = sorted((name, info.get("size"), str(info.get("ETag") or info.get("mtime") or ""))
                       for name, info in listing.items())

    def fetch(dst: str) -> None:
        fs.get(path.rstrip("/") + "/", dst + os.sep, recursive=True)

    return f"{uri}|{json.dumps(signature)}", fetch


def local_dir(uri: str, cache_dir: str = "", tracking_uri: str | None = None, flag: str = "--model") -> str:
    """A local directory holding the artifact at ``uri`` (any accepted form; remote ones downloaded once).

    Raises:
        ArtifactError: the URI does not exist or cannot be read.
    """
    return resolve(uri, cache_dir, tracking_uri, flag, checkpoint=False).local_dir


def resolve_model(uri: str, tracking_uri: str | None = None, cache_dir: str = "", flag: str = "--model"
                  ) -> ModelSource:
    """Resolve a model URI to its local checkpoint directory (downloading remote ones into the cache).

    Raises:
        ArtifactError: the URI does not exist, holds no checkpoint, or is unknown to the registry.
    """
    return resolve(uri, cache_dir, tracking_uri, flag, checkpoint=True)


def resolve(uri: str, cache_dir: str, tracking_uri: str | None, flag: str, checkpoint: bool) -> ModelSource:
    """:func:`resolve_model` (``checkpoint=True``: find the ``config.json`` directory) or :func:`local_dir`."""
    target = normalise(uri)
    if target.startswith("models:/"):
        client, mv = _registry_version(target, tracking_uri, flag)
        try:
            source = client.get_model_version_download_uri(mv.name, mv.version)
        except Exception as err:  # noqa: BLE001 - as in _registry_version
            raise ArtifactError(uri, f"no artifact location in the registry at {tracking_uri} ({err})", flag) from None
        root = _on_disk(source) or _cached(f"{tracking_uri}|models:/{mv.name}/{mv.version}", cache_dir,
                                           _download(source, tracking_uri, uri, flag))
        found = ModelSource(uri, root, mv.name, str(mv.version), mv.run_id or None)
    elif target.startswith("runs:/"):
        match = _RUNS.match(target)
        if match is None:
            raise ArtifactError(uri, "run URIs are runs:/<run_id>/<path> or mlflow-run:<run_id>", flag)
        root = (_on_disk(_run_artifact_uri(match.group("run_id"), match.group("path"), tracking_uri))
                or _cached(f"{tracking_uri}|{target}", cache_dir, _download(target, tracking_uri, uri, flag)))
        found = ModelSource(uri, root, source_run_id=match.group("run_id"))
    elif is_local(target):
        local = os.path.abspath(target.removeprefix("file://"))
        if not os.path.isdir(local):
            raise ArtifactError(uri, "directory does not exist", flag)
        found = ModelSource(uri, local, source_run_id=training_run_id(local))
    else:
        key, fetch = _fsspec_copy(target, flag)
        root = _cached(key, cache_dir, fetch)
        found = ModelSource(uri, root, source_run_id=training_run_id(target))
    if not checkpoint:
        return found
    return ModelSource(found.uri, checkpoint_dir(found.local_dir, uri, flag), found.registered_name,
                       found.registered_version, found.source_run_id)


def training_run_id(export_dir: str) -> str | None:
    """The MLflow run that wrote an export directory (``<output_dir>/model``): from ``<output_dir>/mlflow_run.json``."""
    run_file = storage.join(posixpath.dirname(export_dir.rstrip("/")), RUN_FILE)
    try:
        if storage.exists(run_file):
            return json.loads(storage.read_bytes(run_file)).get("run_id") or None
    except (OSError, ValueError):
        return None
    return None


def run_id_of(uri: str) -> str:
    """The MLflow run a model URI comes from without downloading it: ``runs:/``, ``mlflow-run:`` or an export
    directory's ``mlflow_run.json``; empty when unknown (registry URIs are resolved by :func:`resolve_model`)."""
    target = normalise(uri)
    match = _RUNS.match(target)
    if match:
        return match.group("run_id")
    if target.startswith("models:/"):
        return ""
    return training_run_id(target) or ""


def load_tokenizer(checkpoint: str | os.PathLike, vidllm_config):
    """The tokenizer of a local checkpoint directory for the model config ``vidllm_config``.

    The tokenizer saved next to the weights (``tokenizer.json``) is used when present, otherwise the config's own
    (the offline word-level one for word-level configs). Either way its ``<scene>``/``<loc>`` ids must match.

    Raises:
        ValueError: the saved tokenizer's ``<scene>``/``<loc>`` ids disagree with the model config.
    """
    from transformers import PreTrainedTokenizerFast

    from model import build_tokenizer
    from model.tokenizer import LOC_TOKEN, SCENE_TOKEN

    checkpoint = str(checkpoint)
    if not os.path.isfile(os.path.join(checkpoint, "tokenizer.json")):
        return build_tokenizer(vidllm_config)
    llm = vidllm_config.llm
    tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoint, local_files_only=True)
    ids = (tokenizer.convert_tokens_to_ids(SCENE_TOKEN), tokenizer.convert_tokens_to_ids(LOC_TOKEN))
    if ids != (llm.scene_token_id, llm.loc_token_id):
        raise ValueError(f"{checkpoint}: saved tokenizer has <scene>/<loc> ids {ids}, the model config expects "
                         f"{(llm.scene_token_id, llm.loc_token_id)}")
    return tokenizer


def load_processor(checkpoint: str | os.PathLike, vidllm_config):
    """The :class:`model.processor.VidLLMProcessor` of a local checkpoint directory for ``vidllm_config``.

    Exports hold ``processor_config.json`` (:meth:`VidLLMProcessor.save_pretrained`) next to the weights; it must
    agree with the model config (patch size, chat template). An export without one (written before the processor
    existed) gets the processor its config describes around :func:`load_tokenizer`'s tokenizer.

    Raises:
        ValueError: the saved tokenizer or processor settings disagree with the model config.
    """
    from model import VidLLMProcessor
    from model.processor import PROCESSOR_CONFIG_NAME

    processor = VidLLMProcessor.from_config(vidllm_config, tokenizer=load_tokenizer(checkpoint, vidllm_config))
    saved_file = os.path.join(str(checkpoint), PROCESSOR_CONFIG_NAME)
    if os.path.isfile(saved_file):
        with open(saved_file) as f:
            saved = json.load(f)
        found = (int(saved.get("patch_size", -1)), bool(saved.get("use_chat_template")))
        if found != (processor.patch_size, processor.use_chat_template):
            raise ValueError(f"{saved_file}: patch size {found[0]}, use_chat_template={found[1]}; the model config "
                             f"has {processor.patch_size} and {processor.use_chat_template}")
    return processor


def load_model_and_processor(checkpoint: str | os.PathLike, device: str = "cpu", dtype: str | None = None):
    """``(VidLLM in eval mode on device, its VidLLMProcessor)`` from a local checkpoint directory.

    Args:
        checkpoint: the export directory (``config.json``, weights, tokenizer, ``processor_config.json``).
        device: torch device.
        dtype: weight dtype name (``"bfloat16"``, ``"float32"``); ``None``: fp32. Geometry stays fp32 either way
            (:mod:`model.precision`).

    Raises:
        ValueError: the saved tokenizer or processor settings disagree with the model config.
    """
    from model import VidLLM

    model = VidLLM.from_pretrained(str(checkpoint), dtype=dtype, device=device)
    return model, load_processor(checkpoint, model.vidllm_config)


def read_model_config(uri: str, tracking_uri: str | None = None, flag: str = "init_from") -> dict:
    """The ``VidLLMConfig`` tree of a checkpoint without downloading its weights (dry runs).

    Local and fsspec directories are read in place; registry and run URIs list the artifacts and fetch only
    ``config.json``.

    Raises:
        ArtifactError: the URI names no checkpoint.
    """
    target = normalise(uri)
    if target.startswith(("models:/", "runs:/")):
        if target.startswith("models:/"):
            client, mv = _registry_version(target, tracking_uri, flag)
            base = client.get_model_version_download_uri(mv.name, mv.version)
        else:
            base = target
        raw = _fetch_config(base, tracking_uri, uri, flag)
    else:
        root = target.removeprefix("file://") if is_local(target) else target
        preflight.reachable(root, flag)
        try:
            fs, path = storage.filesystem(root)
            if not fs.exists(path):
                raise ArtifactError(uri, "directory does not exist", flag)
            candidates = [path.rstrip("/") + "/config.json"] if fs.isfile(path.rstrip("/") + "/config.json") else [
                p for p in fs.find(path) if p.endswith("/config.json")]
        except ArtifactError:
            raise
        except Exception as err:  # noqa: BLE001 - credentials, endpoint, protocol: name the URI
            raise ArtifactError(uri, f"cannot be opened ({type(err).__name__}: {err})", flag) from None
        if len(candidates) != 1:
            raise ArtifactError(uri, f"expected one checkpoint directory with config.json, found {len(candidates)}",
                                flag)
        raw = fs.cat_file(candidates[0])
    try:
        return json.loads(raw)["vidllm"]
    except (ValueError, KeyError) as err:
        raise ArtifactError(uri, f"config.json is not a Vid-LLM checkpoint config ({err})", flag) from None


def _fetch_config(artifact_uri: str, tracking_uri: str | None, uri: str, flag: str) -> bytes:
    """``config.json`` of the checkpoint inside an MLflow artifact directory (searched 3 levels deep)."""
    from mlflow.artifacts import download_artifacts, list_artifacts

    def find(path: str, depth: int) -> str | None:
        entries = list_artifacts(artifact_uri=f"{artifact_uri.rstrip('/')}/{path}".rstrip("/"),
                                 tracking_uri=tracking_uri)
        for entry in entries:
            name = posixpath.basename(entry.path)
            if not entry.is_dir and name == "config.json":
                return posixpath.join(path, name)
        for entry in entries:
            if entry.is_dir and depth > 0:
                hit = find(posixpath.join(path, posixpath.basename(entry.path)), depth - 1)
                if hit:
                    return hit
        return None

    try:
        rel = find("", 3)
        if rel is None:
            raise ArtifactError(uri, "no config.json among the artifacts", flag)
        with tempfile.TemporaryDirectory(prefix="vidllm-config-") as tmp:
            local = download_artifacts(artifact_uri=f"{artifact_uri.rstrip('/')}/{rel}", dst_path=tmp,
                                       tracking_uri=tracking_uri)
            return Path(local).read_bytes()
    except ArtifactError:
        raise
    except Exception as err:  # noqa: BLE001 - unreachable server, unknown run: name the URI
        raise ArtifactError(uri, f"cannot read its config.json ({type(err).__name__}: {err})", flag) from None
