"""Consolidate the trained weights out of ZeRO into the HF layout that ``VidLLM.from_pretrained`` loads.

Two routes, one layout (``model.safetensors`` + ``config.json`` from ``save_pretrained``, the tokenizer files, and
``train_config.json`` with the resolved training config):

* :func:`export_model` at the end of training, on every rank: under ZeRO-3 each rank holds only a partition of every
  parameter, so all ranks enter ``deepspeed.zero.GatheredParameters`` (a collective) and rank 0 copies the full
  tensors as fp32 into a fresh CPU model; ZeRO-1/2 keep full parameters on every rank and need no gather. Loading
  them with ``strict=True`` into a model built from the same config proves nothing was lost.
* :func:`export_from_checkpoint` offline, from a DeepSpeed checkpoint directory (e.g. the last complete
  checkpoint of a run that died): DeepSpeed's ``zero_to_fp32`` utilities merge the per-rank fp32 optimizer shards.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

import torch

from pipelines import storage
from pipelines.train.config import TrainConfig

MODEL_SUBDIR = "model"
TRAIN_CONFIG_NAME = "train_config.json"


def model_uri(output_dir: str) -> str:
    """Where a run's exported model lives."""
    return storage.join(output_dir, MODEL_SUBDIR)


def write_export(state_dict: dict[str, torch.Tensor], model_config: dict[str, Any], tokenizer, cfg: TrainConfig,
                 dest: str) -> None:
    """Save ``state_dict`` (fp32) as an HF-layout directory at ``dest`` (local path or URI)."""
    from model import VidLLM, VidLLMConfig

    model = VidLLM(VidLLMConfig.from_dict(model_config))
    model.load_state_dict(state_dict, strict=True)
    with tempfile.TemporaryDirectory(prefix="vidllm-export-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, TRAIN_CONFIG_NAME), "w") as f:
            json.dump(cfg.to_dict(), f, indent=1, sort_keys=True)
        fs, path = storage.filesystem(dest)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.makedirs(path, exist_ok=True)
        for name in sorted(os.listdir(tmp)):
            fs.put_file(os.path.join(tmp, name), f"{path.rstrip('/')}/{name}")


def export_model(module: torch.nn.Module, tokenizer, cfg: TrainConfig, rank: int) -> str:
    """Gather ``module``'s weights and write the export to ``<output_dir>/model``
    (collective; rank 0 writes).

    Returns:
        The export URI.
    """
    import deepspeed
    import torch.distributed as dist

    dest = model_uri(cfg.run.output_dir)
    params = list(module.parameters())
    gather = cfg.deepspeed.zero_stage == 3
    ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if gather else contextlib.nullcontext()
    with ctx:
        if rank == 0:
            state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in module.state_dict().items()}
    if rank == 0:
        write_export(state, module.vidllm_config.to_dict(), tokenizer, cfg, dest)
    dist.barrier()
    return dest


def export_from_checkpoint(checkpoint_dir: str, tag: str, model_config: dict[str, Any], tokenizer,
                           cfg: TrainConfig, dest: str) -> None:
    """Merge a local DeepSpeed checkpoint's ZeRO shards into fp32 weights and write the export to ``dest``.

    Args:
        checkpoint_dir: the ``ds`` directory of a checkpoint (holds ``<tag>/`` and ``latest``).
        tag: DeepSpeed tag (:data:`pipelines.train.checkpointing.DS_TAG`).
        model_config: ``VidLLMConfig.to_dict()`` of the trained model.
        tokenizer: the model's tokenizer (saved alongside).
        cfg: the training config (saved as ``train_config.json``).
        dest: export directory or URI.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=tag)
    # The engine wraps the model in the training module (``TrainingModule.model``): drop that prefix.
    prefix = "model."
    if not all(k.startswith(prefix) for k in state):
        raise ValueError(f"{checkpoint_dir}: not a Vid-LLM training checkpoint (keys without {prefix!r})")
    write_export({k[len(prefix):]: v.float() for k, v in state.items()}, model_config, tokenizer, cfg, dest)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.train.export``: export a checkpoint of a run (e.g. one that died) in HF layout."""
    import argparse
    import sys

    from pipelines.config import run_cli

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train.export",
        description="Merge the ZeRO shards of a training checkpoint (<storage_path>/<run.name>/checkpoint_stepN, "
        "local or s3://) into an HF-layout model directory, as the end of a run would have exported it.")
    parser.add_argument("--checkpoint", required=True, help="the checkpoint directory (with ds/ and COMPLETE.json)")
    parser.add_argument("--run-config", required=True, help="the run's resolved train_config.json")
    parser.add_argument("--dest", required=True, help="export directory or URI")
    args = parser.parse_args(argv)

    def run() -> int:
        from pipelines.train.checkpointing import DS_SUBDIR, DS_TAG
        from pipelines.train.config import TrainConfig
        from pipelines.train.trainer import build_model

        cfg = TrainConfig.from_dict(json.loads(storage.read_bytes(args.run_config)))
        model, tokenizer = build_model(cfg, cfg.tracking.tracking_uri or None)
        with tempfile.TemporaryDirectory(prefix="vidllm-offline-export-") as tmp:
            fs, path = storage.filesystem(args.checkpoint)
            fs.get(path.rstrip("/") + f"/{DS_SUBDIR}/", os.path.join(tmp, DS_SUBDIR) + os.sep, recursive=True)
            export_from_checkpoint(os.path.join(tmp, DS_SUBDIR), DS_TAG, model.vidllm_config.to_dict(), tokenizer,
                                   cfg, args.dest)
        print(args.dest, file=sys.stderr)
        return 0

    return run_cli(run, parser.prog)


if __name__ == "__main__":
    raise SystemExit(main())
