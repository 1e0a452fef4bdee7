"""The evaluation job end to end: synthetic scenes -> ingest -> a trained tiny model -> Ray job -> JSON + MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipelines.eval.config import EvalJobConfig
from pipelines.eval.job import DataSourceError, plan_clips, select_annotations
from pipelines.eval.tracking import mlflow_key, mlflow_metrics

REGISTERED = "vidllm-eval-test"
TYPES_M3D = ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt")
#: Every key each task must report (the protocol's defaults: IoU 0.25/0.5, METEOR on, pose threshold 30).
REQUIRED_KEYS = {
    "scanqa": ["em", "em_refined", "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "count",
               "answered"],
    "sqa3d": ["em", "em_refined", "count", "answered"],
    "scanrefer": [f"{p}/{k}" for p in ("free_form", "proposals")
                  for k in ("overall/acc@0.25", "overall/acc@0.5", "unique/acc@0.25", "unique/acc@0.5",
                            "multiple/acc@0.25", "multiple/acc@0.5", "mean_iou", "answered")],
    "multi3drefer": [f"{p}/{t}/f1@{k}" for p in ("free_form", "proposals") for t in ("overall", *TYPES_M3D)
                     for k in ("0.25", "0.5")] + ["free_form/answered", "proposals/answered"],
    "scan2cap": [f"{p}/@{k}/{m}" for p in ("gt_boxes", "proposals") for k in ("0.25", "0.5")
                 for m in ("cider", "bleu4", "meteor", "rouge_l")] + ["gt_boxes/num_objects", "proposals/num_objects"],
    "reconstruction": ["depth/abs_rel", "depth/delta1", "depth/abs_rel_median_scaled", "pose/rra@30", "pose/rta@30",
                       "pose/auc@30", "num_depth_scored", "num_pose_scored"],
}
ALL_TASKS = ",".join(REQUIRED_KEYS)


@pytest.fixture(autouse=True)
def _bounded_mlflow_http(monkeypatch):
    """main() bounds MLflow's HTTP retries through the environment; restore it after each test."""
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(key, os.environ.get(key, "1"))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    """Two synthetic ScanNet-format scenes (scene0000_00 in train, scene0001_00 in val) with annotations."""
    from pipelines.ingest.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("eval-scenes")
    generate(SyntheticConfig(out=str(root / "raw"), num_scenes=2, seed=5, size="small", num_frames=8,
                             layouts=("sens",)), log=lambda _m: None)
    return root


@pytest.fixture(scope="module")
def clip_shards(synthetic_root, ray_session) -> str:
    """The scenes ingested by the ingest job into CLIP shards (annotations carried); returns the shard dir."""
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.job import run_ingest

    root = synthetic_root
    manifest = run_ingest(str(root / "raw"), str(root / "clips"), IngestConfig.tiny(), progress=False)
    assert manifest.summary["scenes_written"] == 2
    return str(root / "clips")


def _decoded(clip_shards: str):
    from pipelines.manifest import iter_manifest_samples
    from pipelines.schema import decode_clip_sample

    return [decode_clip_sample(s) for s in iter_manifest_samples(clip_shards)]


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, clip_shards) -> dict:
    """A tiny Vid-LLM trained in-process (Stage-2 losses: camera, depth, metric depth, LM, boxes) for 30 AdamW steps
    on QA and grounding examples of the evaluation clips, saved in HF layout with its tokenizer."""
    import torch

    from model import VidLLM, VidLLMBatch, VidLLMConfig, build_tokenizer
    from model.losses import MultitaskLoss
    from model.tokenizer import encode_example, grounding_answer, grounding_prompt, qa_prompt
    from pipelines.train.config import stage_policy

    torch.manual_seed(0)
    model = VidLLM(VidLLMConfig.tiny())
    tok = build_tokenizer(model.vidllm_config)
    rows = []  # (clip, prompt, answer, target box or None)
    for clip in _decoded(clip_shards):
        qa = clip.annotations["scanqa"][0]
        rows.append((clip, qa_prompt(qa["question"]), qa["answers"][0], None))
        ref = clip.annotations["scanrefer"][0]
        box = next(o for o in clip.boxes["objects"] if o["object_id"] == int(ref["object_id"]))
        target = box["center_first_cam"] + box["size_first_cam"]
        rows.append((clip, grounding_prompt(ref["description"]), grounding_answer([target]), target))
    encoded = [encode_example(tok, p, a) for _, p, a, _ in rows]
    length = max(len(ids) for ids, _ in encoded)
    pad = tok.pad_token_id

    def stack(name):
        return torch.from_numpy(np.stack([getattr(c, name) for c, *_ in rows]))

    batch = VidLLMBatch(
        frames=stack("frames").permute(0, 1, 4, 2, 3).float() / 255.0,
        depth=stack("depth_m"), extrinsics=stack("extrinsics"), intrinsics=stack("intrinsics"),
        input_ids=torch.tensor([ids + [pad] * (length - len(ids)) for ids, _ in encoded]),
        attention_mask=torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids, _ in encoded]),
        labels=torch.tensor([lab + [-100] * (length - len(lab)) for _, lab in encoded]),
        boxes=torch.tensor([[t or [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]] for *_, t in rows], dtype=torch.float32),
        box_mask=torch.tensor([[t is not None] for *_, t in rows]),
    )
    loss_fn = MultitaskLoss(stage_policy(2)[0])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(30):
        total, terms = loss_fn(model(batch), batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert {"lm", "box", "camera", "depth"} <= set(terms)
    assert losses[-1] < 0.6 * losses[0], losses  # really trained
    path = tmp_path_factory.mktemp("trained") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return {"path": str(path), "losses": losses}


@pytest.fixture(scope="module")
def registered_model(tmp_path_factory, trained_model) -> dict:
    """The trained export logged to a 'training' run of a sqlite MLflow store and registered as version 1."""
    from mlflow.tracking import MlflowClient

    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("train", artifact_location=str(store / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, trained_model["path"], artifact_path="model")
    client.create_registered_model(REGISTERED)
    version = client.create_model_version(REGISTERED, f"{client.get_run(run_id).info.artifact_uri}/model",
                                          run_id=run_id)
    return {"tracking_uri": uri, "run_id": run_id, "version": str(version.version)}


@pytest.fixture(scope="module")
def proposals_file(tmp_path_factory, clip_shards) -> dict:
    """Hand-made instance proposals of the evaluated scenes: every object's box, a loose duplicate of the first."""
    from pipelines.eval.proposals import SceneProposals, write_proposals

    props = {}
    for clip in _decoded(clip_shards):
        boxes = np.array([o["center"] + o["size"] for o in clip.boxes["objects"]], np.float64)
        loose = np.concatenate([boxes[0, :3], boxes[0, 3:] * 1.3])
        props[clip.meta["scene_id"]] = SceneProposals(np.vstack([boxes, loose]))
    uri = str(tmp_path_factory.mktemp("proposals") / "proposals.json")
    write_proposals(uri, props)
    return {"uri": uri, "proposals": props}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, clip_shards, registered_model, proposals_file, ray_session) -> dict:
    """``python -m pipelines.eval`` run in-process on the registered model, every task, both protocols."""
    from pipelines.eval.__main__ import main

    tmp = tmp_path_factory.mktemp("eval")
    out = tmp / "out"
    argv = ["--model", f"models:/{REGISTERED}/{registered_model['version']}", "--data", clip_shards,
            "--tasks", ALL_TASKS, "--out", str(out), "--mlflow-uri", registered_model["tracking_uri"],
            "--tiny", "--cache-dir", str(tmp / "cache"), "--proposals", proposals_file["uri"]]
    rc = main(argv)
    return {"rc": rc, "out": out, "argv": argv, **registered_model}


@pytest.mark.slow
def test_every_metric_in_json_and_mlflow(evaluation):
    from mlflow.tracking import MlflowClient

    assert evaluation["rc"] == 0
    out: Path = evaluation["out"]
    results = json.loads((out / "results.json").read_text())
    flat = json.loads((out / "metrics.json").read_text())
    for task, keys in REQUIRED_KEYS.items():
        missing = [k for k in keys if f"{task}/{k}" not in flat]
        assert not missing, f"{task} lacks {missing}"
    for key, value in flat.items():
        if key.split("/")[-1] in ("em", "cider", "bleu4", "meteor", "rouge_l", "delta1", "auc@30"):
            assert 0.0 <= value <= 1000.0, (key, value)
    # Each question / query is answered exactly once.
    for task in ("scanqa", "sqa3d"):
        assert results[task]["answered"] == results[task]["count"] > 0
    for task in ("scanrefer", "multi3drefer"):
        for protocol in ("free_form", "proposals"):
            assert results[task][protocol]["answered"] == results[task][protocol]["overall"]["count"] > 0

    run_info = json.loads((out / "mlflow_run.json").read_text())
    assert run_info["ok"], run_info
    client = MlflowClient(tracking_uri=evaluation["tracking_uri"])
    run = client.get_run(run_info["run_id"])
    assert run.data.metrics == pytest.approx(mlflow_metrics(flat))
    assert "scanrefer/proposals/overall/acc_at_0.25" in run.data.metrics
    tags = run.data.tags
    assert tags["protocols"] == ("scanrefer=free_form,proposals;multi3drefer=free_form,proposals;"
                                 "scan2cap=gt_boxes,proposals")
    assert tags["model_uri"] == f"models:/{REGISTERED}/{evaluation['version']}"
    assert tags["registered_model_name"] == REGISTERED
    assert tags["registered_model_version"] == evaluation["version"]
    assert tags["model_source_run_id"] == evaluation["run_id"]
    assert tags["data_uri"] and len(tags["manifest_sha256"]) == 64
    assert run.data.params["tasks"] == json.dumps(list(REQUIRED_KEYS))
    artifacts = set()
    stack = [None]
    while stack:
        for item in client.list_artifacts(run.info.run_id, stack.pop()):
            if item.is_dir:
                stack.append(item.path)
            else:
                artifacts.add(item.path)
    assert {"results.json", "metrics.json", "summary.md", "examples.md", "eval_config.json",
            "predictions/predictions.jsonl", "plots/task_scores.png", "plots/depth_error_hist.png",
            "plots/examples.png", "plots/scanqa.png", "plots/reconstruction.png"} <= artifacts
    version = client.get_model_version(REGISTERED, evaluation["version"])
    assert version.tags["eval_run_id"] == run.info.run_id


@pytest.mark.slow
def test_predictions_are_the_models_in_the_benchmark_frame(evaluation, clip_shards):
    """Re-run the model on one clip: the ScanRefer boxes in the file are its first-camera boxes mapped with
    ``axisAlignment @ cam_to_world[0]``; reconstruction arrays match the ground-truth resolution."""
    import torch

    from pipelines.artifacts import load_model_and_processor
    from pipelines.eval.alignment import first_camera_to_aligned, transform_boxes
    from pipelines.eval.predictions import load_predictions

    out: Path = evaluation["out"]
    preds = load_predictions(str(out / "predictions" / "predictions.jsonl"))
    config = json.loads((out / "eval_config.json").read_text())
    model, tok = load_model_and_processor(config["inputs"]["model_local_dir"])
    clip = _decoded(clip_shards)[0]
    scene_id = clip.meta["scene_id"]
    ref = [p for p in preds if p.task == "scanrefer" and p.scene_id == scene_id][0]
    query = next(e for e in clip.annotations["scanrefer"] if str(e["ann_id"]) == ref.ann_id
                 and int(e["object_id"]) == ref.object_id)
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float().div(255.0)[None]
    grounding = model.ground(model.encode_scene(frames), [query["description"]], tok, max_new_tokens=1)
    transform = first_camera_to_aligned(np.asarray(clip.boxes["axis_alignment"]), clip.cam_to_world[0])
    expected = transform_boxes(grounding.boxes[0, :1].numpy().astype(np.float64), transform)
    np.testing.assert_allclose(ref.boxes, expected, atol=1e-4)
    assert ref.frame == "aligned" and ref.boxes.shape == (1, 6)
    recon = next(p for p in preds if p.task == "reconstruction" and p.scene_id == scene_id)
    assert recon.depth.shape == clip.depth_m.shape and recon.poses.shape == (clip.num_frames, 3, 4)
    assert np.isfinite(recon.depth).all() and (recon.depth > 0).mean() > 0.9
    answers = [p.answer for p in preds if p.task == "scanqa"]
    assert answers and all(isinstance(a, str) and a for a in answers)


@pytest.mark.slow
def test_proposals_are_captioned_and_rescoring_the_file_reproduces_the_run(evaluation, proposals_file, tmp_path):
    """Under the proposals protocol every proposal of a scene is captioned (in the benchmark frame in the file), and
    ``--predictions`` on the run's own prediction file gives exactly the run's metrics, with no model."""
    from pipelines.eval.__main__ import main
    from pipelines.eval.predictions import load_predictions

    out: Path = evaluation["out"]
    preds = load_predictions(str(out / "predictions" / "predictions.jsonl"))
    flat = json.loads((out / "metrics.json").read_text())
    gt_captions = sum(len(p.captions) for p in preds if p.task == "scan2cap" and p.protocol == "gt_boxes")
    assert gt_captions == flat["scan2cap/gt_boxes/num_objects"] == flat["scan2cap/proposals/num_objects"] > 0
    for scene_id, props in proposals_file["proposals"].items():
        captioned = [p for p in preds if p.task == "scan2cap" and p.scene_id == scene_id and p.protocol == "proposals"]
        boxes = np.concatenate([p.boxes for p in captioned])
        np.testing.assert_allclose(boxes, props.boxes, atol=1e-9)
        assert all(isinstance(c, str) for p in captioned for c in p.captions)
    argv = list(evaluation["argv"])
    model_at = argv.index("--model")
    argv[model_at:model_at + 2] = ["--predictions", str(out / "predictions" / "predictions.jsonl")]
    argv[argv.index("--out") + 1] = str(tmp_path / "rescored")
    assert main(argv) == 0
    again = json.loads((tmp_path / "rescored" / "metrics.json").read_text())
    assert again == flat


@pytest.mark.slow
def test_unreachable_tracking_server_still_writes_results(tmp_path, clip_shards, synthetic_root, trained_model,
                                                          capsys):
    """Also: ``--annotations`` replaces the shards' entries and ``--split val`` keeps only the val scene's."""
    from pipelines.eval.__main__ import main
    from tests.conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    rc = main(["--model", trained_model["path"], "--data", clip_shards, "--tasks", "sqa3d,reconstruction",
               "--out", str(tmp_path / "out"), "--mlflow-uri", uri, "--tiny", "--no-plots",
               "--annotations", str(synthetic_root / "raw" / "annotations"), "--split", "val"])
    assert rc == 0
    flat = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "sqa3d/em" in flat and "reconstruction/depth/abs_rel" in flat and "scanqa/em" not in flat
    assert flat["sqa3d/count"] == flat["sqa3d/answered"] == 3  # --tiny: 3 questions of the one val scene
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions" / "predictions.jsonl").open()]
    assert {r["scene_id"] for r in records if r["task"] == "sqa3d"} == {"scene0001_00"}
    assert flat["reconstruction/num_depth_scored"] == 2
    run_info = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())
    assert not run_info["ok"] and uri in run_info["message"]
    printed = capsys.readouterr().out
    assert f"WARNING: MLflow at {uri} failed" in printed and "results were written locally only" in printed
    assert "SQA3D EM@1" in printed and "Depth AbsRel (metric)" in printed  # the final summary table


def test_help_explains(capsys):
    from pipelines.eval.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--model", "models:/", "--data", "--tasks", "--annotations", "--mlflow-uri", "axisAlignment"):
        assert word in text


@pytest.mark.slow
def test_bad_uris_name_the_uri(tmp_path, clip_shards, trained_model, s3_bucket, capsys):
    from pipelines.eval.__main__ import main

    common = ["--tasks", "scanqa", "--out", str(tmp_path / "out"), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"]
    cases = [
        (["--model", str(tmp_path / "no-such-model"), "--data", clip_shards], str(tmp_path / "no-such-model")),
        (["--model", f"{s3_bucket}/no/model", "--data", clip_shards], f"{s3_bucket}/no/model"),
        (["--model", "models:/no-such-model/3", "--data", clip_shards], "models:/no-such-model/3"),
        (["--model", trained_model["path"], "--data", str(tmp_path / "no-shards")], str(tmp_path / "no-shards")),
        (["--model", trained_model["path"], "--data", f"{s3_bucket}/missing"], f"{s3_bucket}/missing"),
    ]
    for args, named in cases:
        assert main(args + common) == 2
        err = capsys.readouterr().err
        assert named in err and ("--model" in err or "--data" in err), err


@pytest.mark.slow
def test_model_from_s3_is_downloaded_once(tmp_path, trained_model, s3_bucket):
    import s3fs

    from pipelines.artifacts import resolve_model

    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    remote = f"{s3_bucket}/exports/run-1/model"
    fs.put(trained_model["path"] + "/", remote.removeprefix("s3://") + "/", recursive=True)
    first = resolve_model(remote, cache_dir=str(tmp_path / "cache"))
    assert Path(first.local_dir, "model.safetensors").read_bytes() == \
        Path(trained_model["path"], "model.safetensors").read_bytes()
    stamp = Path(first.local_dir, "model.safetensors").stat().st_mtime_ns
    again = resolve_model(remote, cache_dir=str(tmp_path / "cache"))  # unchanged on S3: served from the cache
    assert again.local_dir == first.local_dir and again.tags() == {"model_uri": remote}
    assert Path(again.local_dir, "model.safetensors").stat().st_mtime_ns == stamp


def test_select_annotations_split_limit_and_missing_boxes():
    boxes = {"objects": [{"object_id": 1}, {"object_id": 2}]}

    def ref(obj: str) -> dict:
        return {"scene_id": "s", "object_id": obj, "ann_id": "0", "description": f"object {obj}", "split": "val"}

    ann = {
        "scanqa": [{"question_id": f"q{i}", "split": "val" if i % 2 else "train"} for i in range(6)],
        "scanrefer": [ref("1"), ref("9"), ref("2")],
        "multi3drefer": [{"object_ids": [], "split": "val"}, {"object_ids": [1, 9], "split": "val"}],
    }
    tasks = ["scanqa", "scanrefer", "multi3drefer", "scan2cap", "reconstruction"]
    chosen, dropped = select_annotations(ann, boxes, tasks, "val", 2, selection="first")
    assert [e["question_id"] for e in chosen["scanqa"]] == ["q1", "q3"]
    assert [e["object_id"] for e in chosen["scanrefer"]] == ["1", "2"]
    assert chosen["multi3drefer"] == [{"object_ids": [], "split": "val"}]
    assert "reconstruction" not in chosen
    # Without a scan2cap set, ScanRefer entries are grouped per object; they carry no split, so "val" keeps none.
    assert chosen["scan2cap"] == []
    assert dropped == {"scanrefer": 1, "multi3drefer": 1}
    grouped, dropped = select_annotations(ann, boxes, ["scan2cap"], None, None, selection="first")
    assert grouped["scan2cap"] == [{"scene_id": "s", "object_id": "1", "captions": ["object 1"]},
                                   {"scene_id": "s", "object_id": "2", "captions": ["object 2"]}]
    assert dropped == {"scan2cap": 1}


def test_a_cap_takes_every_family_round_robin():
    """``--max-queries N`` with the default stratified selection: the first N questions of a synthetic scene are all
    counting questions, so the cap takes one per family instead (annotation ``family`` first, else templates)."""
    questions = [f"How many {c} are in the room?" for c in ("chairs", "beds", "lamps")]
    questions += ["What color is the bed?", "Is there a sofa in the room?", "What is next to the bed?"]
    ann = {"scanqa": [{"question_id": f"q{i}", "question": q} for i, q in enumerate(questions)]
           + [{"question_id": "q9", "question": "Where?", "family": "counting"}],
           "scanrefer": [{"object_id": o, "ann_id": a} for o in ("1", "2") for a in ("0", "1")],
           "multi3drefer": [{"object_ids": [], "eval_type": t, "ann_id": i} for i, t in enumerate("aabbc")]}
    boxes = {"objects": [{"object_id": 1}, {"object_id": 2}]}
    chosen, _ = select_annotations(ann, boxes, ["scanqa", "scanrefer", "multi3drefer"], None, 4)
    assert [e["question_id"] for e in chosen["scanqa"]] == ["q0", "q3", "q4", "q5"]  # counting, colour, ...
    assert [(e["object_id"], e["ann_id"]) for e in chosen["scanrefer"]] == [("1", "0"), ("2", "0"), ("1", "1"),
                                                                            ("2", "1")]  # fmt: skip
    assert [e["eval_type"] for e in chosen["multi3drefer"]] == ["a", "b", "c", "a"]
    first, _ = select_annotations(ann, boxes, ["scanqa"], None, 4, selection="first")
    assert [e["question_id"] for e in first["scanqa"]] == ["q0", "q1", "q2", "q3"]
    every, _ = select_annotations(ann, boxes, ["scanqa"], None, None)
    assert len(every["scanqa"]) == 7


def test_cli_flags_for_protocols_and_queries():
    from pipelines.eval.__main__ import build_parser, resolve_config

    args = build_parser().parse_args(["--predictions", "p.jsonl", "--data", "d", "--tiny", "--all-queries",
                                      "--proposals", "s3://b/pred_box.json", "--proposals-format", "video3dllm"])
    cfg = resolve_config(args)
    assert cfg.max_queries_per_task is None and cfg.proposals == "s3://b/pred_box.json"
    assert cfg.proposals_format == "video3dllm" and cfg.uses_proposals
    assert cfg.protocol.grounding_protocols == ("free_form", "proposals")
    assert cfg.protocol.captioning_protocols == ("gt_boxes", "proposals")
    assert resolve_config(build_parser().parse_args(["--model", "m", "--data", "d", "--tiny"])).max_queries_per_task == 3


def test_mlflow_keys_are_safe_and_collisions_refused():
    assert mlflow_key("scanrefer/overall/acc@0.25") == "scanrefer/overall/acc_at_0.25"
    assert mlflow_key("sqa3d/by_type/what?/em") == "sqa3d/by_type/what_/em"
    with pytest.raises(ValueError, match="both map"):
        mlflow_metrics({"a/b?": 1.0, "a/b!": 2.0})


def test_config_validation_and_round_trip():
    cfg = EvalJobConfig.tiny()
    assert EvalJobConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown task"):
        EvalJobConfig(tasks=("scanqa", "vqa"))
    with pytest.raises(ValueError, match="unknown field 'batchsize'"):
        EvalJobConfig.from_dict({"batchsize": 2})
    with pytest.raises(ValueError, match="unknown field 'protocol.meteorr'"):
        EvalJobConfig.from_dict({"protocol": {"meteorr": False}})
    with pytest.raises(ValueError, match="num_gpus"):
        EvalJobConfig(num_gpus=-1)
    proposals = {"protocol": {"grounding_protocols": ["free_form", "proposals"]}}
    with pytest.raises(ValueError, match="needs proposals"):
        EvalJobConfig.from_dict(proposals)
    assert EvalJobConfig.from_dict({**proposals, "tasks": ["scanqa"]}).uses_proposals is False  # no grounding task
    with_file = EvalJobConfig.from_dict({**proposals, "proposals": "p.json"})
    assert EvalJobConfig.from_dict(json.loads(json.dumps(with_file.to_dict()))) == with_file
    with pytest.raises(ValueError, match="needs proposals_scans_root"):
        EvalJobConfig(proposals="mask/", proposals_format="leo_masks")
    with pytest.raises(ValueError, match="proposals_format"):
        EvalJobConfig(proposals_format="mask3d")
    with pytest.raises(ValueError, match="query_selection"):
        EvalJobConfig(query_selection="random")


@pytest.mark.slow
def test_plan_clips_one_clip_per_scene(clip_shards, tmp_path):
    plan = plan_clips(clip_shards)
    keys = [k for p in plan for k in p["keys"]]
    assert keys == ["scene0000_00-c0000", "scene0001_00-c0000"]
    with pytest.raises(DataSourceError, match="clip 3"):
        plan_clips(clip_shards, clip_index=3)
    with pytest.raises(DataSourceError, match=str(tmp_path)):
        plan_clips(str(tmp_path))
