"""VGGT checkpoints in Vid-LLM: reading them, renaming their keys, converting their DINOv2 to an HF folder.

A VGGT-format checkpoint (``facebook/VGGT-1B``'s ``model.pt``, or the same state dict as safetensors) holds

* ``aggregator.patch_embed.*``: a DINOv2-L/14 with 4 registers in facebookresearch/dinov2 naming. Vid-LLM's shared
  encoder and the Stage-1 geometry teacher are HF ``Dinov2WithRegistersModel``s; :func:`convert_vggt_encoder`
  writes this part as an HF folder that both load (``EncoderConfig.pretrained_path``, the teachers stage).
* ``aggregator.{camera,register}_token``, ``aggregator.{frame,global}_blocks.*``, ``camera_head.*``,
  ``depth_head.*`` and ``point_head.*``: the reconstruction branch, renamed by :func:`vggt_state_dict_to_ours`
  (prefixes only; our parameter names follow VGGT's) and loaded by ``ReconstructionConfig.init_checkpoint``.
* ``track_head.*``: not used by Vid-LLM.

Only local files are read here (``model/`` does no I/O beyond the local file system); the pipelines download
remote checkpoints first. ``docs/vggt_key_mapping.md`` has the full key tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

PATCH_EMBED_PREFIX = "aggregator.patch_embed."

# VGGT key prefix -> our ReconstructionBranch key prefix.
VGGT_PREFIX_MAP: dict[str, str] = {
    "aggregator.camera_token": "alternating.camera_token",
    "aggregator.register_token": "alternating.register_token",
    "aggregator.frame_blocks.": "alternating.frame_blocks.",
    "aggregator.global_blocks.": "alternating.global_blocks.",
    "camera_head.": "camera_head.",
    "depth_head.": "depth_head.",
    "point_head.": "point_head.",
}
# VGGT parts with no counterpart in the reconstruction branch: the DINOv2 patch embed is the shared encoder's
# (convert it with convert_vggt_encoder); the track head is not used by Vid-LLM.
VGGT_SKIPPED_PREFIXES: tuple[str, ...] = (PATCH_EMBED_PREFIX, "track_head.")

# DINOv2 (all sizes: S/14 384 = 6 x 64, B 768 = 12 x 64, L 1024 = 16 x 64, g 1536 = 24 x 64) uses 64-wide heads.
DINOV2_HEAD_DIM = 64


def read_vggt_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a VGGT-format state dict from a local safetensors file or a torch checkpoint (``model.pt``).

    The format is recognised from the file's content (a safetensors file starts with an 8-byte header length and
    a JSON header; anything else is handed to ``torch.load(weights_only=True)``), never from its name.

    Args:
        path: local file.

    Returns:
        The flat ``{key: tensor}`` state dict, on the CPU.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is neither format, or holds something other than a flat state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGGT checkpoint {path} is not a file")
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"VGGT checkpoint {path}: neither safetensors nor a torch checkpoint ({err})") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = sorted(state)[:5] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"VGGT checkpoint {path}: expected a flat state dict of tensors (as facebook/VGGT-1B's "
                         f"model.pt), got {keys}")
    return dict(state)


def vggt_state_dict_to_ours(state_dict: Mapping[str, torch.Tensor], point_head: bool = True
                            ) -> dict[str, torch.Tensor]:
    """Rename a VGGT (``facebook/VGGT-1B``) state dict to ``ReconstructionBranch`` keys.

    Args:
        state_dict: VGGT ``model.state_dict()`` (keys like ``aggregator.frame_blocks.0.attn.qkv.weight``).
        point_head: whether the target branch has a point head (``ReconstructionConfig.enable_point_head``);
            without one, ``point_head.*`` is skipped.

    Returns:
        A state dict for ``ReconstructionBranch(...).load_state_dict(..., strict=True)``. Keys under
        :data:`VGGT_SKIPPED_PREFIXES` are left out.

    Raises:
        ValueError: A key matches neither a mapped nor a skipped prefix (not a VGGT checkpoint, or a new version).
    """
    skipped = VGGT_SKIPPED_PREFIXES if point_head else (*VGGT_SKIPPED_PREFIXES, "point_head.")
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith(skipped):
            continue
        prefix = next((p for p in VGGT_PREFIX_MAP if key.startswith(p)), None)
        if prefix is None:
            unknown.append(key)
            continue
        ours[VGGT_PREFIX_MAP[prefix] + key[len(prefix) :]] = value
    if unknown:
        raise ValueError(f"VGGT state dict has {len(unknown)} unmapped keys, e.g. {unknown[:5]}")
    return ours


def vggt_patch_embed_to_hf_dinov2(
    state_dict: Mapping[str, torch.Tensor], prefix: str = PATCH_EMBED_PREFIX
) -> dict[str, torch.Tensor]:
    """Convert the DINOv2 inside a VGGT checkpoint (facebookresearch/dinov2 naming) to HF ``Dinov2*Model`` keys.

    The paper's geometry teacher is "the DINO encoder initialised from VGGT"; VGGT-1B stores a DINOv2-L/14 with
    4 registers under ``aggregator.patch_embed.``. The fused ``attn.qkv`` projection is split into HF's
    ``q_proj``/``k_proj``/``v_proj`` (rows 0..C-1, C..2C-1, 2C..3C-1). Keys outside ``prefix`` are ignored.

    Args:
        state_dict: VGGT (or plain DINOv2 hub, with ``prefix=""``) state dict.
        prefix: Key prefix of the ViT inside ``state_dict``.

    Returns:
        State dict for ``Dinov2WithRegistersModel`` (or ``Dinov2Model`` when the source has no registers).

    Raises:
        ValueError: A key under ``prefix`` has no HF counterpart.
    """
    renames = {
        "cls_token": "embeddings.cls_token",
        "mask_token": "embeddings.mask_token",
        "register_tokens": "embeddings.register_tokens",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    block_renames = {
        "attn.proj.": "attention.o_proj.",
        "ls1.gamma": "layer_scale1.lambda1",
        "ls2.gamma": "layer_scale2.lambda1",
        "norm1.": "norm1.",
        "norm2.": "norm2.",
        "mlp.": "mlp.",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name in renames:
            out[renames[name]] = value
            continue
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(f"VGGT patch-embed key {key!r} has no HF DINOv2 counterpart")
        layer, rest = f"encoder.layer.{parts[1]}.", parts[2]
        if rest.startswith("attn.qkv."):
            q, k, v = value.chunk(3, dim=0)
            suffix = rest[len("attn.qkv.") :]
            for proj, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{layer}attention.{proj}.{suffix}"] = part
            continue
        src = next((s for s in block_renames if rest.startswith(s)), None)
        if src is None:
            raise ValueError(f"VGGT patch-embed key {key!r} has no HF DINOv2 counterpart")
        out[layer + block_renames[src] + rest[len(src) :]] = value
    return out


def vggt_encoder_config(state_dict: Mapping[str, torch.Tensor], prefix: str = PATCH_EMBED_PREFIX,
                        num_attention_heads: int | None = None) -> Dinov2WithRegistersConfig:
    """The HF ``Dinov2WithRegistersConfig`` of the DINOv2 under ``prefix``, read off its tensor shapes.

    Width, depth, patch size, MLP ratio, register count and the position-embedding grid (``image_size``) follow
    from the shapes; the head count does not, so it defaults to DINOv2's 64-channel heads (16 for ViT-L).

    Raises:
        ValueError: the state dict has no DINOv2 under ``prefix``, no register tokens, or a non-square
            position-embedding grid.
    """
    def get(name: str) -> torch.Tensor:
        if prefix + name not in state_dict:
            raise ValueError(f"no {prefix + name!r} in the VGGT state dict: not a VGGT/DINOv2 checkpoint")
        return state_dict[prefix + name]

    hidden = int(get("cls_token").shape[-1])
    registers = int(get("register_tokens").shape[1])
    if registers < 1:
        raise ValueError(f"{prefix}register_tokens is empty: not a DINOv2-with-registers encoder")
    patch = int(get("patch_embed.proj.weight").shape[-1])
    num_pos = int(get("pos_embed").shape[1]) - 1
    side = math.isqrt(num_pos)
    if side * side != num_pos:
        raise ValueError(f"{prefix}pos_embed holds {num_pos} patch positions, not a square grid")
    layers = {int(k[len(prefix) :].split(".")[1]) for k in state_dict if k.startswith(prefix + "blocks.")}
    if layers != set(range(len(layers))) or not layers:
        raise ValueError(f"{prefix}blocks.* are not numbered 0..n-1: {sorted(layers)[:10]}")
    mlp_hidden = int(get("blocks.0.mlp.fc1.weight").shape[0])
    heads = num_attention_heads or hidden // DINOV2_HEAD_DIM
    return Dinov2WithRegistersConfig(
        hidden_size=hidden, num_hidden_layers=len(layers), num_attention_heads=heads,
        mlp_ratio=mlp_hidden // hidden, patch_size=patch, image_size=side * patch,
        num_register_tokens=registers, layerscale_value=1.0,
    )  # fmt: skip


def convert_vggt_encoder(state_dict: Mapping[str, torch.Tensor], out_dir: str | Path, *,
                         prefix: str = PATCH_EMBED_PREFIX, num_attention_heads: int | None = None,
                         dtype: torch.dtype = torch.float32) -> Path:
    """Write the DINOv2 of a VGGT-format state dict as an HF ``Dinov2WithRegistersModel`` folder.

    The folder (``config.json`` + ``model.safetensors``) loads with ``Dinov2WithRegistersModel.from_pretrained``
    as the Stage-1 geometry teacher and as the shared encoder (``EncoderConfig.pretrained_path``;
    ``EncoderConfig.base()`` describes exactly VGGT-1B's DINOv2-L/14 with 4 registers at 518 px).

    Args:
        state_dict: a VGGT state dict (e.g. from :func:`read_vggt_checkpoint`); keys outside ``prefix`` are
            ignored.
        out_dir: local directory to write (created; existing files of the same names are replaced).
        prefix: key prefix of the DINOv2 inside ``state_dict``.
        num_attention_heads: heads of the ViT (not recoverable from the weights); ``None`` = DINOv2's
            64-channel heads.
        dtype: dtype of the written weights.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: the DINOv2 part is missing, has keys without an HF counterpart, or leaves HF weights unset.
    """
    config = vggt_encoder_config(state_dict, prefix, num_attention_heads)
    weights = vggt_patch_embed_to_hf_dinov2(state_dict, prefix)
    model = Dinov2WithRegistersModel(config)
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"VGGT encoder under {prefix!r} does not fit {type(model).__name__}: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"VGGT encoder under {prefix!r} does not match {type(model).__name__}: missing "
                         f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    out = Path(out_dir)
    model.to(dtype).save_pretrained(out)  # config.json + model.safetensors
    return out
