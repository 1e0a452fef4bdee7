"""Consolidate the trained weights out of ZeRO into the HF layout that ``VidLLM.from_pretrained`` loads.

Layout (transformers' sharded-checkpoint convention): ``config.json``, the weights, the processor (its tokenizer
files and ``processor_config.json``) and ``train_config.json`` (the resolved training config). The weights are fp32
safetensors: one ``model.safetensors`` when they fit one shard of ``run.export_shard_mib``, else
``model-0000k-of-0000n.safetensors`` files plus ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {name: file}}``).

What is written is the **fp32 master weights**: under bf16 the module holds bf16 copies and the optimizer the
fp32 masters, partitioned across ranks (ZeRO-1/2: the optimizer state; ZeRO-3: parameters too). Two routes:

* :func:`export_model` at the end of training, on every rank. :func:`plan_export` (the same on every rank) packs
  the tensors, in state-dict order, into shards and gives shard ``k`` to rank ``k % world``. For every trainable
  parameter all ranks join DeepSpeed's ``safe_get_full_fp32_param`` (a collective that assembles the master from
  its partitions) and only the shard's owner keeps it; frozen parameters and buffers never change, so their owner
  keeps the fp32 copy :func:`frozen_fp32_copies` took before DeepSpeed cast the module. Each rank then writes its own
  shards straight to the destination (``run.output_dir``, local or object storage): nothing passes through one
  rank, the driver or the head node, and no rank holds more than its shards.
* :func:`export_from_checkpoint` offline, from a DeepSpeed checkpoint directory (e.g. the last complete
  checkpoint of a run that died): DeepSpeed's ``zero_to_fp32`` merges the per-rank fp32 optimizer shards (frozen
  parameters come from the module states, in the precision they were trained in).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from pipelines import storage
from pipelines.train.config import TrainConfig

MODEL_SUBDIR = "model"
TRAIN_CONFIG_NAME = "train_config.json"
SINGLE_WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MIB = 2**20


def model_uri(output_dir: str) -> str:
    """Where a run's exported model lives."""
    return storage.join(output_dir, MODEL_SUBDIR)


@dataclass(frozen=True)
class ExportPlan:
    """Which tensor goes to which shard file and which rank writes it.

    Attributes:
        files: shard file names, in order.
        names: the tensor names of each shard (state-dict order).
        owners: the rank that writes each shard.
        numels: elements of every tensor (all shards).
    """

    files: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]
    owners: tuple[int, ...]
    numels: dict[str, int]

    def owner_of(self) -> dict[str, int]:
        """Tensor name -> writing rank."""
        return {n: self.owners[k] for k, names in enumerate(self.names) for n in names}

    def index(self) -> dict[str, Any]:
        """The ``model.safetensors.index.json`` content (fp32 sizes)."""
        weight_map = {n: self.files[k] for k, names in enumerate(self.names) for n in names}
        return {"metadata": {"total_size": 4 * sum(self.numels.values())}, "weight_map": weight_map}


def export_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor an export holds, by name, in state-dict order: each parameter once (a tied parameter under its
    first name, as ``named_parameters`` gives it) and the persistent buffers."""
    persistent = set(model.state_dict(keep_vars=True))
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())
    tensors.update((n, b) for n, b in model.named_buffers() if n in persistent)
    return tensors


def _numel(t: torch.Tensor) -> int:
    """Elements of the full tensor (a ZeRO-3 partitioned parameter reports its full size in ``ds_numel``)."""
    return int(getattr(t, "ds_numel", t.numel()))


def plan_export(model: torch.nn.Module, world: int, shard_mib: int) -> ExportPlan:
    """Pack :func:`export_tensors` into shards of at most ``shard_mib`` MiB of fp32 (a larger tensor gets a shard of
    its own), dealt round-robin to ``world`` ranks. Depends only on the model's structure, so every rank computes
    the same plan."""
    limit = shard_mib * MIB
    numels = {n: _numel(t) for n, t in export_tensors(model).items()}
    shards: list[list[str]] = [[]]
    size = 0
    for name, numel in numels.items():
        if shards[-1] and size + 4 * numel > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += 4 * numel
    n = len(shards)
    files = (SINGLE_WEIGHTS_NAME,) if n == 1 else tuple(f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n))
    return ExportPlan(files, tuple(tuple(s) for s in shards), tuple(k % world for k in range(n)), numels)


def frozen_fp32_copies(model: torch.nn.Module, plan: ExportPlan, rank: int) -> dict[str, torch.Tensor]:
    """fp32 CPU copies of the frozen parameters and buffers whose shard ``rank`` writes, taken before DeepSpeed
    casts the module to bf16 (they are not in the optimizer, so no master copy of them exists)."""
    owner = plan.owner_of()
    return {n: t.detach().to("cpu", torch.float32, copy=True) for n, t in export_tensors(model).items()
            if owner[n] == rank and not (isinstance(t, torch.nn.Parameter) and t.requires_grad)}


def _write_file(dest: str, name: str, write_local) -> None:
    """``write_local(path)`` writes the file locally; then it goes to ``dest/name`` (a local path is written in place)."""
    fs, path = storage.filesystem(dest)
    target = f"{path.rstrip('/')}/{name}"
    if "://" not in dest or dest.startswith("file://"):
        write_local(target)
        return
    with tempfile.TemporaryDirectory(prefix="vidllm-export-") as tmp:
        local = os.path.join(tmp, name)
        write_local(local)
        fs.put_file(local, target)


def write_shard(dest: str, file: str, tensors: dict[str, torch.Tensor]) -> None:
    """Write one safetensors shard to ``dest/file``."""
    from safetensors.torch import save_file

    _write_file(dest, file, lambda path: save_file(tensors, path, metadata={"format": "pt"}))


def write_metadata(dest: str, plan: ExportPlan, model_config: dict[str, Any], processor, cfg: TrainConfig) -> None:
    """``config.json``, the index (for more than one shard), the processor files and ``train_config.json``."""
    from model import VidLLMConfig, VidLLMHFConfig
    from model.processor import as_processor

    hf_config = VidLLMHFConfig(vidllm=model_config)
    hf_config.architectures = ["VidLLM"]
    with tempfile.TemporaryDirectory(prefix="vidllm-export-meta-") as tmp:
        hf_config.save_pretrained(tmp)
        as_processor(processor, VidLLMConfig.from_dict(model_config)).save_pretrained(tmp)
        with open(os.path.join(tmp, TRAIN_CONFIG_NAME), "w") as f:
            json.dump(cfg.to_dict(), f, indent=1, sort_keys=True)
        if len(plan.files) > 1:
            with open(os.path.join(tmp, INDEX_NAME), "w") as f:
                json.dump(plan.index(), f, indent=1)
        fs, path = storage.filesystem(dest)
        for name in sorted(os.listdir(tmp)):
            fs.put_file(os.path.join(tmp, name), f"{path.rstrip('/')}/{name}")


def _clear(dest: str) -> None:
    fs, path = storage.filesystem(dest)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)


def export_model(model: torch.nn.Module, processor, cfg: TrainConfig, rank: int, plan: ExportPlan,
                 frozen: dict[str, torch.Tensor]) -> str:
    """Write the fp32 masters of the engine's ``model`` to ``<output_dir>/model`` (collective: every rank calls it).

    Args:
        model: the model inside the DeepSpeed engine.
        processor: the model's :class:`model.processor.VidLLMProcessor` (or a bare tokenizer), saved alongside.
        cfg: the training config (saved as ``train_config.json``; ``run.output_dir`` is the destination).
        rank: this rank.
        plan: :func:`plan_export` of the model, the same on every rank.
        frozen: this rank's :func:`frozen_fp32_copies`.

    Returns:
        The export URI.
    """
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param

    dest = model_uri(cfg.run.output_dir)
    if rank == 0:
        _clear(dest)
    dist.barrier()
    owner = plan.owner_of()
    mine: dict[str, torch.Tensor] = {}
    for name, tensor in export_tensors(model).items():
        if name in frozen:
            mine[name] = frozen[name]
            continue
        if not (isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad):
            continue  # frozen: its owner holds the fp32 copy
        full = safe_get_full_fp32_param(tensor)  # collective over the data-parallel ranks
        if full is None:  # no optimizer partition (fp32 ZeRO-1/2 keeps the full fp32 parameter itself)
            full = tensor.detach()
        if owner[name] == rank:
            shape = getattr(tensor, "ds_shape", tensor.shape)
            mine[name] = full.detach().to("cpu", torch.float32).reshape(shape).clone()
    for k, file in enumerate(plan.files):
        if plan.owners[k] == rank:
            write_shard(dest, file, {n: mine[n].contiguous() for n in plan.names[k]})
    if rank == 0:
        write_metadata(dest, plan, model.vidllm_config.to_dict(), processor, cfg)
    dist.barrier()
    return dest


def write_export(state_dict: dict[str, torch.Tensor], model_config: dict[str, Any], processor, cfg: TrainConfig,
                 dest: str) -> None:
    """Write a full fp32 state dict as an export at ``dest`` (one process), checked against a model built from
    ``model_config`` (every tensor present, no extra one)."""
    from model import VidLLM, VidLLMConfig

    model = VidLLM(VidLLMConfig.from_dict(model_config))
    model.load_state_dict(state_dict, strict=True)
    plan = plan_export(model, 1, cfg.run.export_shard_mib)
    tensors = {n: t.detach().to("cpu", torch.float32) for n, t in export_tensors(model).items()}
    _clear(dest)
    for k, file in enumerate(plan.files):
        write_shard(dest, file, {n: tensors[n].contiguous() for n in plan.names[k]})
    write_metadata(dest, plan, model.vidllm_config.to_dict(), processor, cfg)


def export_from_checkpoint(checkpoint_dir: str, tag: str, model_config: dict[str, Any], processor,
                           cfg: TrainConfig, dest: str) -> None:
    """Merge a local DeepSpeed checkpoint's ZeRO shards into fp32 weights and write the export to ``dest``.

    Args:
        checkpoint_dir: the ``ds`` directory of a checkpoint (holds ``<tag>/`` and ``latest``).
        tag: DeepSpeed tag (:data:`pipelines.train.checkpointing.DS_TAG`).
        model_config: ``VidLLMConfig.to_dict()`` of the trained model.
        processor: the model's :class:`model.processor.VidLLMProcessor` (or a bare tokenizer), saved alongside.
        cfg: the training config (saved as ``train_config.json``).
        dest: export directory or URI.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=tag)
    # The engine wraps the model in the training module (``TrainingModule.model``): drop that prefix.
    prefix = "model."
    if not all(k.startswith(prefix) for k in state):
        raise ValueError(f"{checkpoint_dir}: not a Vid-LLM training checkpoint (keys without {prefix!r})")
    write_export({k[len(prefix):]: v.float() for k, v in state.items()}, model_config, processor, cfg, dest)


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
        model, processor = build_model(cfg, cfg.tracking.tracking_uri or None)
        with tempfile.TemporaryDirectory(prefix="vidllm-offline-export-") as tmp:
            fs, path = storage.filesystem(args.checkpoint)
            fs.get(path.rstrip("/") + f"/{DS_SUBDIR}/", os.path.join(tmp, DS_SUBDIR) + os.sep, recursive=True)
            export_from_checkpoint(os.path.join(tmp, DS_SUBDIR), DS_TAG, model.vidllm_config.to_dict(), processor,
                                   cfg, args.dest)
        print(args.dest, file=sys.stderr)
        return 0

    return run_cli(run, parser.prog)


if __name__ == "__main__":
    raise SystemExit(main())
