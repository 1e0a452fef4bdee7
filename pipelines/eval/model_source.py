"""Where the evaluated model comes from: resolve ``--model`` to a local HF-layout directory and load it.

Accepted URIs:

* a local directory (or ``file://``) holding ``config.json`` + ``model.safetensors`` (+ tokenizer files), such as
  the ``<output_dir>/model`` export of a training run, whose ``../mlflow_run.json`` names the training run;
* an fsspec URI (``s3://bucket/exports/run-7``): copied once into ``<cache_dir>/<hash>``;
* ``models:/<name>/<version>`` or ``models:/<name>@<alias>``: resolved through the MLflow model registry at the
  job's tracking URI; the registered name, version and source run are kept so that the evaluation run is linked to
  the model version.

Downloads land in a temporary directory that is renamed into place when complete, so two actors of one node (or a
killed download) never leave or load half a checkpoint.
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
from dataclasses import dataclass
from pathlib import Path

from pipelines import storage

_REGISTRY = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))/?$")
#: Written by the training job next to its export directory (``<output_dir>/mlflow_run.json``).
TRAIN_RUN_FILE = "mlflow_run.json"


class ModelSourceError(FileNotFoundError):
    """``--model`` does not name a loadable checkpoint; the message names the URI and the problem."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"--model {uri}: {problem}")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model.

    Attributes:
        uri: the URI as given.
        local_dir: local directory with ``config.json`` and the weights.
        registered_name / registered_version: registry coordinates (``models:/`` URIs only).
        source_run_id: the MLflow run that produced the model, when known.
    """

    uri: str
    local_dir: str
    registered_name: str | None = None
    registered_version: str | None = None
    source_run_id: str | None = None

    def tags(self) -> dict[str, str]:
        """MLflow tags linking an evaluation run to this model."""
        tags = {"model_uri": self.uri}
        if self.registered_name:
            tags["registered_model_name"] = self.registered_name
            tags["registered_model_version"] = str(self.registered_version)
        if self.source_run_id:
            tags["model_source_run_id"] = self.source_run_id
        return tags


def _checkpoint_dir(root: str, uri: str) -> str:
    """``root`` itself when it holds ``config.json``, else its only sub-directory that does (artifact nesting)."""
    if os.path.isfile(os.path.join(root, "config.json")):
        return root
    found = sorted(str(p.parent) for p in Path(root).rglob("config.json") if len(p.relative_to(root).parts) <= 3)
    if len(found) != 1:
        raise ModelSourceError(uri, f"expected one checkpoint directory with config.json, found {len(found)}")
    return found[0]


def _cached_download(uri: str, key: str, cache_dir: str, fetch) -> str:
    """Download with ``fetch(dst_dir)`` into ``<cache>/<hash of key>`` once (atomic rename of a temp dir)."""
    cache = cache_dir or os.path.join(tempfile.gettempdir(), "vidllm-eval-models")
    os.makedirs(cache, exist_ok=True)
    target = os.path.join(cache, hashlib.sha256(key.encode()).hexdigest()[:24])
    if os.path.isdir(target):
        return _checkpoint_dir(target, uri)
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    os.makedirs(tmp)
    try:
        fetch(tmp)
        _checkpoint_dir(tmp, uri)  # refuse to cache something that is not a checkpoint
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same download first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _checkpoint_dir(target, uri)


def _training_run_id(export_dir: str) -> str | None:
    run_file = storage.join(posixpath.dirname(export_dir.rstrip("/")), TRAIN_RUN_FILE)
    try:
        if storage.exists(run_file):
            return json.loads(storage.read_bytes(run_file)).get("run_id") or None
    except (OSError, ValueError):
        return None
    return None


def _resolve_registry(uri: str, tracking_uri: str | None, cache_dir: str) -> ModelSource:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    match = _REGISTRY.match(uri)
    if match is None:
        raise ModelSourceError(uri, "registry URIs are models:/<name>/<version> or models:/<name>@<alias>")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        if match.group("version"):
            mv = client.get_model_version(match.group("name"), match.group("version"))
        else:
            mv = client.get_model_version_by_alias(match.group("name"), match.group("alias"))
    except MlflowException as err:
        raise ModelSourceError(uri, f"not found in the MLflow registry at {tracking_uri} ({err.message})") from None
    except Exception as err:  # noqa: BLE001 - connection errors of any client library: say where we looked
        raise ModelSourceError(uri, f"MLflow registry at {tracking_uri} is unreachable ({err})") from None
    # The artifact location is looked up with OUR client: MLflow's models:/ download path asks the process-global
    # registry URI instead of the one passed in, which is not the job's store.
    try:
        download_uri = client.get_model_version_download_uri(mv.name, mv.version)
    except Exception as err:  # noqa: BLE001 - as above
        raise ModelSourceError(uri, f"no artifact location in the registry at {tracking_uri} ({err})") from None
    local = _cached_download(
        uri, f"{tracking_uri}|models:/{mv.name}/{mv.version}", cache_dir,
        lambda dst: download_artifacts(artifact_uri=download_uri, dst_path=dst, tracking_uri=tracking_uri),
    )
    return ModelSource(uri, local, mv.name, str(mv.version), mv.run_id or None)


def resolve_model(uri: str, tracking_uri: str | None = None, cache_dir: str = "") -> ModelSource:
    """Resolve ``--model`` to a local checkpoint directory (downloading remote ones into the cache).

    Raises:
        ModelSourceError: the URI does not exist, holds no checkpoint, or is unknown to the registry.
    """
    if uri.startswith("models:/"):
        return _resolve_registry(uri, tracking_uri, cache_dir)
    if "://" not in uri or uri.startswith("file://"):
        local = os.path.abspath(uri.removeprefix("file://"))
        if not os.path.isdir(local):
            raise ModelSourceError(uri, "directory does not exist")
        return ModelSource(uri, _checkpoint_dir(local, uri), source_run_id=_training_run_id(local))
    try:
        fs, path = storage.filesystem(uri)
        if not fs.isdir(path):
            raise ModelSourceError(uri, "directory does not exist")
    except ModelSourceError:
        raise
    except Exception as err:  # noqa: BLE001 - unknown protocol, bad bucket, credentials: name the URI
        raise ModelSourceError(uri, f"cannot be opened ({type(err).__name__}: {err})") from None
    local = _cached_download(uri, uri, cache_dir, lambda dst: fs.get(path.rstrip("/") + "/", dst + os.sep,
                                                                     recursive=True))
    return ModelSource(uri, local, source_run_id=_training_run_id(uri))


def load_model_and_tokenizer(checkpoint_dir: str, device: str = "cpu"):
    """``(VidLLM in eval mode on device, tokenizer)`` from a local checkpoint directory.

    The tokenizer saved next to the weights (``tokenizer.json``) is used when present, otherwise the config's own
    (the offline word-level one for word-level configs); its ``<scene>``/``<loc>`` ids must match the config.
    """
    from transformers import PreTrainedTokenizerFast

    from model import VidLLM, build_tokenizer
    from model.tokenizer import LOC_TOKEN, SCENE_TOKEN

    model = VidLLM.from_pretrained(checkpoint_dir).to(device).eval()
    llm = model.vidllm_config.llm
    if os.path.isfile(os.path.join(checkpoint_dir, "tokenizer.json")):
        tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoint_dir, local_files_only=True)
        ids = (tokenizer.convert_tokens_to_ids(SCENE_TOKEN), tokenizer.convert_tokens_to_ids(LOC_TOKEN))
        if ids != (llm.scene_token_id, llm.loc_token_id):
            raise ValueError(f"{checkpoint_dir}: tokenizer has <scene>/<loc> ids {ids}, the model config expects "
                             f"{(llm.scene_token_id, llm.loc_token_id)}")
    else:
        tokenizer = build_tokenizer(model.vidllm_config)
    return model, tokenizer
