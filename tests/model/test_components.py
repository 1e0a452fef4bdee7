"""The 3D-VL side's components in isolation: 3D-VL branch, box head, distillation projections, configs and the batch."""

from __future__ import annotations

import json

import pytest
import torch

from model.batch import VidLLMBatch
from model.config import DistillationConfig, GroundingConfig, VidLLMConfig, VLBranchConfig
from model.distillation import DistillationProjections, infer_teacher_grid, resample_tokens
from model.grounding import BoxHead
from model.vl_branch import VLBranch, sample_at_patch_centres


def _camera(b: int, s: int, size: int = 28):
    k = torch.tensor([[30.0, 0.0, (size - 1) / 2], [0.0, 30.0, (size - 1) / 2], [0.0, 0.0, 1.0]])
    return torch.eye(3, 4).expand(b, s, 3, 4).clone(), k.expand(b, s, 3, 3).clone()


def test_sample_at_patch_centres_is_point_sample():
    u = torch.arange(28.0)
    depth = (1.0 + u).expand(1, 1, 28, 28)  # linear in u: bilinear sample = value at the centre pixel
    sampled = sample_at_patch_centres(depth, (2, 2))
    assert torch.allclose(sampled[0, 0, 0], torch.tensor([7.5, 21.5]))


def test_vl_branch_shapes_detached_geometry_and_masking():
    torch.manual_seed(0)
    branch = VLBranch(VLBranchConfig(voxel_size_m=0.05, max_tokens=6, pos_hidden=8), in_dim=16, out_dim=24)
    lang = torch.randn(2, 3, 4, 16, requires_grad=True)
    depth = torch.full((2, 3, 28, 28), 2.0, requires_grad=True)
    depth.data[1, :, :, :] = -1.0  # row 1: no valid geometry at all
    extr, k = _camera(2, 3)
    extr.requires_grad_(True)
    out = branch(lang, (2, 2), (28, 28), depth, extr, k)
    assert out.tokens.shape == (2, 4, 24) and out.mask.shape == (2, 4) and out.centres.shape == (2, 4, 3)
    assert out.mask[0].sum() == 4 and not out.mask[1].any()  # 4 patch rays, identical cameras -> 4 voxels
    out.tokens[out.mask].sum().backward()
    assert lang.grad is not None and lang.grad.abs().sum() > 0
    assert depth.grad is None and extr.grad is None  # geometry is detached: VL never updates reconstruction
    assert torch.allclose(out.centres[0, :, 2], torch.full((4,), 2.0))


def test_vl_branch_voxel_cap():
    branch = VLBranch(VLBranchConfig(voxel_size_m=0.01, max_tokens=3, pos_hidden=8), in_dim=8, out_dim=8)
    extr, k = _camera(1, 2)
    extr[0, 1, 0, 3] = -1.0  # second camera 1 m to the side: 8 distinct voxels before the cap
    out = branch(torch.randn(1, 2, 4, 8), (2, 2), (28, 28), torch.full((1, 2, 28, 28), 2.0), extr, k)
    assert out.tokens.shape == (1, 3, 8) and bool(out.mask.all())


def test_vl_branch_rejects_grid_mismatch():
    branch = VLBranch(VLBranchConfig(), in_dim=8, out_dim=8)
    extr, k = _camera(1, 1)
    with pytest.raises(ValueError, match="patch grid"):
        branch(torch.randn(1, 1, 5, 8), (2, 2), (28, 28), torch.ones(1, 1, 28, 28), extr, k)


def test_box_head_shapes_positive_sizes_and_empty_scene():
    torch.manual_seed(0)
    head = BoxHead(GroundingConfig(dim=8, num_queries=5, num_heads=2, min_size_m=0.01), dim=16)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    centres = torch.tensor([[[1.0, 0, 0], [3.0, 0, 0], [100.0, 0, 0]], [[0.0, 0, 0]] * 3])
    out = head(torch.randn(2, 16), torch.randn(2, 3, 16), mask, centres)
    assert out.boxes.shape == (2, 5, 6) and out.scores.shape == (2, 5)
    assert torch.isfinite(out.boxes).all() and torch.isfinite(out.scores).all()
    assert (out.boxes[..., 3:] >= 0.01).all()
    # anchors are convex combinations of the *real* voxel centres: the padded one at x = 100 is never used
    assert (out.boxes[0, :, 0] < 50).all()


def test_infer_teacher_grid_and_resample():
    assert infer_teacher_grid(999, (27, 37)) == (27, 37)
    assert infer_teacher_grid(1369, (2, 2)) == (37, 37)
    assert infer_teacher_grid(12, (2, 3)) == (3, 4)  # aspect 0.75 is closest to 2/3
    tokens = torch.arange(4.0).reshape(1, 1, 4, 1)  # 2x2 grid [[0, 1], [2, 3]]
    assert torch.equal(resample_tokens(tokens, (2, 2), (2, 2)), tokens)
    up = resample_tokens(tokens, (2, 2), (4, 4)).reshape(4, 4)
    assert up[0, 0].item() == 0.0 and up[3, 3].item() == 3.0  # corners clamp to the nearest centre
    assert up[1, 1].item() == pytest.approx(0.75 * 0.75 * 0 + 0.75 * 0.25 * 1 + 0.25 * 0.75 * 2 + 0.0625 * 3)


def test_distillation_projections_shapes_and_fixed_orthogonal_teacher_maps():
    torch.manual_seed(0)
    proj = DistillationProjections(DistillationConfig(dim=6, teacher_geo_dim=10, teacher_sem_dim=4), student_dim=8)
    geom, lang = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    t_geo, t_sem = torch.randn(2, 3, 9, 10), torch.randn(2, 3, 4)
    out = proj(geom, lang, (2, 2), t_geo, t_sem)
    assert out.student_geo.shape == (2, 3, 9, 6) and out.teacher_geo.shape == (2, 3, 9, 6)
    assert out.student_sem.shape == (2, 3, 6) and out.teacher_sem.shape == (2, 3, 6)
    assert out.student_sem_tokens.shape == (2, 3, 4, 6)  # every semantic token, for Eq. 7
    torch.testing.assert_close(out.student_sem, out.student_sem_tokens.mean(dim=2))
    torch.testing.assert_close(out.student_sem, proj.student_lang(lang.mean(dim=2)))  # Pool(T'_lang), projected
    assert not any(p.requires_grad for p in proj.buffers())
    # A 4-d teacher embedded isometrically in 6-d: cosine similarities are preserved exactly.
    a, b = t_sem[0, 0], t_sem[0, 1]
    pa, pb = out.teacher_sem[0, 0], out.teacher_sem[0, 1]
    assert torch.cosine_similarity(a, b, dim=0).item() == pytest.approx(torch.cosine_similarity(pa, pb, dim=0).item(),
                                                                       abs=1e-5)
    with pytest.raises(ValueError, match="teacher_geo width"):
        proj(geom, lang, (2, 2), torch.randn(2, 3, 9, 7), None)
    with pytest.raises(ValueError, match="teacher_grid"):
        proj(geom, lang, (2, 2), t_geo, None, teacher_grid=(2, 2))


def test_config_round_trip_through_json():
    for cfg in (VidLLMConfig.tiny(), VidLLMConfig.small(), VidLLMConfig.base()):
        restored = VidLLMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert restored == cfg
        assert isinstance(restored.encoder.out_layers, tuple)


def test_config_validation_errors():
    data = VidLLMConfig.tiny().to_dict()
    data["vl"]["bogus"] = 1
    with pytest.raises(ValueError, match="unknown keys"):
        VidLLMConfig.from_dict(data)
    with pytest.raises(ValueError):
        VLBranchConfig(voxel_size_m=0)
    tiny = VidLLMConfig.tiny()
    with pytest.raises(ValueError, match="hidden_size"):
        VidLLMConfig(encoder=VidLLMConfig.small().encoder, adapter=tiny.adapter, reconstruction=tiny.reconstruction,
                     metric_depth=tiny.metric_depth, llm=tiny.llm)


def test_batch_validation_names_the_field():
    frames = torch.rand(1, 2, 3, 28, 28)
    with pytest.raises(ValueError, match="depth"):
        VidLLMBatch(frames=frames, depth=torch.rand(1, 2, 14, 14))
    with pytest.raises(ValueError, match="box_mask"):
        VidLLMBatch(frames=frames, boxes=torch.rand(1, 1, 6))
    with pytest.raises(ValueError, match="frames"):
        VidLLMBatch(frames=torch.rand(2, 3, 28, 28))
    moved = VidLLMBatch(frames=frames, input_ids=torch.ones(1, 3, dtype=torch.long)).to("cpu", torch.float64)
    assert moved.frames.dtype == torch.float64 and moved.input_ids.dtype == torch.long
