"""Unit tests of the data path: rank splitting, equalised steps, resume skipping and collation into VidLLMBatch."""

from __future__ import annotations

import pytest
import torch

from pipelines.train.config import DataConfig
from pipelines.train.data import (
    Collator,
    DataError,
    ShardInfo,
    iter_batches,
    iter_raw_samples,
    language_candidates,
    load_shards,
    plan_rank,
    steps_per_epoch,
)


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_ranks_see_disjoint_samples_covering_the_epoch(train_manifest, world):
    shards = load_shards(train_manifest)
    seen: list[str] = []
    for rank in range(world):
        plan = plan_rank(shards, rank, world, epoch=3, seed=1, shuffle=True)
        keys = [s["__key__"] for s in iter_raw_samples(plan)]
        assert len(keys) == plan.num_samples
        seen += keys
    assert len(seen) == len(set(seen)) == 16
    if world > len(shards):
        assert plan.stride == world  # sample-level split when shards < ranks


def test_steps_are_equalised_to_the_smallest_rank():
    shards = [ShardInfo("a", 10), ShardInfo("b", 3), ShardInfo("c", 3)]
    counts = [plan_rank(shards, r, 2).num_samples for r in range(2)]
    assert sorted(counts) == [6, 10]
    assert steps_per_epoch(shards, world=2, micro_batch=2, grad_accum=1) == 3
    with pytest.raises(DataError, match="cannot fill one step"):
        steps_per_epoch(shards, world=2, micro_batch=4, grad_accum=2)


def test_skip_resumes_the_same_stream(train_manifest):
    shards = load_shards(train_manifest)
    plan = plan_rank(shards, 1, 2, epoch=2, seed=0, shuffle=True)
    full = [s["__key__"] for s in iter_raw_samples(plan)]
    assert [s["__key__"] for s in iter_raw_samples(plan, skip=5)] == full[5:]
    again = plan_rank(shards, 1, 2, epoch=2, seed=0, shuffle=True)
    assert again == plan  # same epoch and seed: same order after a restart


def test_stream_shorter_than_manifest_is_an_error(train_manifest):
    shards = load_shards(train_manifest)
    plan = plan_rank(shards, 0, 1)
    lying = plan.__class__(plan.shards, 1, 0, plan.num_samples + 8)
    with pytest.raises(DataError, match="promised"):
        list(iter_batches(lying, lambda raw: raw, micro_batch=4, num_micro=6))


@pytest.fixture(scope="module")
def processor():
    from model import VidLLMConfig, VidLLMProcessor

    return VidLLMProcessor.from_config(VidLLMConfig.tiny())


@pytest.fixture(scope="module")
def tokenizer(processor):
    return processor.tokenizer


def _raw(manifest, n):
    shards = load_shards(manifest)
    return list(iter_raw_samples(plan_rank(shards, 0, 1)))[:n]


def test_stage1_collation(train_manifest):
    batch = Collator(DataConfig(), stage=1)(_raw(train_manifest, 2)).batch
    assert batch.frames.shape == (2, 4, 3, 28, 28) and batch.frames.dtype == torch.float32
    assert float(batch.frames.min()) >= 0.0 and float(batch.frames.max()) <= 1.0
    assert batch.teacher_geo.shape == (2, 4, 4, 48) and batch.teacher_sem.shape == (2, 4, 40)
    assert batch.teacher_grid == (2, 2)
    assert batch.input_ids is None and batch.depth is None


@pytest.mark.parametrize("task", ["qa", "caption", "grounding"])
def test_stage2_collation_per_task(train_manifest, tokenizer, task, processor):
    from model.tokenizer import LOC_TOKEN, SCENE_TOKEN

    cfg = DataConfig(task_mix={task: 1.0}, max_text_tokens=64)
    batch = Collator(cfg, stage=2, processor=processor)(_raw(train_manifest, 3)).batch
    scene_id = tokenizer.convert_tokens_to_ids(SCENE_TOKEN)
    loc_id = tokenizer.convert_tokens_to_ids(LOC_TOKEN)
    assert batch.depth.shape == (3, 4, 28, 28) and batch.extrinsics.shape == (3, 4, 3, 4)
    assert torch.allclose(batch.extrinsics[:, 0, :, :3], torch.eye(3).expand(3, 3, 3), atol=1e-5)
    for b in range(3):
        ids, labels, mask = batch.input_ids[b], batch.labels[b], batch.attention_mask[b].bool()
        assert int((ids == scene_id).sum()) == 1
        supervised = labels != -100
        assert supervised.any()
        first = int(supervised.nonzero()[0])
        assert (labels[:first] == -100).all() and bool(mask[first:][supervised[first:]].all())
        assert torch.equal(labels[supervised], ids[supervised])  # labels are the answer tokens themselves
        assert tokenizer.eos_token_id in labels[supervised].tolist()
        assert (loc_id in ids.tolist()) == (task == "grounding")
    if task == "grounding":
        assert batch.box_mask.any(dim=1).all()
        assert (batch.boxes[batch.box_mask][:, 3:] > 0).all()  # sizes
    else:
        assert not batch.box_mask.any()


def test_task_mix_draws_each_task(train_manifest, tokenizer, processor):
    from pipelines.schema import decode_training_sample

    raw = _raw(train_manifest, 16)
    cands = language_candidates(decode_training_sample(raw[0]))
    assert all(cands[t] for t in ("qa", "caption", "grounding"))
    cfg = DataConfig(task_mix={"qa": 0.5, "caption": 0.25, "grounding": 0.25})
    batch = Collator(cfg, stage=2, processor=processor)(raw).batch
    loc_id = tokenizer.convert_tokens_to_ids("<loc>")
    n_ground = int((batch.input_ids == loc_id).any(dim=1).sum())
    assert 0 < n_ground < 16
    again = Collator(cfg, stage=2, processor=processor)(raw).batch
    assert torch.equal(again.input_ids, batch.input_ids)  # seeded by (seed, epoch, key): deterministic


def test_zero_target_grounding_collates_to_an_empty_box_row(train_manifest, tokenizer, processor):
    """Multi3DRefer's zero-target queries ("there is no such object") are grounding examples with no boxes."""
    import dataclasses

    from pipelines.schema import decode_training_sample

    raw = _raw(train_manifest, 2)
    sample = decode_training_sample(raw[0])
    zero_target = {"scene_id": sample.key.split("-")[0], "object_ids": [], "object_name": "piano",
                   "ann_id": 0, "description": "the piano next to the door.", "eval_type": "zt_wo_d"}
    sample = dataclasses.replace(sample, annotations={"multi3drefer": [zero_target]})
    (example,) = language_candidates(sample)["grounding"]
    assert example.boxes.shape == (0, 6)
    cfg = DataConfig(task_mix={"grounding": 1.0}, max_text_tokens=64)
    collator = Collator(cfg, stage=2, processor=processor)
    batch, skipped = collator._language([sample])
    assert skipped == ()
    assert batch["boxes"].shape[0] == 1 and not batch["box_mask"].any()
    assert (batch["labels"] != -100).any()


def test_situated_questions_are_asked_in_their_situation(train_manifest):
    """SQA3D answers depend on the situation ("on my left?"): training asks it as evaluation does."""
    import dataclasses

    from pipelines.schema import decode_training_sample

    sample = decode_training_sample(_raw(train_manifest, 1)[0])
    situated = {"scene_id": "s", "question_id": 7, "situation": "I am facing the bed.",
                "question": "Is the desk on my left or on my right?", "answers": ["left"]}
    plain = {"scene_id": "s", "question_id": "q", "question": "How many chairs are in the room?", "answers": ["two"]}
    sample = dataclasses.replace(sample, annotations={"sqa3d": [situated], "scanqa": [plain]})
    prompts = sorted(e.prompt for e in language_candidates(sample)["qa"])
    assert prompts == ["<scene> question: How many chairs are in the room? answer:",
                       "<scene> question: I am facing the bed. Is the desk on my left or on my right? answer:"]


def test_a_clip_without_annotation_for_the_task_mix_trains_geometry_only(train_manifest, tokenizer, processor):
    """A scene with no question of the chosen kind must not stop the run: its clip keeps its geometry, no text target."""
    import dataclasses

    from model.tokenizer import SCENE_TOKEN
    from pipelines.schema import decode_training_sample

    samples = [decode_training_sample(r) for r in _raw(train_manifest, 3)]
    samples[1] = dataclasses.replace(samples[1], annotations={"scanrefer": samples[1].annotations.get("scanrefer", [])})
    assert not language_candidates(samples[1])["qa"] and language_candidates(samples[0])["qa"]
    cfg = DataConfig(task_mix={"qa": 1.0}, max_text_tokens=64)
    text, skipped = Collator(cfg, stage=2, processor=processor)._language(samples)
    assert skipped == ()
    supervised = (text["labels"] != -100).any(dim=1)
    assert supervised.tolist() == [True, False, True]
    row = text["input_ids"][1][text["attention_mask"][1].bool()]
    assert tokenizer.convert_tokens_to_ids(SCENE_TOKEN) in row.tolist() and row[-1] == tokenizer.eos_token_id
    assert not text["box_mask"][1].any()


def test_a_batch_without_any_text_target_trains_the_blind_model(train_manifest, processor):
    """The blind baseline has no scene token: an unannotated clip must still leave a non-empty LM row (seen in the
    learning benchmark: a micro-batch of such clips gave the LM a zero-length input)."""
    import dataclasses

    from model import VidLLM, VidLLMConfig
    from model.losses import MultitaskLoss
    from pipelines.schema import decode_training_sample
    from pipelines.train.config import tiny

    raw = _raw(train_manifest, 2)
    cfg = DataConfig(task_mix={"qa": 1.0}, max_text_tokens=64)
    collator = Collator(cfg, stage=2, processor=processor)
    unannotated = [dataclasses.replace(decode_training_sample(r), annotations={}) for r in raw]
    batch = dataclasses.replace(collator(raw).batch, **collator._language(unannotated)[0])
    assert not (batch.labels != -100).any()
    model_cfg = VidLLMConfig.tiny()
    model_cfg.vl = dataclasses.replace(model_cfg.vl, blind=True)
    torch.manual_seed(0)
    loss, terms = MultitaskLoss(tiny(2).loss)(VidLLM(model_cfg)(batch), batch)
    assert torch.isfinite(loss) and float(terms["lm"]) == 0.0 and float(terms["depth"]) != 0.0


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_background_loader_gives_the_single_stream_order_and_resumes_at_the_same_micro_batch(train_manifest,
                                                                                             workers):
    from pipelines.train.data import micro_batch_loader

    shards = load_shards(train_manifest)
    plan = plan_rank(shards, 0, 1, epoch=1, seed=3, shuffle=True)
    collator = Collator(DataConfig(micro_batch_size=2), stage=1)
    inline = [m.batch.frames for m in micro_batch_loader(plan, collator, DataConfig(micro_batch_size=2,
                                                                                      num_workers=0), 8)]
    loaded = micro_batch_loader(plan, collator, DataConfig(micro_batch_size=2, num_workers=workers), 8)
    assert isinstance(loaded, torch.utils.data.DataLoader)  # decoding leaves the training process
    frames = [m.batch.frames for m in loaded]
    assert len(frames) == len(inline) == 8
    assert all(torch.equal(a, b) for a, b in zip(frames, inline, strict=True))
    resumed = [m.batch.frames for m in micro_batch_loader(plan, collator, DataConfig(micro_batch_size=2,
                                                                                       num_workers=workers), 8, 5)]
    assert len(resumed) == 3 and all(torch.equal(a, b) for a, b in zip(resumed, inline[5:], strict=True))


def test_a_loader_worker_error_reaches_the_training_process(train_manifest):
    from pipelines.train.data import micro_batch_loader

    plan = plan_rank(load_shards(train_manifest), 0, 1)
    lying = plan.__class__(plan.shards, 1, 0, plan.num_samples + 8)
    cfg = DataConfig(micro_batch_size=4, num_workers=2)
    with pytest.raises(DataError, match="promised 6"):
        list(micro_batch_loader(lying, Collator(cfg, stage=1), cfg, num_micro=6))


def test_without_a_text_cap_every_text_is_whole_and_the_batch_pads_to_its_longest(train_manifest, tokenizer,
                                                                                  processor):
    from model.tokenizer import encode_example
    from pipelines.schema import decode_training_sample
    from pipelines.train.data import pick_example

    raw = _raw(train_manifest, 4)
    cfg = DataConfig(task_mix={"qa": 1, "caption": 1, "grounding": 1})
    assert cfg.max_text_tokens == 0
    item = Collator(cfg, stage=2, processor=processor)(raw)
    lengths = []
    for r in raw:
        ex = pick_example(decode_training_sample(r), cfg.task_mix, cfg.seed, 0)
        lengths.append(len(encode_example(tokenizer, ex.prompt, ex.answer).input_ids))
    assert item.text_skipped == ()
    assert item.batch.input_ids.shape[1] == max(lengths)
    assert item.batch.attention_mask.sum(dim=1).tolist() == lengths


def test_an_example_over_the_text_cap_is_reported_and_trained_without_labels_never_cut(train_manifest, tokenizer,
                                                                                      processor):
    from model.tokenizer import SCENE_TOKEN, encode_example
    from pipelines.schema import decode_training_sample
    from pipelines.train.data import language_candidates

    raw = _raw(train_manifest, 3)
    sample = decode_training_sample(raw[0])
    ground = language_candidates(sample)["grounding"][0]
    need = len(encode_example(tokenizer, ground.prompt, ground.answer).input_ids)
    qa = language_candidates(sample)["qa"][0]
    assert len(encode_example(tokenizer, qa.prompt, qa.answer).input_ids) < need - 4
    # A cap the QA examples fit and the grounding answers (six numbers per box) do not.
    cap = len(encode_example(tokenizer, qa.prompt, qa.answer).input_ids) + 4
    cfg = DataConfig(task_mix={"grounding": 1.0}, max_text_tokens=cap)
    item = Collator(cfg, stage=2, processor=processor)(raw)
    keys = [decode_training_sample(r).key for r in raw]
    assert item.text_skipped == tuple(keys)
    batch = item.batch
    assert (batch.labels == -100).all() and not batch.box_mask.any()
    rows = [row[mask.bool()].tolist() for row, mask in zip(batch.input_ids, batch.attention_mask, strict=True)]
    assert rows == [[tokenizer.convert_tokens_to_ids(SCENE_TOKEN), tokenizer.eos_token_id]] * len(raw)
    assert batch.depth is not None  # the clip still trains reconstruction and metric depth
    again = Collator(cfg, stage=2, processor=processor)(raw)
    assert again.text_skipped == item.text_skipped  # the same examples on every rank and every rerun
    mixed = Collator(DataConfig(task_mix={"qa": 1.0}, max_text_tokens=cap), stage=2, processor=processor)(raw)
    assert mixed.text_skipped == () and (mixed.batch.labels != -100).any()


@pytest.mark.weights
def test_training_encodes_through_the_chat_template_the_served_prompt_uses(train_manifest, real_weights):
    """With a chat-template LLM (the real SmolLM2), every training row is the serving prompt of the same question
    (``VidLLMProcessor.prompt_ids``) followed by the answer, so the served model sees what it was trained on."""
    import dataclasses

    from model import VidLLMConfig, VidLLMProcessor
    from model.llm import llm_config_from_checkpoint
    from pipelines.schema import decode_training_sample

    llm = llm_config_from_checkpoint(real_weights["smollm2-135m-instruct"], use_chat_template=True)
    proc = VidLLMProcessor.from_config(dataclasses.replace(VidLLMConfig.tiny(), llm=llm))
    raw = _raw(train_manifest, 3)
    batch = Collator(DataConfig(task_mix={"qa": 1.0}), stage=2, processor=proc)(raw).batch
    for b, sample in enumerate(raw):
        row = batch.input_ids[b][batch.attention_mask[b].bool()].tolist()
        answer = batch.labels[b][batch.labels[b] != -100].tolist()
        assert answer and answer[-1] == proc.tokenizer.eos_token_id
        served = [proc.prompt_ids(qa.prompt) for qa in language_candidates(decode_training_sample(sample))["qa"]]
        assert row[:len(row) - len(answer)] in served
        assert proc.tokenizer.decode(row).startswith("<|im_start|>")
