"""The browser viewer on the real Serve app (tiny Vid-LLM, bearer auth on): its HTTP surface, then a real headless
Chromium driven through Selenium that uploads a real MP4 through the page, checks the rendered canvas pixel by
pixel, asks, grounds, captions a box clicked in the 3D view, and reopens the scene from the registered list.

Screenshots are written to ``$VIDLLM_SCREENSHOT_DIR`` (default: the test's tmp dir) so that CI keeps them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from pipelines.serve.config import ServeConfig
from tests.serve.conftest import deploy, undeploy

pytestmark = pytest.mark.slow

APP = "vw"
TOKEN_ENV = "VIDLLM_VIEWER_TEST_TOKEN"
TOKEN = "viewer-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VIDEO = Path(__file__).resolve().parents[1] / "data" / "videos" / "nasa_13013.mp4"
INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"

# Colours the page draws with (pipelines/serve/viewer/static/viewer.js) and the canvas background.
BACKGROUND = (20, 22, 27)
AMBER, GREEN, MAGENTA = (255, 176, 0), (57, 255, 20), (255, 61, 242)


@pytest.fixture(scope="module")
def app(serve_http, tiny_checkpoint):
    cfg = ServeConfig.tiny(
        str(tiny_checkpoint), auth_token_env=TOKEN_ENV,
        limits={"max_upload_bytes": 4 * 1024**2, "max_duration_s": 30.0, "max_source_frames": 600, "num_frames": 16,
                "max_new_tokens": 8, "pointcloud_max_points": 50_000},
    )
    url = deploy(serve_http, APP, cfg, ingress_env={TOKEN_ENV: TOKEN})
    yield url
    undeploy(APP)


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory) -> Path:
    root = os.environ.get("VIDLLM_SCREENSHOT_DIR")
    path = Path(root) if root else tmp_path_factory.mktemp("viewer-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- HTTP surface


def test_page_is_public_with_a_strict_policy(app):
    redirect = requests.get(f"{app}/viewer", allow_redirects=False, timeout=10)
    assert redirect.status_code == 307 and redirect.headers["location"] == "viewer/"
    page = requests.get(f"{app}/viewer", timeout=10)  # follows the redirect, without any token
    assert page.status_code == 200 and page.url == f"{app}/viewer/"
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    import_map = re.search(r'<script type="importmap">(.*?)</script>', page.text, re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(import_map.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp
    for name in ("viewer.js", "viewer.css", "vendor/three/three.module.min.js", "vendor/three/three.core.min.js",
                 "vendor/three/OrbitControls.js", "vendor/three/PLYLoader.js", "vendor/three/LICENSE"):
        r = requests.get(f"{app}/viewer/static/{name}", timeout=10)
        assert r.status_code == 200 and len(r.content) > 500, name
    assert "javascript" in requests.get(f"{app}/viewer/static/viewer.js", timeout=10).headers["content-type"]
    assert requests.get(f"{app}/viewer/static/../index.html", timeout=10).status_code == 404


def test_data_calls_need_the_token(app):
    for path in ("/v1/scenes", "/v1/scenes/0123456789abcdef0123456789abcdef/cameras"):
        for headers, detail in ((None, "missing bearer token"), ({"Authorization": "Bearer nope"}, "invalid")):
            r = requests.get(f"{app}{path}", headers=headers, timeout=10)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["field"] == "Authorization" and detail in r.json()["detail"]


def test_cameras_and_scene_list(app, clips):
    scene = requests.post(f"{app}/v1/scenes", files={"video": ("ok.mp4", clips["ok"], "video/mp4")}, headers=AUTH,
                          timeout=60).json()
    sid = scene["scene_id"]
    listed = requests.get(f"{app}/v1/scenes", headers=AUTH, timeout=10).json()["scenes"]
    assert {"scene_id": sid, "frames_used": 16} in listed
    r = requests.get(f"{app}/v1/scenes/{sid}/cameras", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scene_id"] == sid and body["image_size"] == [28, 28] and len(body["cameras"]) == 16
    # The camera centres are the trajectory registration reported, and the poses are rigid.
    centres = np.array([c["centre"] for c in body["cameras"]])
    np.testing.assert_allclose(centres, np.array(scene["camera_trajectory"]), atol=1e-5)
    for cam in body["cameras"]:
        pose = np.array(cam["camera_from_world"])
        rot, trans = pose[:, :3], pose[:, 3]
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-4)
        np.testing.assert_allclose(-rot.T @ trans, cam["centre"], atol=1e-5)
        k = np.array(cam["intrinsics"])
        assert k[0, 0] > 0 and k[1, 1] > 0 and k[2].tolist() == [0, 0, 1]
    bad = requests.get(f"{app}/v1/scenes/not-an-id/cameras", headers=AUTH, timeout=10)
    assert bad.status_code == 422 and bad.json()["field"] == "scene_id"
    unknown = requests.get(f"{app}/v1/scenes/{'0' * 32}/cameras", headers=AUTH, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_scene"


def test_vidllm_ask_gives_the_endpoint_answer(app, tiny_checkpoint):
    """`vidllm ask` samples and runs the model as the endpoint does: same video, same model, same answer."""
    import json
    import subprocess
    import sys

    question, description = "what is in the room?", "the chair"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "ask", str(VIDEO), question, "--ground", description,
         "--model", str(tiny_checkpoint), "--num-frames", "16", "--max-new-tokens", "8", "--json"],
        capture_output=True, text=True, env=env, cwd=root, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    local = json.loads(r.stdout)
    scene = requests.post(f"{app}/v1/scenes", files={"video": ("v.mp4", VIDEO.read_bytes(), "video/mp4")},
                          headers=AUTH, timeout=60).json()
    url = f"{app}/v1/scenes/{scene['scene_id']}"
    assert local["answer"] == requests.post(f"{url}/answer", json={"question": question}, headers=AUTH,
                                            timeout=60).json()["answer"]
    remote = requests.post(f"{url}/ground", json={"description": description}, headers=AUTH, timeout=60).json()
    assert len(local["boxes"]) == len(remote["boxes"])
    for mine, theirs in zip(local["boxes"], remote["boxes"], strict=True):
        np.testing.assert_allclose(mine["center"] + mine["size"], theirs["center"] + theirs["size"], atol=1e-5)
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-6)


# ---------------------------------------------------------------- real browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip(f"needs Debian's Chromium and ChromeDriver: {INSTALL}")
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"needs Selenium: {INSTALL}")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # Headless, software WebGL (SwiftShader), and none of Chromium's background calls to Google's hosts.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,800",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _status(driver) -> tuple[str, str]:
    from selenium.webdriver.common.by import By

    el = driver.find_element(By.ID, "status")
    return el.get_attribute("data-state"), el.text


def _settle(driver, timeout_s: float = 120) -> str:
    """Wait until the page's current action has finished; returns its status text (fails on an error)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state, text = _status(driver)
        if state not in ("busy", "idle"):
            assert state == "ok", text
            return text
        time.sleep(0.1)
    raise AssertionError(f"page still busy after {timeout_s} s: {_status(driver)}")


def _canvas(driver, save_as: Path | None = None) -> np.ndarray:
    """Screenshot of the 3D view as ``[H, W, 3]`` uint8 (and the whole window saved to ``save_as``)."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    if save_as is not None:
        driver.save_screenshot(str(save_as))
    png = driver.find_element(By.ID, "canvas").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _near(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 45) -> np.ndarray:
    return (np.abs(img.astype(np.int16) - np.array(rgb, np.int16)) <= tol).all(axis=-1)


def _drawn(img: np.ndarray) -> int:
    """Pixels that are not canvas background."""
    return int((~_near(img, BACKGROUND, tol=12)).sum())


def _submit(driver, form: str, **fields: str) -> str:
    from selenium.webdriver.common.by import By

    for name, value in fields.items():
        el = driver.find_element(By.ID, name)
        el.clear()
        el.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, f"#{form} button[type=submit]").click()
    return _settle(driver)


def test_viewer_in_a_real_browser(app, browser, screenshot_dir):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    text = lambda element_id: driver.find_element(By.ID, element_id).text  # noqa: E731

    # Without a token the page loads but its first data call is refused, and it says so.
    driver.get(f"{app}/viewer")
    deadline = time.monotonic() + 60
    while _status(driver)[0] in ("idle", "busy") and time.monotonic() < deadline:
        time.sleep(0.1)
    state, message = _status(driver)
    assert state == "error" and "missing bearer token" in message, message
    empty = _canvas(driver, screenshot_dir / "viewer-01-no-token.png")

    # Register a real MP4 through the page's file input: points, trajectory and grid appear.
    assert "Access OK" in _submit(driver, "token-form", token=TOKEN)
    driver.find_element(By.ID, "video").send_keys(str(VIDEO))
    loaded_msg = _submit(driver, "upload-form")
    assert re.search(r"loaded: \d+ points, 16 cameras", loaded_msg), loaded_msg
    loaded = _canvas(driver, screenshot_dir / "viewer-02-loaded.png")
    assert loaded.shape[0] > 300 and loaded.shape[1] > 500
    assert _drawn(loaded) > 0.02 * loaded.shape[0] * loaded.shape[1], "the 3D view is blank after loading a scene"
    assert _drawn(loaded) > 3 * _drawn(empty)
    info = text("scene-info")
    sid = re.search(r"scene\s+([0-9a-f]{32})", info).group(1)
    assert re.search(r"frames\s+16\b", info), info
    assert re.search(r"extent\s+[\d.]+ × [\d.]+ × [\d.]+ m", info), info

    # A question gets the model's answer (the same greedy answer the API gives).
    question = "what is in the room?"
    _submit(driver, "ask-form", question=question)
    expected = requests.post(f"{app}/v1/scenes/{sid}/answer", json={"question": question}, headers=AUTH,
                             timeout=60).json()["answer"]
    assert text("answer") == expected and expected

    # Grounding draws its boxes in the 3D view and lists them with scores.
    before = _canvas(driver)
    assert "box(es) found" in _submit(driver, "ground-form", description="the chair")
    grounded = _canvas(driver, screenshot_dir / "viewer-03-grounded.png")
    items = driver.find_elements(By.CSS_SELECTOR, "#boxes li")
    api_boxes = requests.post(f"{app}/v1/scenes/{sid}/ground", json={"description": "the chair"}, headers=AUTH,
                              timeout=60).json()["boxes"]
    assert len(items) == len(api_boxes) >= 1
    assert f"score {api_boxes[0]['score']:.2f}" in items[0].text
    amber = _near(grounded, AMBER)
    assert amber.sum() > 200 + _near(before, AMBER).sum(), "no grounding box drawn"

    # Clicking a drawn box in the 3D view selects it (drawn green) and captions it.
    ys, xs = np.nonzero(amber)
    canvas = driver.find_element(By.ID, "canvas")
    height, width = grounded.shape[:2]
    ActionChains(driver).move_to_element_with_offset(
        canvas, int(xs.mean() - width / 2), int(ys.mean() - height / 2)
    ).click().perform()
    assert "Caption ready" in _settle(driver)
    captioned = _canvas(driver, screenshot_dir / "viewer-04-clicked-box-captioned.png")
    assert _near(captioned, GREEN).sum() > 100, "the clicked box is not highlighted"
    caption = text("caption")
    assert caption.split("\n")[0] and "centre (" in caption
    assert len(driver.find_elements(By.CSS_SELECTOR, "#boxes li.selected")) == 1

    # A captioning prompt typed as a box, 1 m beside the top grounded box, is drawn, selected and captioned as
    # the API captions it; selecting a grounded box again leaves it drawn in the caption colour.
    top = api_boxes[0]
    prompt = {"center": [round(top["center"][0] + 1.0, 3), *(round(v, 3) for v in top["center"][1:])],
              "size": [round(v, 3) for v in top["size"]]}
    form = driver.find_element(By.ID, "caption-form")
    for name, value in zip("xyzwhd", (*prompt["center"], *prompt["size"]), strict=True):
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(str(value))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    assert "Caption ready" in _settle(driver)
    expected_caption = requests.post(f"{app}/v1/scenes/{sid}/caption", json={"box": prompt}, headers=AUTH,
                                     timeout=60).json()["caption"]
    assert text("caption").split("\n")[0] == expected_caption
    prompted = _canvas(driver)
    moved = np.nonzero(_near(prompted, GREEN))[1].mean() - np.nonzero(_near(captioned, GREEN))[1].mean()
    assert moved > 10, "the typed box is not the one selected"
    driver.find_elements(By.CSS_SELECTOR, "#boxes li")[0].click()
    assert "Caption ready" in _settle(driver)
    both = _canvas(driver, screenshot_dir / "viewer-05-caption-prompt.png")
    assert _near(both, MAGENTA).sum() > 100, "the caption prompt box is not drawn"

    # A fresh page in the same tab keeps the token and reopens the scene from the registered list.
    driver.refresh()
    assert "registered scene" in _settle(driver)
    Select(driver.find_element(By.ID, "scenes")).select_by_value(sid)
    assert "loaded" in _submit(driver, "pick-form")
    picked = _canvas(driver, screenshot_dir / "viewer-06-picked-scene.png")
    assert _drawn(picked) > 0.02 * picked.shape[0] * picked.shape[1]

    logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert logs == [], logs
