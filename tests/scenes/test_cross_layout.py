"""One synthetic scene read through every layout gives the same poses, intrinsics, frames and depth.

Tolerances: intrinsics and poses to 1e-5 (the ``.sens`` header and pose records are float32); JPEG colour (quality
95) within 3 grey levels mean absolute error of the ground-truth render; H.264 colour (CRF 20, 4:2:0 at 160x120,
where chroma subsampling blurs colour edges) within 6 levels mean absolute error and PSNR > 28 dB; depth exactly
equal in millimetres everywhere (zlib in ``.sens``, 16-bit PNG elsewhere) and equal to the rounded ground truth;
invalid (``-inf``) frames flagged identically.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.ingest.synthetic import SyntheticConfig, generate
from pipelines.ingest.synthetic.render import render_view
from pipelines.scenes.open import open_scene, scene_uri
from pipelines.scenes.sens import depth_to_mm

LAYOUTS = ("sens", "export", "posed_images", "video")
SCENE = "scene0000_00"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross_layout")
    config = SyntheticConfig(out=str(root), num_scenes=1, num_frames=24)
    (spec,) = generate(config, log=lambda _msg: None)
    readers = {layout: open_scene(scene_uri(str(root), layout, SCENE), layout) for layout in LAYOUTS}
    frames = {layout: r.read_frames(list(range(r.num_frames))) for layout, r in readers.items()}
    yield config, spec, readers, frames
    for r in readers.values():
        r.close()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10.0 * np.log10(255.0**2 / mse)


def test_headers_poses_and_invalid_frames_agree(scene):
    config, spec, readers, _ = scene
    for layout, r in readers.items():
        assert r.num_frames == config.frames_per_scene, layout
        np.testing.assert_allclose(
            r.color_intrinsics.matrix, config.preset.color.matrix, rtol=1e-6, err_msg=layout
        )
        np.testing.assert_allclose(
            r.depth_intrinsics.matrix, config.preset.depth.matrix, rtol=1e-6, err_msg=layout
        )
        assert (r.color_intrinsics.width, r.depth_intrinsics.height) == (160, 60)
        assert r.invalid_frames == list(spec.invalid), layout
        valid = r.valid
        np.testing.assert_allclose(r.poses[valid], spec.poses_raw[valid], atol=1e-5, err_msg=layout)
        assert np.isneginf(r.poses[~valid]).all()
        np.testing.assert_allclose(r.timestamps_s, np.arange(r.num_frames) / config.fps, atol=1e-6)


def test_frames_and_depth_match_across_layouts(scene):
    config, spec, _, frames = scene
    boxes = spec.box_set()
    for i in range(config.frames_per_scene):
        truth_rgb = render_view(boxes, config.preset.color, spec.poses_aligned[i]).rgb
        truth_mm = depth_to_mm(render_view(boxes, config.preset.depth, spec.poses_aligned[i], False).depth_m)
        for layout in LAYOUTS:
            f = frames[layout][i]
            assert f.index == i and f.valid == (i not in spec.invalid)
            np.testing.assert_array_equal(depth_to_mm(f.depth_m), truth_mm, err_msg=f"{layout} frame {i}")
            err = np.abs(f.rgb.astype(np.int16) - truth_rgb.astype(np.int16)).mean()
            if layout == "video":
                assert err < 6.0 and _psnr(f.rgb, truth_rgb) > 28.0, f"video frame {i}: mae {err:.2f}"
            else:
                assert err < 3.0, f"{layout} frame {i}: mae {err:.2f}"
        # The three JPEG layouts encode the same pixels with the same encoder: identical decoded colour.
        np.testing.assert_array_equal(frames["sens"][i].rgb, frames["export"][i].rgb)
        np.testing.assert_array_equal(frames["sens"][i].rgb, frames["posed_images"][i].rgb)
