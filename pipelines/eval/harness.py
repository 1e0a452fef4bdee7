"""The evaluation harness: typed predictions + ground truth -> every benchmark metric, as a JSON-ready dict.

:func:`evaluate` is pure (no I/O beyond the METEOR / PTB Java subprocesses of the caption scorer). Conventions:

* Scores are over the **ground truth**: a question, query or object without a prediction counts as wrong (empty
  answer, no box, placeholder caption). A prediction whose key is not in the ground truth, or two predictions for one
  key, is an error: it means the prediction file and the split disagree.
* Accuracies, EM, F1 and caption metrics are percentages (CIDEr x 100 as papers report it); depth AbsRel is a ratio.
* Boxes in the ``first_camera`` frame are mapped to the benchmark frame with ``GroundTruth.first_camera_to_aligned``.
* Protocols: ScanRefer and Multi3DRefer are scored under every protocol of ``EvalConfig.grounding_protocols``
  (``free_form``: the predicted boxes as they are; ``proposals``: each predicted box replaced by an instance proposal
  of its scene, :func:`pipelines.eval.metrics.grounding.snap_to_proposals`), Scan2Cap under every protocol of
  ``EvalConfig.captioning_protocols`` (``gt_boxes`` / ``proposals``: which boxes the captions belong to). Results
  nest by protocol: ``results["scanrefer"]["proposals"]["overall"]["acc@0.25"]``, so every number says which
  protocol produced it. A scene that the proposal file lacks has no proposal (its queries miss) and is counted in
  ``scenes_missing_proposals``.
* QA results carry ``by_family``: EM per question family (see :mod:`pipelines.eval.metrics.qa`) with counts.
* Reconstruction: depth must be at the ground-truth resolution; depth and pose metrics are computed per clip and
  averaged over clips (``num_*_scored`` says how many); clips without prediction are counted, not scored.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipelines.eval.alignment import transform_boxes
from pipelines.eval.groundtruth import GroundTruth, QAItem, ReferItem
from pipelines.eval.metrics.boxes import as_boxes, box_iou_matrix
from pipelines.eval.metrics.captions import DEFAULT_TOKENIZER, TOKENIZERS, CaptionScorer
from pipelines.eval.metrics.grounding import (
    DEFAULT_IOU_THRESHOLDS,
    multi3drefer_f1,
    scanrefer_accuracy,
    snap_to_proposals,
)
from pipelines.eval.metrics.qa import clean_answer, exact_match_scores, sqa3d_question_type, strip_prediction
from pipelines.eval.metrics.reconstruction import depth_metrics, depth_metrics_median_scaled, pose_metrics
from pipelines.eval.metrics.scan2cap import CaptionedBoxes, scan2cap_scores
from pipelines.eval.predictions import (
    CAPTIONING_PROTOCOLS,
    GROUNDING_PROTOCOLS,
    TASKS,
    BoxPrediction,
    CaptionPrediction,
    Prediction,
    ReconstructionPrediction,
)
from pipelines.eval.proposals import SceneProposals


@dataclass(frozen=True)
class EvalConfig:
    """Protocol choices of the harness (saved next to every report).

    Attributes:
        iou_thresholds: IoU thresholds ``k`` of Acc@k, F1@k and m@kIoU.
        caption_tokenizer: ``"ptb"`` (LLaVA-3D / Chat-Scene) or ``"whitespace"`` (Video-3D LLM).
        meteor: compute METEOR (Java); off only where Java is unavailable.
        scanqa_normalize: apply the SQA3D ``clean_answer`` to ScanQA before EM (LLaVA-3D variant).
        scan2cap_strict_iou: Scan2Cap uses ``iou > k`` (official) instead of ``>=``.
        depth_max_m: ignore ground-truth depth beyond this range (None: keep all valid pixels).
        pose_threshold_deg: RRA / RTA threshold.
        grounding_protocols: how ScanRefer / Multi3DRefer boxes are scored, a subset of
            :data:`~pipelines.eval.predictions.GROUNDING_PROTOCOLS` (``proposals`` needs instance proposals).
        captioning_protocols: the Scan2Cap protocols scored, a subset of
            :data:`~pipelines.eval.predictions.CAPTIONING_PROTOCOLS`.
    """

    iou_thresholds: tuple[float, ...] = DEFAULT_IOU_THRESHOLDS
    caption_tokenizer: str = DEFAULT_TOKENIZER
    meteor: bool = True
    scanqa_normalize: bool = False
    scan2cap_strict_iou: bool = False
    depth_max_m: float | None = None
    pose_threshold_deg: float = 30.0
    grounding_protocols: tuple[str, ...] = ("free_form",)
    captioning_protocols: tuple[str, ...] = ("gt_boxes",)

    def __post_init__(self) -> None:
        for name, allowed in (("grounding_protocols", GROUNDING_PROTOCOLS),
                              ("captioning_protocols", CAPTIONING_PROTOCOLS)):
            value = getattr(self, name)
            value = (value,) if isinstance(value, str) else tuple(value)
            object.__setattr__(self, name, value)
            if not value or len(set(value)) != len(value) or not set(value) <= set(allowed):
                raise ValueError(f"{name} must be distinct values of {allowed}, got {list(value)}")
        if not self.iou_thresholds or any(not 0.0 < k <= 1.0 for k in self.iou_thresholds):
            raise ValueError(f"iou_thresholds must be non-empty values in (0, 1], got {self.iou_thresholds}")
        if self.caption_tokenizer not in TOKENIZERS:
            raise ValueError(f"caption_tokenizer must be one of {TOKENIZERS}, got {self.caption_tokenizer!r}")
        if self.depth_max_m is not None and self.depth_max_m <= 0:
            raise ValueError(f"depth_max_m must be positive, got {self.depth_max_m}")
        if not 0.0 < self.pose_threshold_deg <= 180.0:
            raise ValueError(f"pose_threshold_deg must be in (0, 180], got {self.pose_threshold_deg}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("iou_thresholds", "grounding_protocols", "captioning_protocols"):
            d[name] = list(getattr(self, name))
        return d


def _index(preds: Iterable[Prediction], task: str, key: Callable[[Any], Any], gt_keys: Iterable) -> dict:
    counts = Counter(gt_keys)
    repeated = sorted(str(k) for k, n in counts.items() if n > 1)
    if repeated:
        raise ValueError(f"{task}: the ground truth repeats keys {repeated[:5]}")
    valid = set(counts)
    out: dict = {}
    for p in preds:
        if p.task != task:
            continue
        k = key(p)
        if k not in valid:
            raise ValueError(f"{task} prediction for {k!r}, which is not in the ground truth")
        if k in out:
            raise ValueError(f"{task}: two predictions for {k!r}")
        out[k] = p
    return out


def _aligned_boxes(pred: BoxPrediction | CaptionPrediction, gt: GroundTruth, boxes: np.ndarray) -> np.ndarray:
    if pred.frame == "aligned":
        return boxes
    transform = gt.first_camera_to_aligned.get(pred.scene_id)
    if transform is None:
        raise ValueError(
            f"{pred.task} prediction for scene {pred.scene_id!r} is in the first_camera frame, but the ground truth "
            "has no first_camera_to_aligned transform for that scene"
        )
    return transform_boxes(boxes, transform)


def _gt_box(gt: GroundTruth, scene_id: str, object_id: int) -> np.ndarray:
    box = gt.boxes.get((scene_id, object_id))
    if box is None:
        raise KeyError(f"no ground-truth box for scene {scene_id!r} object {object_id}")
    return as_boxes(box, f"{scene_id}/{object_id}")


def _eval_qa(
    task: str,
    items: Sequence[QAItem],
    preds: Sequence[Prediction],
    cfg: EvalConfig,
    scorer: CaptionScorer | None,
) -> dict[str, Any]:
    index = _index(preds, task, lambda p: p.question_id, [i.question_id for i in items])
    answers: list[str] = [index[i.question_id].answer if i.question_id in index else "" for i in items]
    normalize = task == "sqa3d" or cfg.scanqa_normalize
    gt_answers = [i.answers for i in items]
    out = exact_match_scores(answers, gt_answers, normalize=normalize, groups=[i.family for i in items])
    out["by_family"] = out.pop("by_group")
    sources = {i.family_from_annotation for i in items}
    out["family_source"] = "mixed" if len(sources) > 1 else ("annotation" if sources == {True} else "template")
    if task == "sqa3d":
        if all(i.question for i in items):
            types = [sqa3d_question_type(i.question) for i in items]
            out["by_type"] = exact_match_scores(answers, gt_answers, normalize=True, groups=types)["by_group"]
    else:
        assert scorer is not None
        # Caption metrics see the same strings as EM: stripped prediction, cleaned on both sides if normalising.
        norm = clean_answer if cfg.scanqa_normalize else str
        hyps = {i.question_id: norm(strip_prediction(a)) for i, a in zip(items, answers, strict=True)}
        refs = {i.question_id: [norm(x) for x in i.answers] for i in items}
        out.update({m: 100.0 * v for m, v in scorer.score(refs, hyps).items()})
    out["answered"] = len(index)
    return out


def _snap(boxes: np.ndarray, scene: SceneProposals | None) -> np.ndarray:
    """Predicted boxes -> the distinct proposals they select (first selection order), ``[M, 6]``."""
    if scene is None or len(scene) == 0 or boxes.shape[0] == 0:
        return np.zeros((0, 6))
    chosen = snap_to_proposals(boxes, scene.boxes)
    _, first = np.unique(chosen, return_index=True)
    return scene.boxes[chosen[np.sort(first)]]


def _protocol_boxes(
    protocol: str, items: Sequence[ReferItem], boxes: list[np.ndarray],
    proposals: Mapping[str, SceneProposals] | None,
) -> tuple[list[np.ndarray], dict[str, int]]:
    """The boxes scored under ``protocol`` per query, and the protocol's counters."""
    if protocol == "free_form":
        return boxes, {}
    assert proposals is not None
    missing = {i.scene_id for i in items} - set(proposals)
    snapped = [_snap(b, proposals.get(i.scene_id)) for i, b in zip(items, boxes, strict=True)]
    return snapped, {"scenes_missing_proposals": len(missing)}


def _eval_scanrefer(
    items: Sequence[ReferItem], preds: Sequence[Prediction], gt: GroundTruth, cfg: EvalConfig,
    proposals: Mapping[str, SceneProposals] | None,
) -> dict[str, Any]:
    for i in items:
        if len(i.object_ids) != 1:
            raise ValueError(
                f"ScanRefer query {i.scene_id}/{i.ann_id} must have one target, got {i.object_ids}"
            )
    index = _index(
        preds,
        "scanrefer",
        lambda p: (p.scene_id, p.object_id, p.ann_id),
        [(i.scene_id, i.object_ids[0], i.ann_id) for i in items],
    )
    tops = []
    for i in items:
        p = index.get((i.scene_id, i.object_ids[0], i.ann_id))
        tops.append(_aligned_boxes(p, gt, p.top1()) if p is not None else np.zeros((0, 6)))
    targets = [_gt_box(gt, i.scene_id, i.object_ids[0]) for i in items]
    has_types = all(i.eval_type is not None for i in items)
    out: dict[str, Any] = {}
    for protocol in cfg.grounding_protocols:
        boxes, counters = _protocol_boxes(protocol, items, tops, proposals)
        ious = [float(box_iou_matrix(b[:1], t)[0, 0]) if b.shape[0] else 0.0
                for b, t in zip(boxes, targets, strict=True)]
        row: dict[str, Any] = scanrefer_accuracy(
            ious, [i.eval_type for i in items] if has_types else None, cfg.iou_thresholds
        )
        row["answered"] = len(index)
        row["mean_iou"] = float(np.mean(ious)) if ious else 0.0
        out[protocol] = {**row, **counters}
    return out


def _eval_multi3drefer(
    items: Sequence[ReferItem], preds: Sequence[Prediction], gt: GroundTruth, cfg: EvalConfig,
    proposals: Mapping[str, SceneProposals] | None,
) -> dict[str, Any]:
    index = _index(
        preds, "multi3drefer", lambda p: (p.scene_id, p.ann_id), [(i.scene_id, i.ann_id) for i in items]
    )
    pred_boxes, gt_boxes, types = [], [], []
    for i in items:
        if i.eval_type is None:
            raise ValueError(f"Multi3DRefer query {i.scene_id}/{i.ann_id} has no eval_type")
        p = index.get((i.scene_id, i.ann_id))
        pred_boxes.append(_aligned_boxes(p, gt, p.boxes) if p is not None else np.zeros((0, 6)))
        targets = [_gt_box(gt, i.scene_id, o)[0] for o in i.object_ids]
        gt_boxes.append(np.stack(targets) if targets else np.zeros((0, 6)))
        types.append(i.eval_type)
    out: dict[str, Any] = {}
    for protocol in cfg.grounding_protocols:
        boxes, counters = _protocol_boxes(protocol, items, pred_boxes, proposals)
        row: dict[str, Any] = multi3drefer_f1(boxes, gt_boxes, types, cfg.iou_thresholds)
        row["answered"] = len(index)
        out[protocol] = {**row, **counters}
    return out


def _eval_scan2cap(
    preds: Sequence[Prediction], gt: GroundTruth, cfg: EvalConfig, scorer: CaptionScorer
) -> dict[str, Any]:
    scenes = {s for s, _ in gt.scan2cap}
    single = cfg.captioning_protocols[0] if len(cfg.captioning_protocols) == 1 else None
    grouped: dict[str, dict[str, list[CaptionPrediction]]] = {p: defaultdict(list) for p in cfg.captioning_protocols}
    for p in preds:
        if p.task != "scan2cap":
            continue
        if p.scene_id not in scenes:
            raise ValueError(f"scan2cap prediction for scene {p.scene_id!r}, which has no object to caption")
        protocol = p.protocol or single
        if protocol is None:
            raise ValueError(
                f"scan2cap prediction for scene {p.scene_id!r} has no 'protocol', but the config scores "
                f"several captioning protocols {list(cfg.captioning_protocols)}"
            )
        if protocol in grouped:
            grouped[protocol][p.scene_id].append(p)
    out: dict[str, Any] = {}
    for protocol, per_scene in grouped.items():
        captioned = {
            s: CaptionedBoxes(
                np.concatenate([_aligned_boxes(p, gt, p.boxes) for p in ps]),
                tuple(c for p in ps for c in p.captions),
            )
            for s, ps in per_scene.items()
        }
        out[protocol] = scan2cap_scores(
            gt.scan2cap, gt.boxes, captioned, scorer, cfg.iou_thresholds, cfg.scan2cap_strict_iou
        )
    return out


def _mean_dicts(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if not k.startswith("num_")}


def _eval_reconstruction(preds: Sequence[Prediction], gt: GroundTruth, cfg: EvalConfig) -> dict[str, Any]:
    index = _index(preds, "reconstruction", lambda p: p.scene_id, [t.scene_id for t in gt.reconstruction])
    depth_rows, pose_rows = [], []
    for t in gt.reconstruction:
        p: ReconstructionPrediction | None = index.get(t.scene_id)
        if p is None:
            continue
        if t.depth is not None and p.depth is not None:
            row = depth_metrics(p.depth, t.depth, cfg.depth_max_m)
            row.update(depth_metrics_median_scaled(p.depth, t.depth, cfg.depth_max_m))
            depth_rows.append(row)
        if t.poses is not None and p.poses is not None:
            pred_c2w = p.poses if p.pose_convention == "cam_to_world" else _invert(p.poses)
            pose_rows.append(pose_metrics(pred_c2w, t.poses, "cam_to_world", cfg.pose_threshold_deg))
    return {
        "depth": _mean_dicts(depth_rows),
        "pose": _mean_dicts(pose_rows),
        "num_scenes": len(gt.reconstruction),
        "num_depth_scored": len(depth_rows),
        "num_pose_scored": len(pose_rows),
    }


def _invert(poses: np.ndarray) -> np.ndarray:
    arr = np.asarray(poses, dtype=np.float64)
    if arr.shape[1:] == (3, 4):
        arr = np.concatenate([arr, np.broadcast_to([[0.0, 0.0, 0.0, 1.0]], (arr.shape[0], 1, 4))], axis=1)
    return np.linalg.inv(arr)


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def evaluate(
    predictions: Sequence[Prediction],
    ground_truth: GroundTruth,
    tasks: Sequence[str] | None = None,
    config: EvalConfig | None = None,
    scorer: CaptionScorer | None = None,
    proposals: Mapping[str, SceneProposals] | None = None,
) -> dict[str, Any]:
    """Score predictions against the ground truth for the requested tasks.

    Args:
        predictions: typed predictions (:func:`pipelines.eval.predictions.load_predictions`); records of tasks
            not requested are ignored.
        ground_truth: the split's ground truth.
        tasks: subset of :data:`pipelines.eval.predictions.TASKS`; None scores every task whose ground truth is
            non-empty.
        config: protocol choices (defaults: :class:`EvalConfig`).
        scorer: a caption scorer to reuse (its tokenizer must match ``config.caption_tokenizer``); one is created
            and closed here when None and a caption task is requested.
        proposals: ``{scene_id: SceneProposals}`` (axis-aligned frame, :func:`pipelines.eval.proposals.
            load_proposals`); required when ``config.grounding_protocols`` has ``proposals`` and a grounding task
            is scored.

    Returns:
        ``{"config": {...}, "<task>": {...}}``, nested, JSON-serialisable (non-finite floats become None).
    """
    cfg = config or EvalConfig()
    present = {
        "scanqa": bool(ground_truth.scanqa),
        "sqa3d": bool(ground_truth.sqa3d),
        "scanrefer": bool(ground_truth.scanrefer),
        "multi3drefer": bool(ground_truth.multi3drefer),
        "scan2cap": bool(ground_truth.scan2cap),
        "reconstruction": bool(ground_truth.reconstruction),
    }
    selected = [t for t in TASKS if present[t]] if tasks is None else list(tasks)
    unknown = sorted(set(selected) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected a subset of {TASKS}")
    if scorer is not None and (scorer.tokenizer, scorer.use_meteor) != (cfg.caption_tokenizer, cfg.meteor):
        raise ValueError(
            f"scorer (tokenizer {scorer.tokenizer!r}, meteor {scorer.use_meteor}) does not match the config "
            f"(tokenizer {cfg.caption_tokenizer!r}, meteor {cfg.meteor})"
        )
    if proposals is None and "proposals" in cfg.grounding_protocols and {"scanrefer", "multi3drefer"} & set(selected):
        raise ValueError("the 'proposals' grounding protocol needs instance proposals (none were given)")
    own_scorer = scorer is None and any(t in ("scanqa", "scan2cap") for t in selected)
    if own_scorer:
        scorer = CaptionScorer(cfg.caption_tokenizer, meteor=cfg.meteor)
    results: dict[str, Any] = {"config": cfg.to_dict()}
    try:
        for task in selected:
            if task in ("scanqa", "sqa3d"):
                results[task] = _eval_qa(task, getattr(ground_truth, task), predictions, cfg, scorer)
            elif task == "scanrefer":
                results[task] = _eval_scanrefer(ground_truth.scanrefer, predictions, ground_truth, cfg, proposals)
            elif task == "multi3drefer":
                results[task] = _eval_multi3drefer(
                    ground_truth.multi3drefer, predictions, ground_truth, cfg, proposals
                )
            elif task == "scan2cap":
                assert scorer is not None
                results[task] = _eval_scan2cap(predictions, ground_truth, cfg, scorer)
            else:
                results[task] = _eval_reconstruction(predictions, ground_truth, cfg)
    finally:
        if own_scorer and scorer is not None:
            scorer.close()
    return _json_ready(results)
