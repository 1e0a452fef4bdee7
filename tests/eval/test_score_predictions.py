"""``vidllm eval --predictions FILE``: score our or another system's prediction file without a model, same report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.eval.config import EvalJobConfig
from pipelines.eval.groundtruth import GroundTruth
from pipelines.eval.job import collect_ground_truth
from pipelines.eval.metrics.boxes import box_corners
from pipelines.eval.predictions import to_record, write_predictions
from pipelines.eval.proposals import SceneProposals, write_proposals
from pipelines.schema import npy_bytes
from tests.eval.builders import S0, S1, make_ground_truth, oracle, write_clip_shards

FAST = ["--no-meteor", "--no-plots"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_clip_shards(str(tmp_path_factory.mktemp("shards")))


@pytest.fixture(scope="module")
def gt(shards) -> GroundTruth:
    return collect_ground_truth(shards, EvalJobConfig()).ground_truth()


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def _main(argv: list[str]) -> int:
    from pipelines.eval.__main__ import main

    return main(argv)


def _oracle_file(gt: GroundTruth, folder: Path) -> Path:
    """Oracle predictions of every task in our JSON-lines format; reconstruction arrays as .npy next to it."""
    folder.mkdir(parents=True, exist_ok=True)
    preds = oracle(gt)
    records = [to_record(p) for p in preds if p.task != "reconstruction"]
    for rec in records:
        if rec["task"] == "scan2cap":
            rec["protocol"] = "gt_boxes"  # captions of the ground-truth boxes, as a model run labels them
    for t in gt.reconstruction:
        (folder / f"{t.scene_id}.depth.npy").write_bytes(npy_bytes(t.depth))
        (folder / f"{t.scene_id}.poses.npy").write_bytes(npy_bytes(t.poses))
        records.append({"task": "reconstruction", "scene_id": t.scene_id, "depth": f"{t.scene_id}.depth.npy",
                        "poses": f"{t.scene_id}.poses.npy"})
    write_predictions(str(folder / "predictions.jsonl"), records)
    return folder / "predictions.jsonl"


def test_ground_truth_from_shards_is_the_split(gt):
    built = make_ground_truth()
    for task in ("scanqa", "sqa3d", "scanrefer", "multi3drefer"):  # the shards hold them scene by scene
        assert sorted(getattr(gt, task), key=repr) == sorted(getattr(built, task), key=repr), task
    assert gt.scan2cap == built.scan2cap
    assert {k: v.tolist() for k, v in gt.boxes.items()} == {k: v.tolist() for k, v in built.boxes.items()}
    np.testing.assert_allclose(gt.first_camera_to_aligned[S1], built.first_camera_to_aligned[S1], atol=1e-12)
    np.testing.assert_allclose(gt.first_camera_to_aligned[S0], np.eye(4), atol=1e-12)
    assert [t.scene_id for t in gt.reconstruction] == [S0, S1]


@pytest.mark.slow
def test_oracle_file_scores_perfectly_with_report_and_mlflow(gt, shards, mlflow_uri, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    preds = _oracle_file(gt, tmp_path / "preds")
    out = tmp_path / "out"
    rc = _main(["--predictions", str(preds), "--data", shards, "--out", str(out), "--mlflow-uri", mlflow_uri, *FAST])
    assert rc == 0
    flat = json.loads((out / "metrics.json").read_text())
    assert flat["scanqa/em"] == flat["sqa3d/em"] == 100.0
    assert flat["scanrefer/free_form/overall/acc@0.5"] == 100.0
    assert flat["multi3drefer/free_form/overall/f1@0.5"] == 100.0
    assert flat["scan2cap/gt_boxes/@0.5/matched"] == 4.0
    assert flat["reconstruction/depth/abs_rel"] == 0.0 and flat["reconstruction/num_pose_scored"] == 2
    assert flat["scanqa/by_family/counting/count"] == 1.0
    assert {"results.json", "summary.md", "examples.md", "eval_config.json", "mlflow_run.json"} <= {
        p.name for p in out.iterdir()}
    saved = json.loads((out / "eval_config.json").read_text())
    assert saved["inputs"]["predictions_uri"] == str(preds) and len(saved["predictions_sha256"]) == 64
    run_info = json.loads((out / "mlflow_run.json").read_text())
    assert run_info["ok"], run_info
    run = MlflowClient(mlflow_uri).get_run(run_info["run_id"])
    assert run.data.tags["predictions_uri"] == str(preds) and run.data.tags["predictions_format"] == "vidllm"
    assert run.data.tags["protocols"] == "scanrefer=free_form;multi3drefer=free_form;scan2cap=gt_boxes"
    assert run.data.metrics["scanrefer/free_form/overall/acc_at_0.5"] == 100.0
    assert "model_uri" not in run.data.tags
    printed = capsys.readouterr().out
    assert "ScanRefer Acc@0.25 [free_form]" in printed and "clips evaluated: 2" in printed


@pytest.mark.slow
def test_other_systems_formats(gt, shards, mlflow_uri, tmp_path):
    from pipelines.eval.run import score_predictions

    cfg = EvalJobConfig(protocol=EvalJobConfig().protocol.__class__(meteor=False), plots=False)
    qa = [{"scene_id": q.scene_id, "question_id": q.question_id, "answer_top10": [q.answers[0]] * 10,
           "bbox": [0] * 6} for q in gt.scanqa[:2]]  # the third question is not answered
    qa.append({"question_id": gt.scanqa[2].question_id, "answer": "wrong"})
    (tmp_path / "scanqa.json").write_text(json.dumps(qa))
    res = score_predictions(str(tmp_path / "scanqa.json"), shards, str(tmp_path / "o1"), cfg, "scanqa",
                            tracking_uri=mlflow_uri, progress=lambda _m: None)
    assert set(res.results) == {"config", "scanqa"} and res.results["scanqa"]["em"] == pytest.approx(200 / 3)
    assert res.skipped_tasks == ["sqa3d", "scanrefer", "multi3drefer", "scan2cap", "reconstruction"]

    refer = [{"scene_id": r.scene_id, "object_id": str(r.object_ids[0]), "ann_id": r.ann_id,
              "bbox": box_corners(gt.boxes[(r.scene_id, r.object_ids[0])][None])[0].tolist(),
              "unique_multiple": 0, "others": 0} for r in gt.scanrefer]
    refer[0]["bbox"] = [50, 50, 50, 1, 1, 1]  # a 6-number box, far away
    (tmp_path / "pred.json").write_text(json.dumps(refer))
    res = score_predictions(str(tmp_path / "pred.json"), shards, str(tmp_path / "o2"), cfg, "scanrefer",
                            tracking_uri=mlflow_uri, progress=lambda _m: None)
    assert res.results["scanrefer"]["free_form"]["overall"]["acc@0.5"] == pytest.approx(80.0)

    corpus = {f"{s}|{o}|thing": [f"sos {gt.scan2cap[(s, o)][0]} eos"] for s, o in sorted(gt.scan2cap)[:3]}
    (tmp_path / "corpus.json").write_text(json.dumps(corpus))
    res = score_predictions(str(tmp_path / "corpus.json"), shards, str(tmp_path / "o3"), cfg, "scan2cap",
                            tracking_uri=mlflow_uri, progress=lambda _m: None)
    cap = res.results["scan2cap"]["gt_boxes"]
    assert cap["@0.5"]["matched"] == 3 and cap["num_objects"] == 4
    assert cap["@0.5"]["bleu4"] > 50.0  # the sos/eos wrapper was removed before the evaluator wraps again


@pytest.mark.slow
def test_proposals_protocol_on_a_prediction_file(gt, shards, mlflow_uri, tmp_path):
    preds = _oracle_file(gt, tmp_path / "preds")
    props = {S0: SceneProposals(np.stack([gt.boxes[(S0, 1)], gt.boxes[(S0, 2)] + [0.5, 0, 0, 0, 0, 0]]))}
    write_proposals(str(tmp_path / "props.json"), props)  # S1 is missing from the proposal file
    out = tmp_path / "out"
    rc = _main(["--predictions", str(preds), "--data", shards, "--out", str(out), "--mlflow-uri", mlflow_uri,
                "--proposals", str(tmp_path / "props.json"), "--tasks", "scanrefer,scan2cap", *FAST])
    assert rc == 0
    flat = json.loads((out / "metrics.json").read_text())
    assert flat["scanrefer/free_form/overall/acc@0.5"] == 100.0
    assert flat["scanrefer/proposals/overall/acc@0.5"] == pytest.approx(40.0)  # the two chair queries
    assert flat["scanrefer/proposals/overall/acc@0.25"] == pytest.approx(60.0)  # and the shifted table
    assert flat["scanrefer/proposals/scenes_missing_proposals"] == 1.0
    # the oracle file has gt_boxes captions only: the proposals protocol gets none, every object a placeholder
    assert flat["scan2cap/gt_boxes/@0.5/matched"] == 4.0 and flat["scan2cap/proposals/@0.5/matched"] == 0.0
    summary = (out / "summary.md").read_text()
    assert "| ScanRefer Acc@0.25 [proposals] | 60.00 | 55.8 |" in summary
    assert "Protocols: grounding free_form, proposals; captioning gt_boxes, proposals" in summary


def _bad(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


def test_malformed_files_are_one_line_errors(gt, shards, tmp_path, capsys):
    good = [json.dumps(to_record(p)) for p in oracle(gt) if p.task == "scanqa"]
    no_object = json.dumps({"task": "scanrefer", "scene_id": S0, "ann_id": "0", "boxes": []})
    cases = [
        (["--predictions", str(tmp_path / "missing.jsonl")], "missing.jsonl: prediction file does not exist"),
        (["--predictions", str(_bad(tmp_path, "a.jsonl", "\n".join([good[0], no_object])))],
         "a.jsonl:2: scanrefer record misses field(s) ['object_id']"),
        (["--predictions", str(_bad(tmp_path, "b.jsonl", "{oops"))], "b.jsonl:1: not valid JSON"),
        (["--predictions", str(_bad(tmp_path, "q.json", json.dumps([{"question_id": "x"}]))),
          "--predictions-format", "scanqa"], "q.json[0]: needs 'answer_top10'"),
        (["--predictions", str(_bad(tmp_path, "r.json", json.dumps([{"scene_id": S0, "object_id": "1",
                                                                      "ann_id": "0", "bbox": [1, 2, 3]}]))),
          "--predictions-format", "scanrefer"], "r.json[0]: field 'bbox' must be 8 corners"),
        (["--predictions", str(_bad(tmp_path, "c.json", json.dumps({S0: "a chair"}))),
          "--predictions-format", "scan2cap"], "keys are '<scene_id>|<object_id>"),
        (["--predictions", str(_bad(tmp_path, "d.json", json.dumps({f"{S0}|9": "a chair"}))),
          "--predictions-format", "scan2cap"], "d.json key 'scene0000_00|9': names an object that has no"),
        (["--predictions", str(_bad(tmp_path, "e.json", json.dumps([{"question_id": "nope", "answer": "x"}]))),
          "--predictions-format", "scanqa"], "scanqa prediction for 'nope', which is not in the ground truth"),
        (["--predictions", str(_bad(tmp_path, "f.jsonl", good[0])), "--proposals", str(tmp_path / "none.json")],
         "none.json: proposal file does not exist"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        assert _main([*args, "--data", shards, "--out", str(out), *FAST]) == 2, args
        err = capsys.readouterr().err.strip()
        assert "error: " in err and message in err and "\n" not in err, (args, err)
        assert not out.exists(), args  # nothing written before the inputs are checked
    with pytest.raises(SystemExit) as exc:
        _main(["--predictions", str(tmp_path / "a.jsonl"), "--model", "m", "--data", shards])
    assert exc.value.code == 2 and "exactly one of --model" in capsys.readouterr().err
