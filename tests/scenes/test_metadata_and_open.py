"""ScanNet scene metadata (txt, aggregation, segs, PLY) and layout detection / dataset listing."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from pipelines.scenes.errors import AnnotationFormatError, CorruptDataError, MissingFileError
from pipelines.scenes.export_layout import ExportReader, write_export
from pipelines.scenes.metadata import read_ply, read_scene_info, read_scene_metadata, write_scene_metadata
from pipelines.scenes.open import UnknownLayoutError, detect_layout, list_scenes, open_scene, scene_uri
from pipelines.scenes.posed_images import PosedImagesReader, write_posed_images
from pipelines.scenes.sens import SensReader, write_sens
from pipelines.scenes.video_layout import VideoSceneReader, write_video_scene
from tests.scenes.boxes import minmax
from tests.scenes.frames import make_frames

SCENE = "scene0042_00"


def _mesh():
    # Two unit cubes' corners: segments 1 and 2 (object 7), segment 3 (object 9); segment 4 unlabelled.
    cube = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float32)
    vertices = np.concatenate([cube, cube + [2, 0, 0], cube * 0.5 + [0, 3, 0], cube + [9, 9, 9]]).astype(
        np.float32
    )
    segments = np.array([1] * 4 + [2] * 4 + [2] * 8 + [3] * 8 + [4] * 8)
    colors = np.arange(vertices.size, dtype=np.uint8).reshape(-1, 3)
    faces = np.array([[0, 1, 2], [3, 4, 5], [30, 31, 29]], dtype=np.int32)
    return vertices, colors, faces, segments


def _align():
    align = np.eye(4)
    align[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 deg about z
    align[:3, 3] = [10, 20, 30]
    return align


def test_metadata_round_trip_and_boxes(tmp_path, color_intrinsics, depth_intrinsics):
    vertices, colors, faces, segments = _mesh()
    scene_dir = tmp_path / "scans" / SCENE
    write_scene_metadata(
        str(scene_dir), SCENE, _align(), vertices, colors, faces, segments, [(9, "lamp", [3]), (7, "sofa", [1, 2])],
        color_intrinsics=color_intrinsics, depth_intrinsics=depth_intrinsics, num_frames=12, scene_type="Office",
    )  # fmt: skip
    ply = (scene_dir / f"{SCENE}_vh_clean_2.ply").read_bytes()
    header, body = ply.split(b"end_header\n")
    assert (
        b"format binary_little_endian 1.0" in header and b"property list uchar int vertex_indices" in header
    )
    assert struct.unpack_from("<3f4B", body, 16 * 7) == (*vertices[7].tolist(), *colors[7].tolist(), 255)
    mesh = read_ply(str(scene_dir / f"{SCENE}_vh_clean_2.ply"))
    np.testing.assert_array_equal(mesh.vertices, vertices)
    np.testing.assert_array_equal(mesh.colors, colors)
    np.testing.assert_array_equal(mesh.faces, faces)
    agg = json.loads((scene_dir / f"{SCENE}.aggregation.json").read_text())
    assert agg["segGroups"][1] == {"id": 1, "objectId": 7, "segments": [1, 2], "label": "sofa"}
    segs = json.loads((scene_dir / f"{SCENE}_vh_clean_2.0.010000.segs.json").read_text())
    assert segs["segIndices"] == segments.tolist()
    info = read_scene_info(str(scene_dir))
    assert (info["colorWidth"], info["colorHeight"], info["depthWidth"], info["depthHeight"]) == (
        "96",
        "72",
        "48",
        "36",
    )
    assert (
        info["fx_color"] == "90.500000" and info["numColorFrames"] == "12" and info["sceneType"] == "Office"
    )

    meta = read_scene_metadata(str(scene_dir))
    np.testing.assert_array_equal(meta.axis_alignment, _align())
    assert [(o.object_id, o.label) for o in meta.objects] == [(7, "sofa"), (9, "lamp")]
    # sofa: raw x in [0, 3], y in [0, 1], z in [0, 1]; the alignment maps (x, y, z) -> (10 - y, 20 + x, 30 + z)
    lo, hi = minmax(meta.objects[0])
    np.testing.assert_allclose(lo, [9, 20, 30])
    np.testing.assert_allclose(hi, [10, 23, 31])
    lo, hi = minmax(meta.objects[1])  # lamp: raw x [0, .5], y [3, 3.5], z [0, .5]
    np.testing.assert_allclose(lo, [6.5, 20, 30])
    np.testing.assert_allclose(hi, [7, 20.5, 30.5])


def test_test_scan_without_alignment_or_annotations(tmp_path):
    scene_dir = tmp_path / SCENE
    scene_dir.mkdir()
    (scene_dir / f"{SCENE}.txt").write_text("colorWidth = 1296\ncolorHeight = 968\nsceneType = Kitchen\n")
    meta = read_scene_metadata(str(scene_dir))
    np.testing.assert_array_equal(meta.axis_alignment, np.eye(4))
    assert meta.objects == ()


def test_metadata_bad_input(tmp_path):
    vertices, colors, faces, segments = _mesh()
    scene_dir = tmp_path / SCENE
    write_scene_metadata(str(scene_dir), SCENE, None, vertices, colors, faces, segments, [(1, "box", [1])])
    assert "axisAlignment" not in (scene_dir / f"{SCENE}.txt").read_text()
    segs_path = scene_dir / f"{SCENE}_vh_clean_2.0.010000.segs.json"
    good_segs = segs_path.read_text()
    segs_path.write_text(json.dumps({"segIndices": [0, 1]}))
    with pytest.raises(AnnotationFormatError, match="2 segIndices for 32 mesh vertices"):
        read_scene_metadata(str(scene_dir))
    segs_path.write_text(good_segs)
    (scene_dir / f"{SCENE}.aggregation.json").write_text(json.dumps({"segGroups": [{"objectId": 1}]}))
    with pytest.raises(AnnotationFormatError, match=r"segGroups\[0\]"):
        read_scene_metadata(str(scene_dir))
    (scene_dir / f"{SCENE}.txt").write_text("axisAlignment = 1 0 0\n")
    with pytest.raises(CorruptDataError, match="axisAlignment holds 3 numbers"):
        read_scene_metadata(str(scene_dir))
    (scene_dir / f"{SCENE}.txt").unlink()
    with pytest.raises(MissingFileError, match=f"{SCENE}.txt"):
        read_scene_metadata(str(scene_dir))
    (scene_dir / "cut.ply").write_bytes((scene_dir / f"{SCENE}_vh_clean_2.ply").read_bytes()[:300])
    with pytest.raises(Exception, match="cut.ply"):
        read_ply(str(scene_dir / "cut.ply"))


@pytest.fixture
def dataset(tmp_path, color_intrinsics, depth_intrinsics):
    """One scene in every layout under the agreed directory convention."""
    root = tmp_path / "scannet"
    frames = make_frames(4)
    write_sens(scene_uri(str(root), "sens", SCENE), color_intrinsics, depth_intrinsics, frames, num_frames=4)
    write_export(scene_uri(str(root), "export", SCENE), color_intrinsics, depth_intrinsics, frames)
    write_posed_images(
        scene_uri(str(root), "posed_images", SCENE), color_intrinsics, depth_intrinsics, frames
    )
    write_video_scene(scene_uri(str(root), "video", SCENE), color_intrinsics, depth_intrinsics, frames)
    return root


def test_open_scene_detects_every_layout(dataset):
    root = str(dataset)
    cases = {
        f"{root}/scans/{SCENE}": ("sens", SensReader),  # the scan folder holds the .sens
        f"{root}/scans/{SCENE}/{SCENE}.sens": ("sens", SensReader),
        f"{root}/scans/{SCENE}/export": ("export", ExportReader),
        f"{root}/posed_images/{SCENE}": ("posed_images", PosedImagesReader),
        f"{root}/videos/{SCENE}": ("video", VideoSceneReader),
    }
    for uri, (layout, cls) in cases.items():
        assert detect_layout(uri) == layout
        reader = open_scene(uri)
        assert isinstance(reader, cls) and reader.num_frames == 4
        assert isinstance(open_scene(uri, layout=layout), cls)
        reader.close()
    for layout in ("sens", "export", "posed_images", "video"):
        assert list_scenes(root, layout) == [SCENE]


def test_open_scene_errors(dataset, tmp_path):
    with pytest.raises(
        UnknownLayoutError, match=r"looked for scene.json .*\.sens.*color/ \+ pose/ \+ intrinsic/"
    ):
        open_scene(str(dataset / "scans"))
    with pytest.raises(MissingFileError, match="does not exist"):
        open_scene(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="unknown layout 'mkv'"):
        open_scene(str(dataset / "videos" / SCENE), layout="mkv")


def test_open_scene_on_s3(s3_bucket, color_intrinsics, depth_intrinsics):
    frames = make_frames(3)
    write_posed_images(f"{s3_bucket}/posed_images/{SCENE}", color_intrinsics, depth_intrinsics, frames)
    write_sens(scene_uri(s3_bucket, "sens", SCENE), color_intrinsics, depth_intrinsics, frames, num_frames=3)
    assert list_scenes(s3_bucket, "posed_images") == [SCENE] and list_scenes(s3_bucket, "sens") == [SCENE]
    assert isinstance(open_scene(f"{s3_bucket}/posed_images/{SCENE}"), PosedImagesReader)
    with open_scene(f"{s3_bucket}/scans/{SCENE}") as reader:
        assert isinstance(reader, SensReader) and reader.read_frame(2).index == 2
