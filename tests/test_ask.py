"""``vidllm ask`` through the real CLI (subprocesses) with the real tiny Vid-LLM export and real encoded videos:
the printed answer, boxes and caption are the model's, the ``--out`` PLY (read back with plyfile, an independent
reader) holds the points and the box wireframes, and each bad input is one line on stderr with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NASA = ROOT / "tests" / "data" / "videos" / "nasa_13013.mp4"
NUM_FRAMES = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The real tiny ``VidLLM`` (random init, fixed seed) exported with ``save_pretrained`` plus its processor."""
    import torch

    from model import VidLLM, VidLLMConfig, VidLLMProcessor

    torch.manual_seed(0)
    cfg = VidLLMConfig.tiny()
    out = tmp_path_factory.mktemp("ask-export") / "vidllm-tiny"
    VidLLM(cfg).save_pretrained(out)
    VidLLMProcessor.from_config(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """``room``: an H.264 MP4 encoded here; ``truncated``: its first half; ``text``: not a video at all."""
    from pipelines.scenes.video import encode_video

    root = tmp_path_factory.mktemp("ask-videos")
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, size=(48, 128, 3), dtype=np.uint8)
    frames = [np.ascontiguousarray(base[:, i: i + 64]) for i in range(20)]
    room = root / "room.mp4"
    encode_video(str(room), frames, fps=10.0, gop=5)
    truncated = root / "truncated.mp4"
    truncated.write_bytes(room.read_bytes()[: room.stat().st_size // 2])
    text = root / "notes.mp4"
    text.write_text("this is not a video\n")
    return {"room": room, "truncated": truncated, "text": text}


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> dict[str, Path]:
    """``empty``: a directory without a checkpoint; ``broken``: a checkpoint whose config.json is not JSON."""
    root = tmp_path_factory.mktemp("ask-bad-models")
    (root / "empty").mkdir()
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    return {"empty": root / "empty", "broken": broken}


def _vidllm(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "ask", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def _expected(checkpoint: Path, video: Path, question: str, description: str, box: list[float]) -> dict:
    """The same tasks computed here with the model's own API on the endpoint's sampling of the video."""
    import torch

    from pipelines.ask import load_model
    from pipelines.serve.config import LimitsConfig
    from pipelines.serve.video_input import SamplingSpec, sample_clip

    model, tokenizer = load_model(str(checkpoint), "cpu")
    size = int(model.vidllm_config.encoder.dinov2["image_size"])
    frames = sample_clip(video.read_bytes(), SamplingSpec(NUM_FRAMES, size, size), LimitsConfig()).frames
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255.0)[None]
    scene = model.encode_scene(clip)
    ground = model.ground(scene, [description], tokenizer)
    return {
        "answer": model.answer(scene, [question], tokenizer, max_new_tokens=8)[0],
        "caption": model.caption(scene, torch.tensor([box]), tokenizer, max_new_tokens=8)[0],
        "top_box": ground.boxes[0, 0].tolist(),
        "top_score": float(ground.scores[0, 0]),
        "valid_depth": int((torch.isfinite(scene.depth[0]) & (scene.depth[0] > 0)).sum()),
        "frames": frames,
    }


@pytest.mark.slow
def test_ask_ground_caption_and_ply(checkpoint, videos, tmp_path):
    import plyfile

    out = tmp_path / "room.ply"
    box = [0.1, -0.2, 1.5, 0.4, 0.5, 0.6]
    r = _vidllm(videos["room"], "what is on the table?", "--ground", "the chair", "--caption", *box,
                "--model", checkpoint, "--num-frames", NUM_FRAMES, "--max-new-tokens", 8, "--top-k", 3,
                "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    expected = _expected(checkpoint, videos["room"], "what is on the table?", "the chair", box)
    assert result["answer"] == expected["answer"] and result["caption"] == expected["caption"]
    boxes = result["boxes"]
    assert 1 <= len(boxes) <= 3 and all(b["kind"] == "ground" for b in boxes)
    scores = [b["score"] for b in boxes]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    np.testing.assert_allclose(boxes[0]["center"] + boxes[0]["size"], expected["top_box"], rtol=1e-5, atol=1e-6)
    assert boxes[0]["score"] == pytest.approx(expected["top_score"], abs=1e-6)

    # The PLY: every valid depth pixel as a point coloured from the video, then the boxes as wireframes.
    ply = plyfile.PlyData.read(str(out))
    assert [e.name for e in ply.elements] == ["vertex", "edge"]
    vertex, edge = ply["vertex"].data, ply["edge"].data
    drawn = [*boxes, {"kind": "caption", "center": box[:3], "size": box[3:]}]
    num_points = result["points"]
    assert num_points == expected["valid_depth"] > 0
    assert len(vertex) == num_points + 8 * len(drawn) and len(edge) == 12 * len(drawn)
    xyz = np.stack([vertex[a] for a in "xyz"], axis=1)
    rgb = np.stack([vertex[c] for c in ("red", "green", "blue")], axis=1)
    assert np.isfinite(xyz).all() and rgb[:num_points].max() > 0
    colours = {"ground": (255, 176, 0), "caption": (255, 61, 242)}
    for k, b in enumerate(drawn):
        corners = xyz[num_points + 8 * k: num_points + 8 * k + 8]
        np.testing.assert_allclose(corners.min(0), np.subtract(b["center"], np.divide(b["size"], 2)), atol=1e-5)
        np.testing.assert_allclose(corners.max(0), np.add(b["center"], np.divide(b["size"], 2)), atol=1e-5)
        mine = edge[12 * k: 12 * k + 12]
        ends = np.stack([mine["vertex1"], mine["vertex2"]], axis=1) - num_points - 8 * k
        assert ends.min() == 0 and ends.max() == 7
        # Each edge joins two corners that differ along exactly one axis, by that axis's full size.
        delta = np.abs(corners[ends[:, 1]] - corners[ends[:, 0]])
        assert ((delta > 1e-6).sum(axis=1) == 1).all()
        assert {tuple(c) for c in np.stack([mine["red"], mine["green"], mine["blue"]], 1)} == {colours[b["kind"]]}
    assert sum(c.startswith("box ") for c in ply.comments) == len(drawn)


@pytest.mark.slow
def test_text_output_on_a_real_video(checkpoint):
    r = _vidllm(NASA, "--ground", "the lamp", "--model", checkpoint, "--num-frames", NUM_FRAMES, "--top-k", 2)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert 1 <= len(lines) <= 2
    assert all(line.startswith(f"box {i}: score ") and line.endswith(" m") for i, line in enumerate(lines, 1))


@pytest.mark.parametrize(
    ("args", "expected"),  # expected: the parts of the message, split by "|"
    [
        (["{missing}", "q"], "video {missing}: no such file"),
        (["{text}", "q"], "not a decodable video"),
        (["{truncated}", "q"], "truncated file"),
        (["{room}", "q", "--model", "{tmp}/no-model"], "--model|{tmp}/no-model|directory does not exist"),
        (["{room}", "q", "--model", "{empty}"], "--model|{empty}|checkpoint directory with config.json"),
        (["{room}", "q", "--model", "{broken}"], "cannot load the checkpoint"),
        (["{room}"], "nothing to ask"),
        (["{room}", "  "], "QUESTION is empty"),
        (["{room}", "q", "--out", "{tmp}/missing-dir/x.ply"], "directory {tmp}/missing-dir does not exist"),
        (["{room}", "q", "--out", "{tmp}/x.obj"], "give a name ending in .ply"),
        (["{room}", "--caption", "0", "0", "1", "0.5", "0", "0.5"], "size W H D must be > 0"),
        (["{room}", "--caption", "0", "nan", "1", "0.5", "0.5", "0.5"], "finite numbers"),
    ],
    ids=["missing-video", "not-a-video", "truncated-video", "missing-model", "no-checkpoint", "broken-model",
         "nothing-to-ask", "empty-question", "out-dir-missing", "out-not-ply", "caption-size", "caption-nan"],
)
def test_mistakes_are_one_line_with_exit_2(args, expected, checkpoint, videos, bad_models, tmp_path):
    names = {"missing": tmp_path / "missing.mp4", "tmp": tmp_path, **bad_models, **videos}
    argv = [a.format(**names) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(checkpoint)]
    r = _vidllm(*argv, "--num-frames", NUM_FRAMES)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("vidllm ask: error: "), lines[0]
    for part in expected.format(**names).split("|"):
        assert part in lines[0], (part, lines[0])
    assert r.stdout == "" and list(tmp_path.iterdir()) == []  # nothing written


def _readme_ask_commands() -> list[list[str]]:
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    return [shlex.split(line)[2:] for line in lines if line.startswith("vidllm ask ")]


def test_every_readme_ask_command_runs(checkpoint, tmp_path):
    """The README's ``vidllm ask`` lines, run as written from a folder holding the files they name."""
    import shutil

    from pipelines.scenes.video import encode_video

    commands = _readme_ask_commands()
    assert len(commands) >= 3
    base = np.random.default_rng(11).integers(0, 256, size=(48, 160, 3), dtype=np.uint8)
    for argv in commands:
        video, model = argv[0], argv[argv.index("--model") + 1]
        if not (tmp_path / video).exists():  # 40 frames: enough for the default 32-frame sample
            encode_video(str(tmp_path / video), [np.ascontiguousarray(base[:, i: i + 64]) for i in range(40)],
                         fps=10.0, gop=5)
        if not (tmp_path / model).exists():
            shutil.copytree(checkpoint, tmp_path / model)
        proc = subprocess.run([sys.executable, "-m", "pipelines.ask", *argv],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, f"vidllm ask {' '.join(argv)}: {proc.stderr}"
        assert proc.stdout.strip()
        if "--out" in argv:
            assert (tmp_path / argv[argv.index("--out") + 1]).stat().st_size > 0


def test_a_local_file_is_read_as_the_users_own_video(checkpoint, tmp_path):
    """Local limits (pipelines.ask.local_limits): a 3-frame video the endpoint would refuse (it wants 8 distinct
    frames) is answered, at the chosen frame size and in bf16; one frame reconstructs nothing and is refused."""
    from pipelines.ask import LOCAL_MAX_FRAME_PIXELS, local_limits
    from pipelines.scenes.video import encode_video

    limits = local_limits(NUM_FRAMES, 123)
    assert limits.decode.max_decode_s is None and limits.decode.max_frame_pixels == LOCAL_MAX_FRAME_PIXELS
    assert limits.min_source_frames == 2 and limits.max_upload_bytes == 123
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(48, 96, 3), dtype=np.uint8)
    short, single = tmp_path / "short.mp4", tmp_path / "single.mp4"
    encode_video(str(short), [np.ascontiguousarray(base[:, i * 8: i * 8 + 64]) for i in range(3)], fps=3.0, gop=3)
    encode_video(str(single), [np.ascontiguousarray(base[:, :64])], fps=1.0, gop=1)
    r = _vidllm(short, "what is here?", "--model", checkpoint, "--num-frames", NUM_FRAMES, "--frame-size", 56,
                "--dtype", "bf16", "--max-new-tokens", 4, "--json")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout)["answer"], str)
    r = _vidllm(single, "what is here?", "--model", checkpoint, "--num-frames", NUM_FRAMES)
    assert r.returncode == 2 and "at least 2 distinct frames" in r.stderr, r.stderr
    r = _vidllm(short, "what is here?", "--model", checkpoint, "--frame-size", 50)
    assert r.returncode == 2 and "--frame-size 50 is not a multiple of the model's patch size 14" in r.stderr
