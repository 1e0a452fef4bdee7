"""End-to-end behaviour of the composed Vid-LLM on the tiny preset (CPU, random weights)."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from model import GroundingOutput, SceneEncoding, VidLLM, VidLLMBatch, VidLLMConfig
from model.config import LossWeights
from model.freezing import apply_freezing
from model.losses import MultitaskLoss, box_loss, lm_loss

from .conftest import make_batch

ALL_LOSSES = LossWeights(geo=1, lang=1, sc=1, camera=5, depth=1, point=1, metric_depth=1, lm=1, box=1)
STAGE1_LOSSES = LossWeights(geo=1, lang=1, sc=1)
STAGE2_LOSSES = LossWeights(camera=5, depth=1, point=1, metric_depth=1, lm=1, box=1)


def test_forward_shapes_of_every_branch(tiny_model, batch):
    out = tiny_model(batch)
    b, s = batch.frames.shape[:2]
    assert out.grid == (2, 2) and out.image_hw == (28, 28)
    assert out.adapter.geom.shape == (b, s, 4, 32) and out.adapter.lang.shape == (b, s, 4, 32)
    assert out.reconstruction.depth.shape == (b, s, 28, 28)
    assert out.reconstruction.extrinsics.shape == (b, s, 3, 4)
    assert out.metric_depth.depth.shape == (b, s, 28, 28)
    scene = out.scene
    m = scene.tokens.shape[1]
    assert scene.tokens.shape == (b, m, 64) and scene.mask.shape == (b, m) and scene.centres.shape == (b, m, 3)
    assert 1 <= m <= 64 and scene.scale.shape == (b,) and (scene.scale > 0).all()
    assert out.distill.student_geo.shape == (b, s, 9, 32) and out.distill.teacher_sem.shape == (b, s, 32)
    assert out.lm_logits.shape[:2] == out.lm_labels.shape and out.lm_logits.shape[-1] == 444
    assert out.has_loc.tolist() == [False, True]
    assert out.grounding.boxes.shape == (b, 4, 6) and (out.grounding.boxes[..., 3:] > 0).all()
    total, terms = MultitaskLoss(ALL_LOSSES)(out, batch)
    assert torch.isfinite(total)
    assert {"geo", "lang", "sc", "camera", "depth", "point", "metric_depth", "lm", "box"} <= set(terms)


def test_tiny_forward_backward_is_fast(tiny_model, tokenizer):
    batch = make_batch(tokenizer, batch_size=1, frames=4)
    tiny_model(batch)  # warm-up (first-call allocations)
    start = time.perf_counter()
    total, _ = MultitaskLoss(ALL_LOSSES)(tiny_model(batch), batch)
    total.backward()
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"tiny forward+backward took {elapsed:.2f} s"


def test_teacher_only_batch_skips_geometry(tiny_model, batch):
    stage1 = VidLLMBatch(frames=batch.frames, teacher_geo=batch.teacher_geo, teacher_sem=batch.teacher_sem)
    out = tiny_model(stage1)
    assert out.reconstruction is None and out.scene is None and out.lm_logits is None
    total, terms = MultitaskLoss(STAGE1_LOSSES)(out, stage1)
    assert set(terms) == {"geo", "lang", "sc"} and torch.isfinite(total)
    with pytest.raises(ValueError, match="no loss"):
        MultitaskLoss(STAGE2_LOSSES)(out, stage1)
    with pytest.raises(ValueError, match="reconstruct=False"):
        tiny_model(batch, reconstruct=False)


# The two training stages' patterns (pipelines/train/config.py: stage_policy).
STAGE_PATTERNS = {"stage1": (("encoder.*", "adapter.*", "distill.*"), ()),
                  "stage2": (("*",), ("encoder.*", "distill.*"))}


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_freezing_leaves_exactly_the_right_parameters_trainable(tiny_model, batch, stage):
    counts = apply_freezing(tiny_model, *STAGE_PATTERNS[stage])
    names = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    everything = {n for n, _ in tiny_model.named_parameters()}
    if stage == "stage1":
        expected = {n for n in everything if n.split(".")[0] in {"encoder", "adapter", "distill"}}
    else:
        expected = {n for n in everything if n.split(".")[0] not in {"encoder", "distill"}}
    assert names == expected
    assert counts["trainable"] == sum(p.numel() for n, p in tiny_model.named_parameters() if n in expected)
    total, _ = MultitaskLoss(ALL_LOSSES)(tiny_model(batch), batch)
    total.backward()
    for name, param in tiny_model.named_parameters():
        if name in expected:
            continue
        assert param.grad is None, f"frozen {name} received a gradient in {stage}"
    assert any(tiny_model.get_parameter(n).grad is not None for n in expected)


def test_patterns_that_freeze_everything_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="leave no trainable parameter"):
        apply_freezing(tiny_model, ("*",), ("*",))


def _grads(model, prefix):
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for n, p in model.named_parameters() if n.startswith(prefix)}


def test_vl_losses_never_reach_reconstruction_but_adapter_gets_both(tiny_model, batch):
    out = tiny_model(batch)
    vl = lm_loss(out.lm_logits, out.lm_labels)
    vl = vl + box_loss(out.grounding.boxes, out.grounding.scores, batch.boxes, batch.box_mask, out.has_loc)["box"]
    vl.backward()
    for prefix in ("reconstruction.", "metric_depth."):
        leaked = {n: g.abs().sum().item() for n, g in _grads(tiny_model, prefix).items() if g.abs().sum() > 0}
        assert not leaked, f"VL loss leaked into {prefix}: {sorted(leaked)[:5]}"
    adapter_vl = _grads(tiny_model, "adapter.")
    assert sum(g.abs().sum() for g in adapter_vl.values()) > 0
    tiny_model.zero_grad(set_to_none=True)
    recon = MultitaskLoss(LossWeights(camera=1.0, depth=1.0))(tiny_model(batch), batch)[0]
    recon.backward()
    assert sum(g.abs().sum() for g in _grads(tiny_model, "reconstruction.").values()) > 0
    adapter_rec = _grads(tiny_model, "adapter.")
    assert sum(g.abs().sum() for g in adapter_rec.values()) > 0
    assert any(adapter_vl[n].abs().sum() > 0 and adapter_rec[n].abs().sum() > 0 for n in adapter_vl)


def test_save_load_round_trip_is_bit_identical(tiny_model, batch, tmp_path):
    tiny_model.eval()
    tiny_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = VidLLM.from_pretrained(tmp_path)
    before, after = tiny_model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(tiny_model.named_buffers(), loaded.named_buffers(),
                                                           strict=True))
    with torch.no_grad():
        out_a, out_b = tiny_model(batch), loaded(batch)
    assert torch.equal(out_a.lm_logits, out_b.lm_logits)
    assert torch.equal(out_a.grounding.boxes, out_b.grounding.boxes)
    assert loaded.vidllm_config == tiny_model.vidllm_config


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        VidLLM.from_pretrained(tmp_path)


def _tied_tiny() -> VidLLM:
    import dataclasses

    cfg = VidLLMConfig.tiny()
    torch.manual_seed(0)
    return VidLLM(dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, arch={**cfg.llm.arch,
                                                                                  "tie_word_embeddings": True})))


def _write_shards(path, tensors: dict[str, torch.Tensor], parts: int) -> None:
    """transformers' sharded layout: ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``."""
    import json

    from safetensors.torch import save_file

    names = list(tensors)
    weight_map = {}
    for k in range(parts):
        file = f"model-{k + 1:05d}-of-{parts:05d}.safetensors"
        chunk = names[k::parts]
        save_file({n: tensors[n].contiguous() for n in chunk}, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, file))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_from_pretrained_reads_the_sharded_layout_with_tied_weights_stored_once(tmp_path):
    model = _tied_tiny().eval()
    embed, head = model.llm.get_input_embeddings().weight, model.llm.get_output_embeddings().weight
    assert embed is head
    model.config.save_pretrained(tmp_path)
    tensors = dict(model.named_parameters())  # a tied parameter once, under its first name
    tensors.update((n, b) for n, b in model.named_buffers() if n in model.state_dict())
    assert len(tensors) < len(model.state_dict())
    _write_shards(tmp_path, tensors, parts=3)
    loaded = VidLLM.from_pretrained(tmp_path)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.llm.get_output_embeddings().weight is loaded.llm.get_input_embeddings().weight
    assert VidLLM.from_pretrained(tmp_path, dtype="auto").llm.get_input_embeddings().weight.dtype == torch.float32


def test_from_pretrained_names_what_a_sharded_checkpoint_lacks_or_has_too_much(tmp_path):
    model = _tied_tiny()
    model.config.save_pretrained(tmp_path)
    tensors = dict(model.named_parameters())
    tensors.update((n, b) for n, b in model.named_buffers() if n in model.state_dict())
    dropped = next(n for n in tensors if n.startswith("adapter."))
    _write_shards(tmp_path, {n: t for n, t in tensors.items() if n != dropped}, parts=2)
    with pytest.raises(ValueError, match=f"missing tensors.*{dropped}"):
        VidLLM.from_pretrained(tmp_path)
    _write_shards(tmp_path, {**tensors, "adapter.stray": torch.zeros(2)}, parts=2)
    with pytest.raises(ValueError, match="unexpected tensors.*adapter.stray"):
        VidLLM.from_pretrained(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        VidLLM.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors.index.json"):
        VidLLM.from_pretrained(tmp_path)


def test_answer_caption_ground(tiny_model, tokenizer, batch):
    tiny_model.eval()
    scene = tiny_model.encode_scene(batch.frames[:1])
    assert isinstance(scene, SceneEncoding) and scene.tokens.shape[0] == 1
    again = tiny_model.encode_scene(batch.frames[:1])
    assert torch.equal(scene.tokens, again.tokens)  # eval mode is deterministic
    answers = tiny_model.answer(scene, ["what color is the chair?", "how many chairs are there?"], tokenizer,
                                max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    captions = tiny_model.caption(scene, torch.tensor([[0.5, 0.0, 2.0, 0.4, 0.4, 0.8]]), tokenizer, max_new_tokens=4)
    assert len(captions) == 1 and isinstance(captions[0], str)
    grounding = tiny_model.ground(scene, ["the chair near the table"], tokenizer, max_new_tokens=6)
    assert isinstance(grounding, GroundingOutput)
    assert grounding.boxes.shape == (1, 4, 6) and (grounding.boxes[..., 3:] > 0).all()
    assert ((grounding.scores >= 0) & (grounding.scores <= 1)).all()
    assert torch.all(grounding.scores[:, :-1] >= grounding.scores[:, 1:])
    assert len(grounding.text) == 1
    with pytest.raises(ValueError, match="prompts"):
        tiny_model.answer(scene.select([0, 0]), ["a", "b", "c"], tokenizer)


@pytest.mark.slow
def test_tiny_model_overfits_one_batch(tokenizer):
    """Every loss family falls by >= 90 % on one synthetic batch.

    Phase 1 trains all losses jointly. Depth is measured by its confidence-free error, since the ``-α log c`` term
    makes the depth loss itself go negative. While the reconstruction is still moving, the voxel centres that
    anchor the box queries jump by ~1 m per step and Hungarian matching keeps switching queries, so phase 2 then
    fits the VL losses on the settled geometry (reconstruction side frozen, as after convergence).
    """
    from model.losses import depth_loss, gt_scene_scale

    torch.manual_seed(0)
    model = VidLLM(VidLLMConfig.tiny())
    batch = make_batch(tokenizer, batch_size=2, frames=2, teacher_tokens=4)
    gt_rel = batch.depth / gt_scene_scale(batch.depth, batch.extrinsics, batch.intrinsics, (28, 28))[:, None, None, None]

    def measure(out, terms):
        err = depth_loss(out.reconstruction.depth.detach(), torch.ones_like(gt_rel), gt_rel, batch.depth > 0, 0.0)
        distill = terms["geo"] + terms["lang"] + terms["sc"]
        return {"distill": distill, "camera": terms["camera"], "depth": err, "metric_depth": terms["metric_depth"],
                "lm": terms["lm"], "box": terms["box"]}

    def fit(loss_fn, steps, lr):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / steps)
        for _ in range(steps):
            total, _ = loss_fn(model(batch), batch)
            opt.zero_grad()
            total.backward()
            opt.step()
            sched.step()

    joint = MultitaskLoss(ALL_LOSSES)
    with torch.no_grad():
        out = model(batch)
        first = measure(out, joint(out, batch)[1])
    fit(joint, 90, 4e-3)
    for name, param in model.named_parameters():
        param.requires_grad_(name.split(".")[0] in {"vl_branch", "llm", "box_head"})
    fit(MultitaskLoss(LossWeights(lm=1.0, box=1.0)), 60, 3e-3)
    with torch.no_grad():
        out = model(batch)
        final = measure(out, joint(out, batch)[1])
    drops = {k: 1 - final[k].item() / first[k].item() for k in first}
    assert all(d >= 0.9 for d in drops.values()), str({k: round(v, 3) for k, v in drops.items()})


@pytest.mark.slow
def test_presets_build_on_meta_with_plausible_sizes():
    with torch.device("meta"):
        small = VidLLM(VidLLMConfig.small())
    assert 1.3e8 < sum(p.numel() for p in small.llm.parameters()) < 1.4e8  # SmolLM2-135M shape

    with torch.device("meta"):
        model = VidLLM(VidLLMConfig.base())
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    print({k: f"{v / 1e6:.1f}M" for k, v in counts.items()})
    assert 6.6e9 < counts["llm"] < 6.9e9  # Vicuna-7B
    assert 2.9e8 < counts["encoder"] < 3.2e8  # DINOv2-L/14
    assert counts["reconstruction"] > 5e8  # VGGT-1B aggregator + heads minus the patch embed
    assert counts["vl_branch"] > 4e6 and 1e6 < counts["box_head"] < 5e7


def test_pretrained_llm_path_is_loaded_then_dropped_from_checkpoint_config(tmp_path, tiny_cfg, tokenizer, batch):
    """A fresh model loads LM weights from a local HF directory; its own checkpoint then rebuilds the LM from
    config alone (the original directory may be gone)."""
    import dataclasses
    import shutil

    from model.llm import build_llm, llm_config_from_checkpoint

    lm_dir = tmp_path / "lm"
    torch.manual_seed(1)
    source = build_llm(tiny_cfg.llm)
    source.save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    llm_cfg = llm_config_from_checkpoint(str(lm_dir))
    assert (llm_cfg.scene_token_id, llm_cfg.loc_token_id) == (tiny_cfg.llm.scene_token_id, tiny_cfg.llm.loc_token_id)
    model = VidLLM(dataclasses.replace(tiny_cfg, llm=llm_cfg))
    assert torch.equal(model.llm.get_input_embeddings().weight, source.get_input_embeddings().weight)
    assert model.vidllm_config.llm.pretrained_path is None
    model.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(lm_dir)
    loaded = VidLLM.from_pretrained(tmp_path / "ckpt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))


def test_box_head_runs_for_text_batches_without_loc(tiny_model, tokenizer):
    qa_only = make_batch(tokenizer, batch_size=1)  # row 0 of the synthetic batch is a question
    out = tiny_model(qa_only)
    assert out.has_loc.tolist() == [False] and out.grounding.boxes.shape == (1, 4, 6)
    total, terms = MultitaskLoss(ALL_LOSSES)(out, qa_only)
    assert terms["box"].item() == 0.0
    total.backward()
    assert all(p.grad is not None for p in tiny_model.box_head.parameters())  # same parameters on every rank


def test_blind_model_gets_no_scene_tokens(tiny_cfg, tokenizer):
    cfg = dataclasses.replace(tiny_cfg, vl=dataclasses.replace(tiny_cfg.vl, blind=True))
    torch.manual_seed(0)
    model = VidLLM(cfg).eval()
    batch = make_batch(tokenizer)
    other = dataclasses.replace(batch, frames=torch.rand_like(batch.frames))
    out, out_other = model(batch), model(other)
    assert not out.scene.mask.any() and out.lm_logits.shape[1] == batch.input_ids.shape[1] - 1
    assert torch.equal(out.lm_logits, out_other.lm_logits), "the answer must not depend on the frames"
    assert torch.equal(out.grounding.boxes, out_other.grounding.boxes), "nor the boxes"
    assert not torch.equal(out.reconstruction.depth, out_other.reconstruction.depth)
    total, terms = MultitaskLoss(STAGE2_LOSSES)(out, batch)
    assert torch.isfinite(total) and {"lm", "box"} <= set(terms)


def test_fixed_scale_replaces_metric_alignment(tiny_cfg, batch):
    cfg = dataclasses.replace(tiny_cfg, scale=dataclasses.replace(tiny_cfg.scale, fixed_scale=1.0))
    torch.manual_seed(0)
    out = VidLLM(cfg).eval()(batch)
    assert torch.equal(out.scene.scale, torch.ones(batch.frames.shape[0]))
    assert torch.allclose(out.scene.depth, out.reconstruction.depth)
    assert VidLLMConfig.from_dict(cfg.to_dict()).scale.fixed_scale == 1.0
    with pytest.raises(ValueError, match="fixed_scale"):
        dataclasses.replace(tiny_cfg.scale, fixed_scale=0.0)


def test_answers_are_never_blank_even_when_eos_blanks_and_special_tokens_are_likeliest(tokenizer, batch):
    """A little-trained model's greedy choice was EOS first, or ``▁ <loc> EOS`` (a CI run's demo answered ''):
    every task's generated text still holds visible text and no special token."""
    torch.manual_seed(0)
    model = VidLLM(VidLLMConfig.tiny()).eval()
    llm = model.vidllm_config.llm
    blank = tokenizer.convert_tokens_to_ids("▁")
    # Likeliest first: EOS, then the special tokens, then the bare space piece; visible words only after them.
    ranked = [llm.eos_token_id, llm.loc_token_id, llm.scene_token_id, llm.pad_token_id, llm.bos_token_id, blank]

    def blank_first(module, inputs, logits):
        logits = logits.clone()
        for rank, token in enumerate(ranked):
            logits[..., token] += 1e4 - rank
        return logits

    model.llm.get_output_embeddings().register_forward_hook(blank_first)
    scene = model.encode_scene(batch.frames)
    n = batch.frames.shape[0]
    texts = (model.answer(scene, ["what is this?"] * n, tokenizer, max_new_tokens=3)
             + model.caption(scene, torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]] * n), tokenizer, max_new_tokens=3)
             + model.ground(scene, ["the chair"] * n, tokenizer, max_new_tokens=3).text)
    assert all(t.strip() for t in texts), texts
    assert not any(token in t for t in texts for token in ("<loc>", "<scene>", "<eos>", "<bos>")), texts
