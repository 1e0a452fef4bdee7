"""VGGT-format checkpoints: key mapping, loading at construction, encoder conversion, architecture checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersModel

from model import VidLLM, VidLLMConfig
from model.encoder import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderConfig, check_pretrained_architecture
from model.reconstruction import ReconstructionBranch, ReconstructionConfig
from model.vggt_weights import (
    PATCH_EMBED_PREFIX,
    convert_vggt_encoder,
    read_vggt_checkpoint,
    vggt_patch_embed_to_hf_dinov2,
    vggt_state_dict_to_ours,
)

from .vggt_checkpoint import vggt_state_dict

# The tiny encoder that VGGT's 32-wide tiny patch embed converts into (2 heads, 2x2 position grid at 28 px).
TINY_REG_ENCODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 4,
                    "patch_size": 14, "image_size": 28, "layerscale_value": 1.0, "num_register_tokens": 4}


def _tiny_encoder(dinov2: dict, folder) -> EncoderConfig:
    return EncoderConfig(dinov2=dinov2, pretrained_path=str(folder), out_layers=(1, 2, 2, 2))


def _branch_matches(branch: ReconstructionBranch, vggt: dict[str, torch.Tensor], point_head: bool = True) -> None:
    """Every branch tensor equals the VGGT tensor it was mapped from; nothing is left unmapped."""
    ours = branch.state_dict()
    mapped = vggt_state_dict_to_ours(vggt, point_head=point_head)
    assert set(mapped) == set(ours)
    for key, value in mapped.items():
        assert torch.equal(ours[key], value), key


def test_mapping_covers_every_key_of_the_branch_including_the_point_head():
    cfg = ReconstructionConfig.tiny()
    vggt = vggt_state_dict(cfg)
    ours = vggt_state_dict_to_ours(vggt)
    branch = ReconstructionBranch(cfg)
    result = branch.load_state_dict(ours, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert any(k.startswith("point_head.") for k in ours)
    assert not any(k.startswith(("aggregator.patch_embed", "patch_embed", "track_head")) for k in ours)
    skipped = {k for k in vggt if k.startswith((PATCH_EMBED_PREFIX, "track_head."))}
    assert len(ours) == len(vggt) - len(skipped)
    _branch_matches(branch, vggt)
    out = branch(torch.randn(1, 2, 6, 32), grid=(2, 3), image_hw=(28, 42))
    assert torch.isfinite(out.depth).all() and torch.isfinite(out.world_points).all()


def test_mapping_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unmapped"):
        vggt_state_dict_to_ours({"aggregator.new_module.weight": torch.ones(1)})


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_init_checkpoint_loads_every_key_at_construction(tmp_path, fmt):
    """A tiny checkpoint in VGGT's own names, written as safetensors and as a ``model.pt`` like facebook/VGGT-1B's."""
    vggt = vggt_state_dict()
    path = tmp_path / ("model.safetensors" if fmt == "safetensors" else "model.pt")
    if fmt == "safetensors":
        save_file(vggt, str(path))
    else:
        torch.save(vggt, path)
    read = read_vggt_checkpoint(path)
    assert read.keys() == vggt.keys() and all(torch.equal(read[k], vggt[k]) for k in vggt)
    cfg = dataclasses.replace(ReconstructionConfig.tiny(), init_checkpoint=str(path))
    _branch_matches(ReconstructionBranch(cfg), vggt)


def test_checkpoint_format_is_read_from_content_not_name(tmp_path):
    vggt = vggt_state_dict()
    misnamed = tmp_path / "weights.bin"
    save_file(vggt, str(misnamed))
    assert read_vggt_checkpoint(misnamed).keys() == vggt.keys()
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="neither safetensors nor a torch checkpoint"):
        read_vggt_checkpoint(junk)
    nested = tmp_path / "trainer.pt"
    torch.save({"model": vggt, "epoch": torch.tensor(3)}, nested)
    with pytest.raises(ValueError, match="flat state dict"):
        read_vggt_checkpoint(nested)
    with pytest.raises(FileNotFoundError):
        read_vggt_checkpoint(tmp_path / "missing.pt")


def test_load_vggt_accepts_a_state_dict_and_refuses_incomplete_or_misshaped_ones():
    vggt = vggt_state_dict(seed=3)
    branch = ReconstructionBranch(ReconstructionConfig.tiny())
    branch.load_vggt(vggt)
    _branch_matches(branch, vggt)
    incomplete = {k: v for k, v in vggt.items() if not k.startswith("point_head.scratch.output_conv2")}
    with pytest.raises(ValueError, match=r"state dict does not fit.*point_head\.scratch\.output_conv2"):
        branch.load_vggt(incomplete)
    wide = vggt_state_dict(dataclasses.replace(ReconstructionConfig.tiny(), dim=64, num_heads=4))
    with pytest.raises(ValueError, match="size mismatch"):
        branch.load_vggt(wide)


def test_branch_without_point_head_skips_its_keys():
    cfg = dataclasses.replace(ReconstructionConfig.tiny(), enable_point_head=False)
    vggt = vggt_state_dict()
    branch = ReconstructionBranch(cfg)
    assert branch.point_head is None
    branch.load_vggt(vggt)
    _branch_matches(branch, vggt, point_head=False)
    out = branch(torch.randn(1, 2, 6, 32), grid=(2, 3), image_hw=(28, 42))
    assert out.world_points is None and out.world_points_conf is None


def test_vidllm_loads_vggt_into_its_reconstruction_branch_and_its_checkpoint_config_forgets_the_path(tmp_path):
    vggt = vggt_state_dict()
    path = tmp_path / "model.pt"
    torch.save(vggt, path)
    tiny = VidLLMConfig.tiny()
    cfg = dataclasses.replace(tiny, reconstruction=dataclasses.replace(tiny.reconstruction,
                                                                       init_checkpoint=str(path)))
    model = VidLLM(cfg)
    _branch_matches(model.reconstruction, vggt)
    assert model.vidllm_config.reconstruction.init_checkpoint is None
    model.save_pretrained(tmp_path / "ckpt")
    path.unlink()  # the export holds the weights
    loaded = VidLLM.from_pretrained(tmp_path / "ckpt")
    _branch_matches(loaded.reconstruction, vggt)


def _reference_dinov2(vggt: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """facebookresearch/dinov2's ViT forward written from VGGT's raw (fused-qkv) weights: the ground truth for the
    conversion. Returns the final-LayerNormed tokens ``[N, 1 + R + P, C]`` (CLS, registers, patches)."""
    w = {k[len(PATCH_EMBED_PREFIX):]: v for k, v in vggt.items() if k.startswith(PATCH_EMBED_PREFIX)}
    x = F.conv2d(pixels, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    n, c = x.shape[0], x.shape[-1]
    x = torch.cat((w["cls_token"].expand(n, -1, -1), x), dim=1) + w["pos_embed"]
    x = torch.cat((x[:, :1], w["register_tokens"].expand(n, -1, -1), x[:, 1:]), dim=1)
    layers = len({k.split(".")[1] for k in w if k.startswith("blocks.")})
    for i in range(layers):
        b = {k[len(f"blocks.{i}."):]: v for k, v in w.items() if k.startswith(f"blocks.{i}.")}
        y = F.layer_norm(x, (c,), b["norm1.weight"], b["norm1.bias"], eps=1e-6)
        qkv = F.linear(y, b["attn.qkv.weight"], b["attn.qkv.bias"]).reshape(n, -1, 3, heads, c // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, -1, c)
        x = x + b["ls1.gamma"] * F.linear(att, b["attn.proj.weight"], b["attn.proj.bias"])
        y = F.layer_norm(x, (c,), b["norm2.weight"], b["norm2.bias"], eps=1e-6)
        mlp = F.linear(F.gelu(F.linear(y, b["mlp.fc1.weight"], b["mlp.fc1.bias"])), b["mlp.fc2.weight"],
                       b["mlp.fc2.bias"])
        x = x + b["ls2.gamma"] * mlp
    return F.layer_norm(x, (c,), w["norm.weight"], w["norm.bias"], eps=1e-6)


def test_convert_vggt_encoder_writes_a_folder_that_hf_and_our_encoder_load_with_the_same_features(tmp_path):
    vggt = {k: v * (50.0 if "proj.weight" in k or "fc" in k else 1.0) for k, v in vggt_state_dict().items()}
    folder = convert_vggt_encoder(vggt, tmp_path / "dinov2-reg", num_attention_heads=2)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    hf = Dinov2WithRegistersModel.from_pretrained(folder, local_files_only=True).eval()
    assert (hf.config.num_register_tokens, hf.config.hidden_size, hf.config.image_size) == (4, 32, 28)
    torch.testing.assert_close(hf.embeddings.register_tokens, vggt[PATCH_EMBED_PREFIX + "register_tokens"])
    encoder = Encoder(_tiny_encoder(TINY_REG_ENCODER, folder))
    frames = torch.rand(1, 3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    pixels = (frames[0] - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    reference = _reference_dinov2(vggt, pixels, heads=2)
    with torch.no_grad():
        ours = encoder.eval()(frames).tokens[0]
        theirs = hf(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(theirs, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, reference[:, 1 + 4:], atol=1e-5, rtol=1e-5)  # CLS and 4 registers dropped
    assert reference[:, 1:5].abs().sum() > 0  # the register tokens are real, not zero-filled


def test_convert_vggt_encoder_refuses_a_state_dict_without_a_dinov2(tmp_path):
    vggt = {k: v for k, v in vggt_state_dict().items() if not k.startswith(PATCH_EMBED_PREFIX)}
    with pytest.raises(ValueError, match="not a VGGT/DINOv2 checkpoint"):
        convert_vggt_encoder(vggt, tmp_path / "out")


def test_patch_embed_conversion_splits_qkv_and_rejects_unknown_keys():
    vggt = vggt_state_dict()
    hf = vggt_patch_embed_to_hf_dinov2(vggt)
    qkv = vggt[PATCH_EMBED_PREFIX + "blocks.1.attn.qkv.weight"]
    torch.testing.assert_close(hf["encoder.layer.1.attention.q_proj.weight"], qkv[:32])
    torch.testing.assert_close(hf["encoder.layer.1.attention.k_proj.weight"], qkv[32:64])
    torch.testing.assert_close(hf["encoder.layer.1.attention.v_proj.weight"], qkv[64:])
    with pytest.raises(ValueError, match="no HF DINOv2 counterpart"):
        vggt_patch_embed_to_hf_dinov2({PATCH_EMBED_PREFIX + "blocks.0.attn.rope.freq": torch.ones(1)})


def test_base_encoder_is_vggts_dinov2_with_registers():
    dinov2 = EncoderConfig.base().dinov2
    assert dinov2["num_register_tokens"] == 4 and dinov2["hidden_size"] == 1024
    assert dinov2["num_hidden_layers"] == 24 and dinov2["num_attention_heads"] == 16
    assert dinov2["patch_size"] == 14 and dinov2["image_size"] == 518
    assert EncoderConfig.base().hf_config().model_type == "dinov2_with_registers"


def test_a_plain_dinov2_folder_is_refused_as_with_registers_and_vice_versa(tmp_path):
    """Loading a plain DINOv2 as DINOv2-with-registers would silently leave the 4 register tokens at zero."""
    plain = {k: v for k, v in TINY_REG_ENCODER.items() if k != "num_register_tokens"}
    Dinov2Model(Dinov2Config(**plain)).save_pretrained(tmp_path / "plain")
    registers = _tiny_encoder(TINY_REG_ENCODER, tmp_path / "plain")
    with pytest.raises(ValueError, match=r"is dinov2 with 0 register tokens.*asks for dinov2_with_registers with 4"):
        Encoder(registers)
    with pytest.raises(ValueError, match="num_register_tokens"):
        Encoder(registers)
    with pytest.raises(ValueError, match="differs in model_type, num_register_tokens"):  # the check on its own
        check_pretrained_architecture(str(tmp_path / "plain"), registers.hf_config())
    convert_vggt_encoder(vggt_state_dict(), tmp_path / "reg", num_attention_heads=2)
    as_plain = _tiny_encoder(plain, tmp_path / "reg")
    with pytest.raises(ValueError, match=r"is dinov2_with_registers with 4 register tokens.*asks for dinov2 with 0"):
        Encoder(as_plain)
    three = _tiny_encoder({**TINY_REG_ENCODER, "num_register_tokens": 3}, tmp_path / "reg")
    with pytest.raises(ValueError, match="4 register tokens.*3 register tokens"):
        Encoder(three)
    Encoder(_tiny_encoder(TINY_REG_ENCODER, tmp_path / "reg"))  # the matching one loads
