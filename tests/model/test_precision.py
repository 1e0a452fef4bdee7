"""bf16 where it is safe, fp32 where it is not: geometry, targets and bin probabilities stay fp32 under bf16."""

from __future__ import annotations

import pytest
import torch

from model import VidLLMBatch
from model.config import LossWeights
from model.geometry import backproject_depth, voxel_pool
from model.losses import MultitaskLoss

from .conftest import make_batch

ALL_LOSSES = LossWeights(geo=1, lang=1, sc=1, camera=5, depth=1, point=1, metric_depth=1, lm=1, box=1)


def test_voxel_pool_counts_past_256_and_averages_in_fp32_under_bf16():
    """1000 patches in one 0.2 m voxel: bf16 cannot count past 256 (the centre came out at ~4.3 m)."""
    gen = torch.Generator().manual_seed(0)
    n = 1000
    points = 1.1 + 0.08 * (torch.rand(1, n, 3, generator=gen) - 0.5)  # all inside the voxel [1.0, 1.2)^3
    tokens = 15.0 + torch.randn(1, n, 8, generator=gen)
    exact = voxel_pool(tokens.double(), points.double())
    fp32 = voxel_pool(tokens, points)
    bf16 = voxel_pool(tokens.bfloat16(), points.bfloat16())
    assert bf16.counts.dtype == torch.float32 and bf16.counts[0].tolist() == [1000.0]
    assert bf16.centres.dtype == torch.float32 and bf16.tokens.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.centres, exact.centres.float(), atol=2e-3, rtol=0)
    torch.testing.assert_close(fp32.centres, exact.centres.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(bf16.tokens.float(), fp32.tokens, rtol=1.6e-2, atol=1e-5)  # bf16 tolerance
    torch.testing.assert_close(fp32.tokens, exact.tokens.float(), atol=1e-5, rtol=0)


def test_voxel_pool_gradients_reach_bf16_tokens():
    tokens = torch.randn(1, 5, 4, dtype=torch.bfloat16, requires_grad=True)
    points = torch.zeros(1, 5, 3)
    voxel_pool(tokens, points).tokens.float().sum().backward()
    assert tokens.grad.dtype == torch.bfloat16
    torch.testing.assert_close(tokens.grad.float(), torch.full((1, 5, 4), 0.2), rtol=1e-2, atol=1e-3)


def test_batch_to_casts_model_inputs_only(tokenizer):
    batch = make_batch(tokenizer).to("cpu", torch.bfloat16)
    assert batch.frames.dtype == batch.teacher_geo.dtype == batch.teacher_sem.dtype == torch.bfloat16
    for name in ("depth", "extrinsics", "intrinsics", "boxes"):
        assert getattr(batch, name).dtype == torch.float32, name
    assert batch.input_ids.dtype == batch.labels.dtype == torch.long and batch.box_mask.dtype == torch.bool


def test_backprojection_under_bf16_autocast_is_fp32_exact():
    gen = torch.Generator().manual_seed(0)
    depth = 2.0 + 3.0 * torch.rand(1, 2, 6, 7, generator=gen)
    extrinsics = torch.eye(3, 4).expand(1, 2, 3, 4).clone()
    extrinsics[..., 3] = torch.tensor([3.1, -2.7, 1.3])
    intrinsics = torch.tensor([[500.0, 0.0, 3.0], [0.0, 500.0, 2.5], [0.0, 0.0, 1.0]]).expand(1, 2, 3, 3)
    reference = backproject_depth(depth, extrinsics, intrinsics, (6, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        points = backproject_depth(depth, extrinsics, intrinsics, (6, 7))
    assert points.dtype == torch.float32
    torch.testing.assert_close(points, reference, atol=1e-5, rtol=0)


def _assert_geometry_is_fp32(out) -> None:
    rec, md, scene = out.reconstruction, out.metric_depth, out.scene
    for name in ("pose_enc", "extrinsics", "intrinsics", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert getattr(rec, name).dtype == torch.float32, f"reconstruction.{name}"
    assert all(p.dtype == torch.float32 for p in rec.pose_enc_list)
    for name in ("depth", "bin_centers", "bin_probs"):
        assert getattr(md, name).dtype == torch.float32, f"metric_depth.{name}"
    torch.testing.assert_close(md.bin_probs.sum(dim=2), torch.ones_like(md.bin_probs[:, :, 0]), atol=1e-5, rtol=0)
    for name in ("centres", "depth", "extrinsics", "intrinsics", "scale"):
        assert getattr(scene, name).dtype == torch.float32, f"scene.{name}"
    assert out.grounding.boxes.dtype == torch.float32


@pytest.mark.parametrize("mode", ["bf16_weights", "autocast"])
def test_bf16_forward_keeps_geometry_and_bin_probabilities_fp32(tiny_model, tokenizer, mode):
    batch = make_batch(tokenizer)
    if mode == "bf16_weights":
        model, batch = tiny_model.to(torch.bfloat16), batch.to("cpu", torch.bfloat16)
        out = model(batch)
        assert out.adapter.geom.dtype == torch.bfloat16  # the network itself runs in bf16
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tiny_model(batch)
        assert out.adapter.geom.dtype == torch.bfloat16
    _assert_geometry_is_fp32(out)
    assert batch.depth.dtype == torch.float32
    total, terms = MultitaskLoss(ALL_LOSSES)(out, batch)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert all(v.dtype == torch.float32 for v in terms.values())


def test_stage1_batch_in_bf16(tiny_model, tokenizer):
    full = make_batch(tokenizer)
    batch = VidLLMBatch(frames=full.frames, teacher_geo=full.teacher_geo, teacher_sem=full.teacher_sem)
    out = tiny_model.to(torch.bfloat16)(batch.to("cpu", torch.bfloat16))
    total, _ = MultitaskLoss(LossWeights(geo=1, lang=1, sc=1))(out, batch)
    assert torch.isfinite(total)
