"""Training data: manifest -> per-rank sample streams -> :class:`model.VidLLMBatch`.

Splitting across ranks (decided from the manifest alone, identically on every rank):

* ``shards >= ranks``: whole shards are dealt to ranks, largest first to the rank with the fewest samples (greedy
  balancing), so every shard is opened by exactly one rank.
* ``shards < ranks``: every rank reads every shard and keeps the samples whose global position ``g`` (manifest
  order) satisfies ``g % world == rank``. Reading is wasted but no sample is seen twice.

Either way no rank sees a sample another rank sees in the same epoch. Every rank runs the same number of steps per
epoch, ``min_r(samples_r) // (micro_batch * grad_accum)``, so no rank waits at the epoch end for a collective the
others never call; the few samples beyond that on the larger ranks are left out of that epoch (and, with shard
shuffling, are different ones next epoch). Each rank shuffles its own shard order per epoch with a seed derived
from ``(seed, epoch)``, so a resumed run replays the same order and skipping ``micro_in_epoch * micro_batch``
samples puts it where the interrupted run stopped.

Streaming uses the ``webdataset`` library's tar expander and key grouping over fsspec file objects
(:func:`pipelines.manifest.webdataset_pipeline`), so shards on S3 stream without local copies.

Loading overlaps the training step (:func:`micro_batch_loader`): ``data.num_workers`` DataLoader processes per rank
read, decode (frames, teacher targets) and collate micro-batches, ``data.prefetch_batches`` each ahead, while the
rank's main thread trains. Micro-batch ``m`` of the epoch is collated by worker ``m % num_workers`` and the
DataLoader hands the workers' results back round-robin, so the rank sees exactly the order of a single stream (and
a resumed run the same micro-batches). Every worker walks the rank's whole tar stream and decodes only its own
micro-batches: reading is repeated per worker, decoding is not.

Text budget (``data.max_text_tokens``, Stage 2): ``0`` keeps every text whole and pads a batch to its longest.
Under a cap, an example whose labels cannot fit (:class:`model.tokenizer.TextBudgetError`) is never cut: its row
keeps the clip (frames and geometry targets) with the text ``<scene>`` and EOS, no label and no box, so every rank
still runs the same modules on the same number of rows, and its key is returned with the batch (the trainer
counts and logs it). The decision depends only on the sample, so a rerun skips the same examples.

Stage 2 language targets: per sample one task is drawn from ``data.task_mix`` among the tasks the clip has
annotations for, with a generator seeded by ``(seed, epoch, sample key)`` (deterministic across restarts). A clip
with no annotation for any task of the mix (a scene without a question of the chosen kind) still trains its
geometry: its text is ``<scene>`` and EOS with no label, so the LM loss skips it, and the trainer counts
such samples (``samples_without_language``). One unannotated clip does not stop a run, and no clip is dropped.
Annotation sets are recognised by their entry fields (the benchmark formats): entries with ``question`` and
``answers`` are QA (asked after their ``situation``, when they have one: SQA3D); entries with ``description`` and
``object_id`` (one object) give captioning and grounding; entries with ``description`` and ``object_ids`` give
(multi-target) grounding.
"""

from __future__ import annotations

import hashlib
import posixpath
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from pipelines.manifest import manifest_uri, read_manifest, shard_uris, webdataset_pipeline
from pipelines.schema import TrainingSample, decode_training_sample
from pipelines.train.config import TASKS, DataConfig

# Prompt templates are the model's own (shared with inference), imported lazily like the rest of ``model``.


class DataError(ValueError):
    """Training data cannot be planned or collated (names the manifest/sample and the problem)."""


@dataclass(frozen=True)
class LanguageExample:
    """One language target of a clip.

    Attributes:
        task: ``qa``, ``caption`` or ``grounding``.
        prompt: prompt text with exactly one ``<scene>`` (``model.tokenizer`` templates).
        answer: answer text (grounding: ``<loc>`` followed by the target boxes as text).
        boxes: ``[T, 6]`` float32 GT boxes (centre+size, metres, first-camera frame) for grounding, else ``None``.
    """

    task: str
    prompt: str
    answer: str
    boxes: np.ndarray | None


class MicroBatch(NamedTuple):
    """One collated micro-batch and the keys of the samples whose text did not fit ``data.max_text_tokens``.

    Attributes:
        batch: the :class:`model.VidLLMBatch`.
        text_skipped: sample keys whose language example is not trained on (see the module docstring).
    """

    batch: Any
    text_skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShardInfo:
    uri: str
    num_samples: int


@dataclass(frozen=True)
class RankPlan:
    """What one rank reads in one epoch.

    Attributes:
        shards: shards to open, in reading order.
        stride: keep every ``stride``-th sample of the concatenated stream (1 = all; ``world`` in sample mode).
        offset: position within the stride to keep.
        num_samples: samples this rank gets.
    """

    shards: tuple[ShardInfo, ...]
    stride: int
    offset: int
    num_samples: int


def load_shards(manifest: str) -> list[ShardInfo]:
    """Shards and sample counts of a training manifest (URI of ``manifest.json`` or its directory)."""
    path = manifest if manifest.endswith(".json") else manifest_uri(manifest)
    m = read_manifest(path)
    if m.kind != "train":
        raise DataError(f"{path}: manifest kind is {m.kind!r}, training needs a 'train' manifest (teachers job)")
    uris = shard_uris(m, posixpath.dirname(path))
    shards = [ShardInfo(u, r.num_samples) for u, r in zip(uris, m.shards, strict=True) if r.num_samples > 0]
    if not shards:
        raise DataError(f"{path}: manifest lists no samples")
    return shards


def _epoch_rng(seed: int, epoch: int) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "big"))


def plan_rank(shards: Sequence[ShardInfo], rank: int, world: int, epoch: int = 0, seed: int = 0,
              shuffle: bool = False) -> RankPlan:
    """The shards and sample stride of ``rank`` in ``epoch`` (see the module docstring for the rules)."""
    if not 0 <= rank < world:
        raise DataError(f"rank {rank} out of range for world size {world}")
    if len(shards) < world:
        order = list(shards)
        if shuffle:
            _epoch_rng(seed, epoch).shuffle(order)  # same order on every rank: the stride split stays disjoint
        total = sum(s.num_samples for s in order)
        count = total // world + (1 if rank < total % world else 0)
        return RankPlan(tuple(order), world, rank, count)
    loads = [0] * world
    owned: list[list[ShardInfo]] = [[] for _ in range(world)]
    for shard in sorted(shards, key=lambda s: (-s.num_samples, s.uri)):
        r = min(range(world), key=lambda i: (loads[i], i))
        owned[r].append(shard)
        loads[r] += shard.num_samples
    mine = sorted(owned[rank], key=lambda s: s.uri)
    if shuffle:
        _epoch_rng(seed * 1_000_003 + rank, epoch).shuffle(mine)
    return RankPlan(tuple(mine), 1, 0, loads[rank])


def steps_per_epoch(shards: Sequence[ShardInfo], world: int, micro_batch: int, grad_accum: int) -> int:
    """Optimizer steps every rank runs per epoch (equalised to the smallest rank)."""
    smallest = min(plan_rank(shards, r, world).num_samples for r in range(world))
    steps = smallest // (micro_batch * grad_accum)
    if steps < 1:
        raise DataError(f"{smallest} samples on the smallest of {world} ranks cannot fill one step of "
                        f"{micro_batch} x {grad_accum} micro-batches; lower the batch size or add data")
    return steps


def iter_raw_samples(plan: RankPlan, skip: int = 0) -> Iterator[dict[str, Any]]:
    """Raw WebDataset sample dicts of ``plan``, after skipping the first ``skip`` of this rank's samples."""
    g = 0
    kept = 0
    for shard in plan.shards:
        if plan.stride == 1 and kept + shard.num_samples <= skip:
            kept += shard.num_samples  # whole shard already consumed: do not even open it
            continue
        for sample in webdataset_pipeline([shard.uri]):
            mine = g % plan.stride == plan.offset
            g += 1
            if not mine:
                continue
            kept += 1
            if kept > skip:
                yield sample


# ---------------------------------------------------------------------------------------------- language
def language_candidates(sample: TrainingSample) -> dict[str, list[LanguageExample]]:
    """Every usable (task, prompt, answer, boxes) of a clip, grouped by task."""
    from model.tokenizer import caption_prompt, grounding_answer, grounding_prompt, qa_prompt

    boxes, ids = sample.boxes_first_cam()
    by_id = {int(i): boxes[k] for k, i in enumerate(ids)}
    out: dict[str, list[LanguageExample]] = {t: [] for t in TASKS}
    for entries in sample.annotations.values():
        for e in entries if isinstance(entries, list) else []:
            if not isinstance(e, Mapping):
                continue
            if "question" in e and e.get("answers"):
                first = e["answers"][0]
                answer = first.get("answer", "") if isinstance(first, Mapping) else str(first)
                if answer:
                    # SQA3D's question only makes sense in its situation ("on my left?"); evaluation asks
                    # "situation question" (pipelines/eval/job.py), and so must training.
                    question = f"{e['situation']} {e['question']}" if e.get("situation") else str(e["question"])
                    out["qa"].append(LanguageExample("qa", qa_prompt(question), answer, None))
            elif "description" in e and ("object_id" in e or "object_ids" in e):
                raw_ids = e.get("object_ids", [e.get("object_id")])
                try:
                    obj_ids = [int(i) for i in raw_ids]
                except (TypeError, ValueError):
                    continue
                targets = [by_id[i] for i in obj_ids if i in by_id]
                if len(targets) != len(obj_ids):
                    continue  # an object outside this clip's box list: no target to supervise
                text = str(e["description"])
                # reshape: a zero-target Multi3DRefer query must still give a [0, 6] box array
                boxes = np.array(targets, np.float32).reshape(-1, 6)
                out["grounding"].append(LanguageExample("grounding", grounding_prompt(text),
                                                        grounding_answer(targets), boxes))
                if "object_id" in e and len(targets) == 1:
                    out["caption"].append(LanguageExample("caption", caption_prompt(targets[0]), text, None))
    return out


def pick_example(sample: TrainingSample, task_mix: Mapping[str, float], seed: int, epoch: int
                 ) -> LanguageExample | None:
    """Draw one task by ``task_mix`` among the tasks this clip supports, then one example of it."""
    cands = language_candidates(sample)
    tasks = [t for t in TASKS if cands[t] and task_mix.get(t, 0) > 0]
    if not tasks:
        return None
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{epoch}:{sample.key}".encode()).digest()[:8], "big"))
    task = rng.choices(tasks, weights=[task_mix[t] for t in tasks])[0]
    return rng.choice(cands[task])


# ---------------------------------------------------------------------------------------------- collation
def _subsample(n: int, k: int) -> np.ndarray:
    return np.arange(n) if k <= 0 or k >= n else np.round(np.linspace(0, n - 1, k)).astype(int)


class Collator:
    """Raw WebDataset samples -> :class:`VidLLMBatch` (decoding through :mod:`pipelines.schema`).

    Args:
        cfg: data section of the training config.
        stage: 1 (frames + teacher targets) or 2 (frames, GT geometry, prompts/answers and GT boxes).
        processor: the model's :class:`model.processor.VidLLMProcessor` (Stage 2): examples are encoded through it
            (chat template included), exactly as the exported processor prompts at serving time.
        epoch: current epoch (seeds the task draw).
    """

    def __init__(self, cfg: DataConfig, stage: int, processor=None, epoch: int = 0) -> None:
        if stage == 2 and processor is None:
            raise DataError("Stage-2 collation needs the model's processor")
        self.cfg, self.stage, self.processor, self.epoch = cfg, stage, processor, epoch

    def __call__(self, raw: Sequence[Mapping[str, Any]]) -> MicroBatch:
        from model import VidLLMBatch

        samples = [decode_training_sample(r) for r in raw]
        shapes = {s.frames.shape[1:] for s in samples}
        if len(shapes) != 1:
            raise DataError(f"samples {[s.key for s in samples]} have different frame sizes {sorted(shapes)}")
        frames, depth, ext, intr, geo, sem = [], [], [], [], [], []
        for s in samples:
            idx = _subsample(s.num_frames, self.cfg.num_frames)
            frames.append(torch.from_numpy(s.frames[idx]).permute(0, 3, 1, 2).float() / 255.0)
            depth.append(torch.from_numpy(s.depth_m[idx]))
            ext.append(torch.from_numpy(s.extrinsics[idx]))
            intr.append(torch.from_numpy(s.intrinsics[idx]))
            geo.append(torch.from_numpy(s.teacher_geo[idx]))
            sem.append(torch.from_numpy(s.teacher_sem[idx]))
        lengths = {f.shape[0] for f in frames}
        if len(lengths) != 1:
            raise DataError(f"samples {[s.key for s in samples]} have different frame counts {sorted(lengths)}; "
                            "set data.num_frames")
        fields: dict[str, Any] = {"frames": torch.stack(frames)}
        skipped: tuple[str, ...] = ()
        if self.stage == 1:
            # Teacher targets only: without GT geometry or text the model skips reconstruction and the LLM,
            # which Stage 1 neither trains nor needs.
            grid = samples[0].teacher.get("patch_grid")
            fields.update(teacher_geo=torch.stack(geo), teacher_sem=torch.stack(sem),
                          teacher_grid=tuple(int(v) for v in grid) if grid else None)
        else:
            # Stage 2 trains reconstruction/metric depth on GT geometry and the 3D-VL branch on text and boxes;
            # the teacher targets would only run the frozen distillation projections.
            language, skipped = self._language(samples)
            fields.update(depth=torch.stack(depth), extrinsics=torch.stack(ext), intrinsics=torch.stack(intr),
                          **language)
        return MicroBatch(VidLLMBatch(**fields), skipped)

    def _language(self, samples: Sequence[TrainingSample]) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
        from model.tokenizer import SCENE_TOKEN, TextBudgetError

        tok = self.processor.tokenizer
        cap = self.cfg.max_text_tokens or None
        ids, labels, boxes, skipped = [], [], [], []
        for s in samples:
            ex = pick_example(s, self.cfg.task_mix, self.cfg.seed, self.epoch)
            encoded = None
            if ex is not None:
                try:
                    encoded = self.processor.encode_example(ex.prompt, ex.answer, cap, example=s.key)
                except TextBudgetError:
                    skipped.append(s.key)
                except ValueError as err:
                    raise DataError(f"sample {s.key}: {err}") from err
            if encoded is None:
                # Geometry only (module docstring): ``<scene>`` and EOS, no label. EOS keeps a text token in the row
                # when the scene has no token at all (the blind baseline), so no row of the LM input is empty.
                i = tok(SCENE_TOKEN, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                ids.append(i)
                labels.append([-100] * len(i))
                boxes.append(np.zeros((0, 6), np.float32))
                continue
            i, lab = encoded
            ids.append(i)
            labels.append(lab)
            boxes.append(ex.boxes if ex.boxes is not None else np.zeros((0, 6), np.float32))
        width = max(len(i) for i in ids)
        pad = tok.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        label_t = torch.full((len(ids), width), -100, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for b, (i, lab) in enumerate(zip(ids, labels, strict=True)):
            input_ids[b, : len(i)] = torch.tensor(i)
            label_t[b, : len(lab)] = torch.tensor(lab)
            mask[b, : len(i)] = 1
        t = self.cfg.max_boxes
        box_t = torch.zeros((len(ids), t, 6), dtype=torch.float32)
        box_mask = torch.zeros((len(ids), t), dtype=torch.bool)
        for b, bx in enumerate(boxes):
            n = min(len(bx), t)
            box_t[b, :n] = torch.from_numpy(np.asarray(bx[:n], np.float32))
            box_mask[b, :n] = True
        return ({"input_ids": input_ids, "attention_mask": mask, "labels": label_t, "boxes": box_t,
                 "box_mask": box_mask}, tuple(skipped))


def iter_batches(plan: RankPlan, collator, micro_batch: int, num_micro: int, skip_micro: int = 0,
                 worker: int = 0, num_workers: int = 1):
    """Yield this rank's micro-batches ``skip_micro .. num_micro - 1`` of one epoch, collated by ``collator``;
    with ``num_workers > 1`` only those with ``(m - skip_micro) % num_workers == worker`` (the others are read
    past, not collated).

    Raises:
        DataError: when the shards hold fewer samples than the manifest promised (a rank would otherwise stall
            the collective of the others).
    """
    stream = iter_raw_samples(plan, skip=skip_micro * micro_batch)
    for m in range(skip_micro, num_micro):
        raw = [s for _, s in zip(range(micro_batch), stream, strict=False)]
        if len(raw) < micro_batch:
            raise DataError(f"rank stream ended after {m} micro-batches, the manifest promised {num_micro}")
        if (m - skip_micro) % num_workers == worker:
            yield collator(raw)


class RankStream(torch.utils.data.IterableDataset):
    """This rank's micro-batches of one epoch as an ``IterableDataset``, split over the DataLoader's workers as
    described in the module docstring (micro-batch ``m`` by worker ``(m - skip_micro) % num_workers``)."""

    def __init__(self, plan: RankPlan, collator: Collator, micro_batch: int, num_micro: int,
                 skip_micro: int = 0) -> None:
        super().__init__()
        self.plan, self.collator = plan, collator
        self.micro_batch, self.num_micro, self.skip_micro = micro_batch, num_micro, skip_micro

    def __iter__(self) -> Iterator[MicroBatch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return iter_batches(self.plan, self.collator, self.micro_batch, self.num_micro, self.skip_micro, worker,
                            workers)


def _as_is(item: MicroBatch) -> MicroBatch:
    """The DataLoader's ``collate_fn``: micro-batches are collated by :class:`Collator` already."""
    return item


def micro_batch_loader(plan: RankPlan, collator: Collator, cfg: DataConfig, num_micro: int,
                       skip_micro: int = 0) -> Iterable[MicroBatch]:
    """This rank's micro-batches ``skip_micro .. num_micro - 1`` of one epoch, in order, loaded by
    ``cfg.num_workers`` background processes (``0``: in the calling thread)."""
    stream = RankStream(plan, collator, cfg.micro_batch_size, num_micro, skip_micro)
    if cfg.num_workers == 0:
        return stream
    return torch.utils.data.DataLoader(stream, batch_size=None, collate_fn=_as_is, num_workers=cfg.num_workers,
                                       prefetch_factor=cfg.prefetch_batches)
