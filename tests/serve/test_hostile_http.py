"""Hostile requests over real HTTP against the Serve app (auth on, docs behind auth, the real tiny Vid-LLM), with
the ingress and proxy processes' memory sampled throughout.

Classes: bodies refused before they are read (declared size) or while they stream (chunked); JSON that nests,
overflows or holds non-finite numbers, lone surrogates, control characters or the model's special tokens, each a
4xx naming the field; hostile videos (playlists naming server files, images, decode bombs, truncated files) and
valid edge cases (edit lists, WebM, rotation); one bad request in a batch failing alone; a client that disconnects
mid-upload; docs behind auth; chained and oversized URIs; the app healthy and its memory bounded at the end.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from pipelines.serve.config import ModelDeploymentConfig, ServeConfig
from tests.scenes import video_files as vf
from tests.serve.conftest import deploy, undeploy

pytestmark = pytest.mark.slow

APP = "hostile_battery"
TOKEN_ENV = "VIDLLM_HOSTILE_TOKEN"
TOKEN = "hostile-battery-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VIDEOS = Path(__file__).resolve().parents[1] / "data" / "videos"
MAX_UPLOAD = 300_000


class MemoryMonitor:
    """Samples the RSS of this app's ingress replica and of its Serve proxy every 20 ms."""

    def __init__(self, app: str):
        ingress = [p for p in psutil.process_iter(["cmdline"])
                   if (p.info["cmdline"] or [""])[0].startswith(f"ray::ServeReplica:{app}:VidLLMIngress")]
        assert len(ingress) == 1, ingress
        self.ingress = ingress[0]
        proxies = [p for p in self.ingress.parent().children()
                   if (p.cmdline() or [""])[0].startswith("ray::ProxyActor")]
        self.procs = {"ingress": self.ingress, **({"proxy": proxies[0]} if proxies else {})}
        self.samples: dict[str, list[tuple[float, int]]] = {k: [] for k in self.procs}
        self.start = {k: p.memory_info().rss for k, p in self.procs.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, proc in self.procs.items():
                with contextlib.suppress(psutil.Error):  # a sample lost while the process is busy
                    self.samples[name].append((time.monotonic(), proc.memory_info().rss))
            time.sleep(0.02)

    def peak(self, name: str, since: float = 0.0) -> int:
        return max((rss for t, rss in self.samples[name] if t >= since), default=self.start[name])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def app(serve_http, tiny_checkpoint, scene_bucket):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe(f"{scene_bucket}/hostile/ok.mp4", vf.mp4(12))
    fs.pipe(f"{scene_bucket}/hostile/big.mp4", b"\0" * (MAX_UPLOAD + 1))
    fs.pipe(f"{scene_bucket}/hostile/exact.mp4", vf.mp4(12) + b"\0" * 0)
    cfg = ServeConfig.tiny(
        str(tiny_checkpoint), auth_token_env=TOKEN_ENV, docs_require_auth=True,
        allowed_uri_prefixes=(f"{scene_bucket}/hostile/",),
        model=ModelDeploymentConfig(num_gpus=0.0, num_cpus=0.5, max_ongoing_requests=16, max_queued_requests=64,
                                      max_batch_size=8, batch_wait_timeout_s=0.25),
        limits={"max_upload_bytes": MAX_UPLOAD, "num_frames": 4, "min_source_frames": 4, "max_question_chars": 200,
                "max_new_tokens": 4, "decode": {"max_frame_pixels": 1920 * 1080, "max_decoded_bytes": 256 * 1024**2,
                                                "max_decode_s": 20.0}},
    )
    url = deploy(serve_http, APP, cfg, ingress_env={TOKEN_ENV: TOKEN})
    monitor = MemoryMonitor(APP)
    yield {"url": url, "port": int(serve_http.rsplit(":", 1)[1]), "monitor": monitor, "bucket": scene_bucket}
    monitor.stop()
    undeploy(APP)


@pytest.fixture(scope="module")
def scene(app) -> str:
    r = requests.post(f"{app['url']}/v1/scenes", files={"video": ("ok.mp4", vf.mp4(12), "video/mp4")},
                      headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["scene_id"]


def _assert_error(r: requests.Response, status: int, field: str | None, error: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()  # always a valid JSON body, whatever the input held
    assert set(body) == {"error", "field", "detail"}, body
    assert body["field"] == field, body
    if error is not None:
        assert body["error"] == error, body
    return body


def _raw(port: int, head: str, body_chunks=(), timeout: float = 10.0) -> bytes:
    """Send a raw HTTP/1.1 request (headers, then ``body_chunks``) and return the first bytes of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode("latin-1"))
        for chunk in body_chunks:
            try:
                s.sendall(chunk)
            except OSError:  # the server answered and closed: what is measured is that it answered
                break
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
                data = s.recv(65536)
                if not data:
                    break
                answer += data
        except TimeoutError:
            return answer or b"<no answer within the timeout>"
        return answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else -1


# ------------------------------------------------------------------------------------------------------ bodies
def _routes(scene: str) -> list[tuple[str, str]]:
    return [(f"/v1/scenes/{scene}/answer", "application/json"), (f"/v1/scenes/{scene}/caption", "application/json"),
            (f"/v1/scenes/{scene}/ground", "application/json"), ("/v1/scenes:from_uri", "application/json"),
            ("/v1/scenes", "multipart/form-data; boundary=xx"), ("/v1/answer", "multipart/form-data; boundary=xx")]


@pytest.mark.parametrize("length", [str(4 * 1024**3), "9" * 40, str(MAX_UPLOAD + 70_000)])
def test_declared_oversize_bodies_are_refused_before_reading(app, scene, length):
    """Only the headers are sent: the 413 must come without waiting for (or buffering) the body."""
    for path, media in _routes(scene):
        head = (f"POST /{APP}{path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: {media}\r\nContent-Length: {length}\r\n\r\n")
        answer = _raw(app["port"], head)
        if len(length) > 19:  # uvicorn's own parser refuses a length beyond 64 bits, before the app sees it
            assert _status(answer) in (400, 413), (path, answer[:200])
            continue
        assert _status(answer) == 413, (path, answer[:200])
        assert b'"error":"body_too_large"' in answer


def test_chunked_bodies_are_capped_while_streaming(app, scene):
    """128 KiB sent and the body left open: the JSON cap (64 KiB) answers 413 without waiting for the end; an
    upload over its cap too. Nothing is buffered beyond the cap."""
    chunk = b"a" * 8192
    framed = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * 16
    for path, media in _routes(scene)[:4]:
        head = (f"POST /{APP}{path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: {media}\r\nTransfer-Encoding: chunked\r\n\r\n")
        answer = _raw(app["port"], head, framed)
        assert _status(answer) == 413, (path, answer[:200])
    part = (b"--xx\r\nContent-Disposition: form-data; name=\"video\"; filename=\"a.mp4\"\r\n"
            b"Content-Type: video/mp4\r\n\r\n")
    big = [f"{len(part):x}\r\n".encode() + part + b"\r\n"] + framed * 4  # 512 KiB > 300 KB + slack
    head = (f"POST /{APP}/v1/scenes HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: multipart/form-data; boundary=xx\r\nTransfer-Encoding: chunked\r\n\r\n")
    answer = _raw(app["port"], head, big)
    assert _status(answer) == 413 and b'"field":"video"' in answer, answer[:300]


def test_chunked_upload_within_the_cap_is_accepted(app):
    """No Content-Length is no longer a 411: the running count caps the body instead."""
    def body():
        yield b'--xx\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n\r\n'
        yield vf.mp4(10, seed_offset=3)
        yield b"\r\n--xx--\r\n"

    r = requests.post(f"{app['url']}/v1/scenes", data=body(), timeout=60,
                      headers={**AUTH, "Content-Type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 200, r.text
    assert r.json()["frames_used"] == 4


def test_real_oversize_bodies(app, scene):
    url = f"{app['url']}/v1/scenes/{scene}/answer"
    r = requests.post(url, data=b"{" + b" " * 200_000 + b"}", headers={**AUTH, "Content-Type": "application/json"},
                      timeout=30)
    _assert_error(r, 413, None, "body_too_large")
    r = requests.post(f"{app['url']}/v1/scenes", files={"video": ("a.mp4", b"\0" * (MAX_UPLOAD + 100_000))},
                      headers=AUTH, timeout=30)
    _assert_error(r, 413, "video", "body_too_large")


# -------------------------------------------------------------------------------------------------------- JSON
JSON_CASES = [
    # (route, raw body, status, field, error)
    ("answer", "[" * 30_000 + "]" * 30_000, 400, None, "invalid_json"),
    ("answer", '{"question": ' + "[" * 20_000 + "]" * 20_000 + "}", 400, None, "invalid_json"),
    ("answer", '{"question": "\\ud800"}', 422, "question", "invalid_field"),
    ("answer", '{"question": "why \\udfff?"}', 422, "question", "invalid_field"),
    ("answer", '{"question": "a\\u0000b"}', 422, "question", "invalid_field"),
    ("answer", '{"question": "a\\u001bb"}', 422, "question", "invalid_field"),
    ("answer", '{"question": "<scene> <scene> what?"}', 422, "question", "invalid_field"),
    ("answer", '{"question": "what is <SCENE>?"}', 422, "question", "invalid_field"),
    ("answer", '{"question": "[PAD] [PAD]"}', 422, "question", "invalid_field"),
    ("answer", '{"question": ["a"]}', 422, "question", "invalid_field"),
    ("answer", '{"question": {"q": "a"}}', 422, "question", "invalid_field"),
    ("answer", '{"question": null}', 422, "question", "invalid_field"),
    ("answer", '{"question": true}', 422, "question", "invalid_field"),
    ("answer", '{"question": 1e999}', 422, "question", "invalid_field"),
    ("answer", '{"question": NaN}', 422, "question", "invalid_field"),
    ("answer", '{"question": "' + "x" * 300 + '"}', 422, "question", "field_too_long"),
    ("answer", '{"question": "ok", "\\ud800": 1}', 422, None, "invalid_field"),
    ("answer", '{"question": "ok", "' + "k" * 5000 + '": 1}', 422, "k" * 197 + "...", "invalid_field"),
    ("answer", '{"question": ' + "1" * 5000 + "}", 400, None, "invalid_json"),
    ("answer", b'{"question": "\xff\xfe"}', 400, None, "invalid_json"),
    ("answer", '"just a string"', 422, None, "invalid_body"),
    ("ground", '{"description": "the <loc> chair"}', 422, "description", "invalid_field"),
    ("ground", '{"description": "\\ud83d"}', 422, "description", "invalid_field"),
    ("ground", '{"description": "\\t\\n  "}', 422, "description", "empty_field"),
    ("caption", '{"box": {"center": [0, 0, ' + "9" * 400 + '], "size": [1, 1, 1]}}', 422, "box.center.2",
     "invalid_field"),
    ("caption", '{"box": {"center": [0, 0, -' + "9" * 400 + '], "size": [1, 1, 1]}}', 422, "box.center.2",
     "invalid_field"),
    ("caption", '{"box": {"center": [0, 0, 1e400], "size": [1, 1, 1]}}', 422, "box.center", "invalid_field"),
    ("caption", '{"box": {"center": [0, 0, 1], "size": [Infinity, 1, 1]}}', 422, "box.size", "invalid_field"),
    ("caption", '{"box": {"center": [0, 0, 1], "size": [-Infinity, 1, 1]}}', 422, "box.size", "invalid_field"),
    ("caption", '{"box": {"center": [0, 0, 1], "size": [1, 1, true]}}', 422, "box.size.2", "invalid_field"),
    ("caption", '{"box": {"center": [0, 0, "1"], "size": [1, 1, 1]}}', 422, "box.center.2", "invalid_field"),
    ("caption", '{"box": {"center": [0, 0, 1, 5], "size": [1, 1, 1]}}', 422, "box.center", "invalid_field"),
    ("caption", '{"box": {"center": [0, 0, 1], "size": [1e-320, 1, 1e308]}}', 422, "box.size", "invalid_field"),
    ("caption", '{"box": {"center": ' + "[" * 5000 + "]" * 5000 + ', "size": [1, 1, 1]}}', 400, None,
     "invalid_json"),
    ("uri", '{"uri": "{bucket}/hostile/ok.mp4::file:///etc/passwd"}', 400, "uri", "invalid_uri"),
    ("uri", '{"uri": "simplecache::{bucket}/hostile/ok.mp4"}', 400, "uri", "invalid_uri"),
    ("uri", '{"uri": "{bucket}/hostile/a::b.mp4"}', 400, "uri", "invalid_uri"),
    ("uri", '{"uri": "{bucket}/hostile/\\ud800.mp4"}', 422, "uri", "invalid_field"),
    ("uri", '{"uri": "{bucket}/hostile/big.mp4"}', 413, "uri", "video_too_large"),
    ("uri", '{"uri": "{bucket}/hostile/missing.mp4"}', 404, "uri", "uri_not_found"),
    ("uri", '{"uri": "file:///etc/passwd"}', 400, "uri", "unsupported_uri_scheme"),
    ("uri", '{"uri": 12345678901234567890123456789}', 422, "uri", "invalid_field"),
]


@pytest.mark.parametrize(("route", "body", "status", "field", "error"), JSON_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(JSON_CASES)])
def test_hostile_json_is_a_4xx_naming_the_field(app, scene, route, body, status, field, error):
    path = {"answer": f"/v1/scenes/{scene}/answer", "ground": f"/v1/scenes/{scene}/ground",
            "caption": f"/v1/scenes/{scene}/caption", "uri": "/v1/scenes:from_uri"}[route]
    data = body if isinstance(body, bytes) else body.replace("{bucket}", app["bucket"]).encode()
    r = requests.post(f"{app['url']}{path}", data=data, headers={**AUTH, "Content-Type": "application/json"},
                      timeout=30)
    detail = _assert_error(r, status, field, error)["detail"]
    assert len(detail) <= 2000 and "\ud800" not in detail


# ------------------------------------------------------------------------------------------------------ videos
def _upload(app, data: bytes, name: str = "clip.mp4", **fields) -> requests.Response:
    return requests.post(f"{app['url']}/v1/scenes", files={"video": (name, data, "video/mp4")}, data=fields,
                         headers=AUTH, timeout=60)


@pytest.fixture(scope="module")
def server_secret(app):
    """A real MP4 in the ingress replica's working directory, where FFmpeg would resolve a playlist's names."""
    cwd = Path(app["monitor"].ingress.cwd())
    name = f"hostile-secret-{uuid.uuid4().hex[:8]}.mp4"
    (cwd / name).write_bytes(vf.mp4(12, seed_offset=7))
    yield name
    (cwd / name).unlink()


def test_playlist_cannot_make_the_server_read_its_own_files(app, server_secret):
    """Before: the playlist registered the server's own video and answered with its point cloud; error texts also
    told whether a path existed. Now: refused by the container allow-list, the same answer either way."""
    details = set()
    for name in (server_secret, "no-such-file.mp4", "/etc/passwd"):
        r = _upload(app, vf.ffconcat(name))
        details.add(_assert_error(r, 422, "video", "unsupported_container")["detail"])
    assert len(details) == 1
    r = _upload(app, vf.hls_playlist(server_secret), name="list.m3u8")
    _assert_error(r, 422, "video")


VIDEO_CASES = [
    ("png renamed", lambda: vf.png(), 422, "unsupported_container"),
    ("gif", lambda: vf.gif(), 422, "unsupported_container"),
    ("mpegts", lambda: vf.mpegts(), 422, "unsupported_container"),
    ("8K bomb", lambda: vf.decode_bomb(), 422, "video_over_budget"),
    ("8K switch midway", lambda: vf.size_switch_mp4(), 422, "invalid_video"),
    ("1080p+1 over tiny budget", lambda: vf.decode_bomb(4, 1922, 1080), 422, "video_over_budget"),
    ("one frame", lambda: vf.mp4(1), 422, "video_too_short"),
    ("three frames", lambda: vf.mp4(3), 422, "video_too_short"),
    ("edit list hides all but 2", lambda: vf.edit_list_mp4(vf.mp4(12), hide_leading=10), 422, "video_too_short"),
    ("noise", lambda: bytes(range(256)) * 40, 422, "invalid_video"),
    ("empty", lambda: b"", 400, "empty_video"),
    ("ansi text", lambda: b"\x1b[1mhello\x1b[0m\n" * 100, 422, "invalid_video"),
]


@pytest.mark.parametrize(("label", "make", "status", "error"), VIDEO_CASES, ids=[c[0] for c in VIDEO_CASES])
def test_hostile_videos(app, label, make, status, error):
    _assert_error(_upload(app, make()), status, "video", error)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
def test_truncated_faststart_upload(app, tmp_path, fraction):
    data = vf.mp4(60, faststart=True, tmp_path=tmp_path)
    _assert_error(_upload(app, data[: int(len(data) * fraction)]), 422, "video", "truncated_video")


def test_truncated_webm_upload(app):
    data = (VIDEOS / "testsrc2_vp9.webm").read_bytes()
    _assert_error(_upload(app, data[: len(data) * 2 // 3]), 422, "video", "truncated_video")


@pytest.mark.parametrize(
    "make",
    [lambda: vf.edit_list_mp4(vf.mp4(30, bframes=2), hide_leading=5),
     lambda: vf.edit_list_mp4(vf.mp4(30), hide_leading=3, keep=20),
     lambda: (VIDEOS / "testsrc2_vp9.webm").read_bytes(),
     lambda: (VIDEOS / "nasa_13013_rotated.mp4").read_bytes(),
     lambda: (VIDEOS / "test_non_zero_start.mp4").read_bytes()],
    ids=["edit-list-leading", "edit-list-both-ends", "webm-vp9", "rotated", "non-zero-start"],
)
def test_valid_edge_case_videos_are_accepted(app, make):
    r = _upload(app, make())
    assert r.status_code == 200, r.text
    assert r.json()["frames_used"] == 4


def test_concurrent_decode_bombs(app):
    bomb = vf.decode_bomb()
    monitor = app["monitor"]
    before, started = monitor.ingress.memory_info().rss, time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _upload(app, bomb), range(6)))
    time.sleep(0.1)
    for r in answers:
        _assert_error(r, 422, "video", "video_over_budget")
    # Refused from the metadata: no 8K picture is ever allocated (one decoded 8K frame is ~50 MB, RGB ~100 MB).
    assert monitor.peak("ingress", started) - before < 40 * 1024**2


def test_multipart_text_fields(app):
    clip = vf.mp4(12)
    for question, status, error in (("a\x00b", 422, "invalid_field"), ("<scene>", 422, "invalid_field"),
                                    ("", 422, "empty_field"), ("x" * 300, 422, "field_too_long")):
        r = requests.post(f"{app['url']}/v1/answer", files={"video": ("c.mp4", clip, "video/mp4")},
                          data={"question": question}, headers=AUTH, timeout=60)
        _assert_error(r, status, "question", error)
    # Bytes that are not UTF-8 in a multipart field decode as Latin-1: text, not a crash.
    body = (b'--xx\r\nContent-Disposition: form-data; name="question"\r\n\r\n\xed\xa0\x80 what?\r\n'
            b'--xx\r\nContent-Disposition: form-data; name="video"; filename="c.mp4"\r\n\r\n' + clip +
            b"\r\n--xx--\r\n")
    r = requests.post(f"{app['url']}/v1/answer", data=body, timeout=60,
                      headers={**AUTH, "Content-Type": "multipart/form-data; boundary=xx"})
    assert r.status_code in (200, 422), r.text
    for broken in (b"--xx\r\nno headers\r\n", b"garbage without a boundary"):
        r = requests.post(f"{app['url']}/v1/scenes", data=broken, timeout=30,
                          headers={**AUTH, "Content-Type": "multipart/form-data; boundary=xx"})
        assert r.status_code in (400, 422), r.text
    two = {"video": ("a.mp4", clip, "video/mp4"), "other": ("b.mp4", clip, "video/mp4")}
    r = requests.post(f"{app['url']}/v1/scenes", files=two, headers=AUTH, timeout=30)
    _assert_error(r, 400, None, "invalid_multipart")


# ------------------------------------------------------------------------------------------------------ batches
def test_bad_requests_do_not_fail_their_batch_neighbours(app, scene):
    """Requests arrive together (one model batch, 0.25 s wait): before, one lone surrogate in the batch made the
    tokenizer raise and every request of the batch answered 500. Now the bad ones are 422 at validation."""
    url = f"{app['url']}/v1/scenes/{scene}/answer"
    questions = ["is there a chair?", "\ud800", "what colour is the table?", "<scene> <scene>", "where is the door?",
                 "a\x00b", "how many lamps?", "is the bed near the window?"]
    barrier = threading.Barrier(len(questions))

    def ask(q: str) -> requests.Response:
        barrier.wait()
        return requests.post(url, data=json.dumps({"question": q}), timeout=60,
                             headers={**AUTH, "Content-Type": "application/json"})

    with ThreadPoolExecutor(len(questions)) as pool:
        answers = list(pool.map(ask, questions))
    for q, r in zip(questions, answers, strict=True):
        if q in ("\ud800", "<scene> <scene>", "a\x00b"):
            _assert_error(r, 422, "question")
        else:
            assert r.status_code == 200 and isinstance(r.json()["answer"], str), (q, r.text)


def test_a_failing_item_fails_alone_inside_the_model_batch(app, scene):
    """Past the ingress's validation (called on the model deployment directly): a prompt with two <scene> tokens
    makes the real model raise inside a real batch; only that call fails."""
    from ray import serve

    handle = serve.get_deployment_handle("VidLLMModel", app_name=APP).options(multiplexed_model_id=scene)
    questions = ["is there a chair?", "<scene> <scene> broken", "what is on the desk?", "is the door open?"]
    calls = [handle.answer.remote(scene, q) for q in questions]
    for q, call in zip(questions, calls, strict=True):
        if "broken" in q:
            with pytest.raises(Exception, match="exactly one <scene>"):
                call.result(timeout_s=60)
        else:
            assert isinstance(call.result(timeout_s=60), str), q
    stats = handle.stats.remote().result(timeout_s=30)
    assert max(stats["batch_sizes"]) > 1  # they did share a batch


def test_batch_size_metrics_are_bounded(app, scene):
    from ray import serve

    from pipelines.serve.model_deployment import _BATCH_SIZE_WINDOW

    handle = serve.get_deployment_handle("VidLLMModel", app_name=APP).options(multiplexed_model_id=scene)
    for _ in range(_BATCH_SIZE_WINDOW + 8):
        handle.caption.remote(scene, [0.0, 0.0, 1.0, 0.5, 0.5, 0.5]).result(timeout_s=60)
    assert len(handle.stats.remote().result(timeout_s=30)["batch_sizes"]) == _BATCH_SIZE_WINDOW


# ----------------------------------------------------------------------------------------- disconnects, docs, uri
def test_client_disconnect_mid_upload_is_not_an_error(app, ray_session):
    part = (b'--xx\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n'
            b"Content-Type: video/mp4\r\n\r\n" + b"\0" * 50_000)
    head = (f"POST /{APP}/v1/scenes HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: multipart/form-data; boundary=xx\r\nContent-Length: 200000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", app["port"]), timeout=10) as s:
        s.sendall(head.encode() + part)
        time.sleep(1.0)  # the upload is under way; then the client goes away
    pid = app["monitor"].ingress.pid
    logs = Path(ray_session._private.worker._global_node.get_logs_dir_path()) / "serve"
    # Serve either cancels the handler (logged as CANCELLED) or the handler sees the disconnect while reading.
    seen = ("register_upload: the client disconnected", f"POST /{APP}/v1/scenes CANCELLED")
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline and not any(s in text for s in seen):
        time.sleep(0.5)
        text = "".join(p.read_text(errors="replace") for p in logs.glob(f"replica_{APP}_VidLLMIngress_*.log"))
    assert any(s in text for s in seen), f"no disconnect line in the logs of pid {pid}"
    errors = [line for line in text.splitlines() if line.startswith("ERROR") or " ERROR " in line]
    assert "Traceback" not in text and "ClientDisconnect" not in text and not errors, errors[:3]
    assert requests.get(f"{app['url']}/healthz", timeout=10).json() == {"status": "ok"}


def test_docs_and_openapi_behind_auth(app):
    for path in ("/docs", "/openapi.json"):
        r = requests.get(f"{app['url']}{path}", timeout=10)
        _assert_error(r, 401, "Authorization", "unauthorized")
        assert requests.get(f"{app['url']}{path}", headers={"Authorization": "Bearer nope"},
                            timeout=10).status_code == 401
    spec = requests.get(f"{app['url']}/openapi.json", headers=AUTH, timeout=10).json()
    assert "/v1/scenes" in spec["paths"] and "/docs" not in spec["paths"]
    page = requests.get(f"{app['url']}/docs", headers=AUTH, timeout=10)
    assert page.status_code == 200 and '"spec"' in page.text and "/v1/scenes:from_uri" in page.text
    assert requests.get(f"{app['url']}/healthz", timeout=10).status_code == 200  # probes stay open


def test_every_route_needs_the_token(app, scene):
    for method, path in (("post", "/v1/scenes"), ("post", "/v1/scenes:from_uri"), ("post", "/v1/answer"),
                         ("post", f"/v1/scenes/{scene}/answer"), ("post", f"/v1/scenes/{scene}/caption"),
                         ("post", f"/v1/scenes/{scene}/ground"), ("get", f"/v1/scenes/{scene}/pointcloud")):
        for headers in ({}, {"Authorization": "Bearer " + "x" * 20_000}, {"Authorization": "Bearer"},
                        {"Authorization": f"bearer  {TOKEN}x"}):
            r = getattr(requests, method)(f"{app['url']}{path}", headers=headers, timeout=30)
            assert r.status_code in (400, 401, 431), (path, r.status_code, r.text[:200])


def test_uri_is_read_once_within_the_cap(app):
    r = requests.post(f"{app['url']}/v1/scenes:from_uri", json={"uri": f"{app['bucket']}/hostile/ok.mp4"},
                      headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    for _ in range(20):  # distinct URIs: each a clean 404, no filesystem object per URI
        r = requests.post(f"{app['url']}/v1/scenes:from_uri", headers=AUTH, timeout=30,
                          json={"uri": f"{app['bucket']}/hostile/{uuid.uuid4().hex}.mp4"})
        _assert_error(r, 404, "uri", "uri_not_found")


# ----------------------------------------------------------------------------------------------------- the end
def test_zz_app_healthy_and_memory_bounded_after_the_battery(app, scene):
    assert requests.get(f"{app['url']}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{app['url']}/readyz", timeout=30).json()["ready"] is True
    r = requests.post(f"{app['url']}/v1/scenes/{scene}/answer", json={"question": "still fine?"}, headers=AUTH,
                      timeout=60)
    assert r.status_code == 200, r.text
    monitor = app["monitor"]
    peaks = {k: monitor.peak(k) / 1024**2 for k in monitor.procs}
    growth = {k: peaks[k] - monitor.start[k] / 1024**2 for k in monitor.procs}
    print("\nhostile battery peak RSS (MiB): " + ", ".join(
        f"{k} {peaks[k]:.0f} (start {monitor.start[k] / 1024**2:.0f}, growth {growth[k]:.0f})" for k in peaks))
    # Bodies are capped at ~364 KB, videos decode two at a time within the tiny budget (1080p frames).
    assert growth["ingress"] < 400, growth
