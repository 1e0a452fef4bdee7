"""Resolve a model URI to a local checkpoint directory and load the model and tokenizer from it.

Accepted URIs:

* a local directory in HF layout (``config.json``, safetensors weights, tokenizer files);
* an fsspec URI such as ``s3://bucket/exports/run-7``: copied once to ``<cache_dir>/<hash of URI>/`` (a
  ``.complete`` marker written last makes an interrupted download start over instead of loading half a model);
* ``models:/<name>/<version>`` (or ``models:/<name>@<alias>``): the MLflow registry resolves it to the model
  version's artifacts, downloaded to the same cache. The checkpoint is the artifact directory that holds
  ``config.json`` (the export may be nested one level down, e.g. under ``checkpoint/``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pipelines.storage import filesystem

logger = logging.getLogger(__name__)

_COMPLETE = ".complete"


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "vidllm-serve-models"


def _find_checkpoint_dir(root: Path, uri: str) -> Path:
    if (root / "config.json").is_file():
        return root
    candidates = sorted(p.parent for p in root.rglob("config.json") if len(p.relative_to(root).parts) <= 3)
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"{uri}: expected exactly one checkpoint directory with config.json, found {len(candidates)}"
            f" ({[str(c.relative_to(root)) for c in candidates]})"
        )
    return candidates[0]


def resolve_model_dir(uri: str, cache_dir: str = "") -> Path:
    """Return a local directory holding the checkpoint named by ``uri`` (downloading it if remote).

    Args:
        uri: local directory, fsspec URI, or ``models:/<name>/<version>``.
        cache_dir: where remote checkpoints are stored ("" = the system temp dir).

    Raises:
        FileNotFoundError: the URI does not exist or holds no ``config.json``.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if "://" not in uri and not uri.startswith("models:/"):
        local = Path(uri).expanduser().resolve()
        if not local.is_dir():
            raise FileNotFoundError(f"{uri}: model directory does not exist")
        return _find_checkpoint_dir(local, uri)
    target = cache / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if (target / _COMPLETE).is_file():
        return _find_checkpoint_dir(target / "files", uri)
    shutil.rmtree(target, ignore_errors=True)
    (target / "files").mkdir(parents=True)
    if uri.startswith("models:/"):
        import mlflow.artifacts  # only needed for registry URIs; importing MLflow costs seconds

        logger.info("downloading %s from the MLflow registry to %s", uri, target)
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target / "files"))
    else:
        fs, path = filesystem(uri)
        if not fs.isdir(path):
            raise FileNotFoundError(f"{uri}: model directory does not exist")
        logger.info("downloading %s to %s", uri, target)
        fs.get(path.rstrip("/") + "/", str(target / "files") + os.sep, recursive=True)
    checkpoint = _find_checkpoint_dir(target / "files", uri)
    (target / _COMPLETE).write_text(uri)
    return checkpoint


def load_model_and_tokenizer(checkpoint_dir: Path, device: str):
    """Load ``VidLLM`` (eval mode) and its tokenizer from a local checkpoint directory.

    The tokenizer is the fast tokenizer (``tokenizer.json``) saved next to the weights when present; otherwise the config's own tokenizer
    (the offline word-level one for word-level configs). Token ids of ``<scene>``/``<loc>`` are checked against
    the model config either way.
    """
    from transformers import PreTrainedTokenizerFast

    from model import VidLLM, build_tokenizer
    from model.tokenizer import LOC_TOKEN, SCENE_TOKEN

    model = VidLLM.from_pretrained(str(checkpoint_dir)).to(device).eval()
    llm_cfg = model.vidllm_config.llm
    if (checkpoint_dir / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(checkpoint_dir), local_files_only=True)
        ids = (tokenizer.convert_tokens_to_ids(SCENE_TOKEN), tokenizer.convert_tokens_to_ids(LOC_TOKEN))
        if ids != (llm_cfg.scene_token_id, llm_cfg.loc_token_id):
            raise ValueError(
                f"{checkpoint_dir}: saved tokenizer has <scene>/<loc> ids {ids}, the model config expects "
                f"{(llm_cfg.scene_token_id, llm_cfg.loc_token_id)}"
            )
    else:
        tokenizer = build_tokenizer(model.vidllm_config)
    return model, tokenizer
