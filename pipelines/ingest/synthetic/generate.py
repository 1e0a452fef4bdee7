"""Generate ScanNet-format synthetic scenes: render, write every layout, mesh/metadata and language annotations.

Output tree under ``config.out`` (local path or ``s3://`` URI)::

    scans/<scene_id>/<scene_id>.sens, .txt, .aggregation.json, _vh_clean_2.0.010000.segs.json, _vh_clean_2.ply
    scans/<scene_id>/export/                official SensReader export
    posed_images/<scene_id>/                EmbodiedScan posed images (stride 1)
    videos/<scene_id>/                      H.264 video layout
    annotations/                            ScanQA, SQA3D, ScanRefer, Multi3DRefer, split lists, synthetic_manifest.json
    .synthetic_done/<scene_id>.json         completion marker (fingerprint of everything that shapes the scene)

Idempotency: a scene whose completion marker matches the current fingerprint is *skipped* (not re-rendered);
any other scene is regenerated, and because generation is deterministic the rewritten bytes are identical. The
annotation files and the manifest cover the scenes of the run and are always rewritten (they are cheap: the rooms
are rebuilt from the seed without rendering).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np

from pipelines import storage
from pipelines.ingest.synthetic.language import SceneLanguage
from pipelines.ingest.synthetic.mesh import build_mesh
from pipelines.ingest.synthetic.render import render_view
from pipelines.ingest.synthetic.scene import SPLITS, SceneSpec, SyntheticConfig, build_scene
from pipelines.scenes.export_layout import write_export
from pipelines.scenes.metadata import write_scene_metadata
from pipelines.scenes.posed_images import write_posed_images
from pipelines.scenes.sens import write_sens
from pipelines.scenes.types import Frame
from pipelines.scenes.video_layout import write_video_scene


class RenderedFrames:
    """All frames of a scene rendered once into disk-backed arrays, replayable for every layout writer.

    Memory stays bounded at ScanNet size (300 frames x 1296x968 would be 1.1 GB of colour) because the pixels live in
    ``numpy.memmap`` files in a temporary local directory.
    """

    def __init__(self, spec: SceneSpec, config: SyntheticConfig, workdir: str):
        preset, n = config.preset, config.frames_per_scene
        c, d = preset.color, preset.depth
        self.rgb = np.lib.format.open_memmap(f"{workdir}/rgb.npy", "w+", np.uint8, (n, c.height, c.width, 3))
        self.depth = np.lib.format.open_memmap(
            f"{workdir}/depth.npy", "w+", np.float32, (n, d.height, d.width)
        )
        boxes = spec.box_set()
        for i in range(n):
            self.rgb[i] = render_view(boxes, c, spec.poses_aligned[i], with_color=True).rgb
            self.depth[i] = render_view(boxes, d, spec.poses_aligned[i], with_color=False).depth_m
        self.spec, self.fps = spec, config.fps

    def __len__(self) -> int:
        return len(self.rgb)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            pose = self.spec.poses_raw[i]
            yield Frame(
                index=i,
                timestamp_s=i / self.fps,
                rgb=np.array(self.rgb[i]),
                depth_m=np.array(self.depth[i]),
                cam_to_world=pose.copy(),
                valid=bool(np.isfinite(pose).all()),
            )


def write_scene(config: SyntheticConfig, spec: SceneSpec, log: Callable[[str], None]) -> dict[str, float]:
    """Render and write one scene in every configured layout plus its mesh and metadata; returns timings (s)."""
    preset, sid, root = config.preset, spec.scene_id, config.out
    scan_dir = storage.join(root, "scans", sid)
    with tempfile.TemporaryDirectory(prefix=f"synthetic-{sid}-") as workdir:
        t0 = time.perf_counter()
        frames = RenderedFrames(spec, config, workdir)
        t_render = time.perf_counter() - t0
        log(
            f"{sid}: rendered {len(frames)} frames in {t_render:.1f} s ({t_render / len(frames):.3f} s/frame)"
        )
        t0 = time.perf_counter()
        c, d = preset.color, preset.depth
        if "sens" in config.layouts:
            write_sens(
                storage.join(scan_dir, f"{sid}.sens"), c, d, iter(frames), len(frames), config.jpeg_quality
            )
        if "export" in config.layouts:
            write_export(storage.join(scan_dir, "export"), c, d, iter(frames), config.jpeg_quality)
        if "posed_images" in config.layouts:
            write_posed_images(storage.join(root, "posed_images", sid), c, d, iter(frames), stride=1)
        if "video" in config.layouts:
            write_video_scene(
                storage.join(root, "videos", sid), c, d, iter(frames), fps=config.fps, gop=config.gop
            )
        mesh = build_mesh(spec.room, preset.mesh_step_m)
        write_scene_metadata(
            scan_dir,
            sid,
            spec.room.axis_alignment,
            mesh.vertices,
            mesh.colors,
            mesh.faces,
            mesh.segment_ids,
            mesh.objects,
            color_intrinsics=c,
            depth_intrinsics=d,
            num_frames=len(frames),
        )
        t_write = time.perf_counter() - t0
    log(f"{sid}: wrote {', '.join(config.layouts)} + mesh/metadata in {t_write:.1f} s")
    return {"render_s": t_render, "write_s": t_write}


def _marker_uri(config: SyntheticConfig, scene_id: str) -> str:
    return storage.join(config.out, ".synthetic_done", f"{scene_id}.json")


def _is_complete(config: SyntheticConfig, scene_id: str) -> bool:
    uri = _marker_uri(config, scene_id)
    if not storage.exists(uri):
        return False
    return json.loads(storage.read_bytes(uri)).get("fingerprint") == config.fingerprint()


def write_annotations(config: SyntheticConfig, specs: list[SceneSpec]) -> None:
    """Write benchmark annotation files, split lists and the manifest for the scenes of this run."""
    per_split: dict[str, dict[str, list]] = {
        s: {"scanqa": [], "sqa_q": [], "sqa_a": [], "ref": [], "m3d": []} for s in SPLITS
    }
    scenes = []
    for spec in specs:
        split = config.split_of(spec.index)
        lang = SceneLanguage(
            spec.room, split, spec.index, np.random.default_rng([config.seed, spec.index, 1])
        )
        bucket = per_split[split]
        bucket["scanqa"] += [r for r in lang.scanqa() if r["question_type"] in config.question_families]
        questions, answers = lang.sqa3d()
        if config.situated_questions:
            bucket["sqa_q"] += questions
            bucket["sqa_a"] += answers
        bucket["ref"] += lang.scanrefer(config.descriptions_per_object)
        bucket["m3d"] += lang.multi3drefer()
        scenes.append(
            {
                "scene_id": spec.scene_id,
                "split": split,
                "num_frames": int(len(spec.poses_raw)),
                "invalid_frames": list(spec.invalid),
                "num_objects": len(spec.room.objects),
            }
        )
    ann = storage.join(config.out, "annotations")
    sqa_header = {
        "info": {"description": "Synthetic SQA3D-format data"},
        "data_type": "scannet",
        "data_subtype": "v2",
    }
    for split, bucket in per_split.items():
        _write_json(storage.join(ann, f"ScanQA_v1.0_{split}.json"), bucket["scanqa"])
        _write_json(
            storage.join(ann, "sqa_task", "balanced", f"v1_balanced_questions_{split}_scannetv2.json"),
            {**sqa_header, "task_type": "Situated question answering", "questions": bucket["sqa_q"]},
        )
        _write_json(
            storage.join(ann, "sqa_task", "balanced", f"v1_balanced_sqa_annotations_{split}_scannetv2.json"),
            {**sqa_header, "annotations": bucket["sqa_a"]},
        )
        _write_json(storage.join(ann, f"ScanRefer_filtered_{split}.json"), bucket["ref"])
        _write_json(storage.join(ann, f"multi3drefer_{split}.json"), bucket["m3d"])
        ids = [s["scene_id"] for s in scenes if s["split"] == split]
        storage.write_bytes(
            storage.join(ann, f"scannetv2_{split}.txt"), "".join(f"{i}\n" for i in ids).encode()
        )
    preset = config.preset
    manifest = {
        "generator": "pipelines.ingest.synthetic",
        "seed": config.seed,
        "size": config.size,
        "config": dataclasses.asdict(config) | {"layouts": list(config.layouts)},
        "fingerprint": config.fingerprint(),
        "color_intrinsics": {
            "matrix": preset.color.matrix.tolist(),
            "width": preset.color.width,
            "height": preset.color.height,
        },
        "depth_intrinsics": {
            "matrix": preset.depth.matrix.tolist(),
            "width": preset.depth.width,
            "height": preset.depth.height,
        },
        "scenes": scenes,
    }
    _write_json(storage.join(ann, "synthetic_manifest.json"), manifest, indent=2)


def _write_json(uri: str, obj, indent: int | None = None) -> None:
    storage.write_bytes(uri, json.dumps(obj, indent=indent).encode("utf-8"))


def generate(config: SyntheticConfig, log: Callable[[str], None] = print) -> list[SceneSpec]:
    """Generate every scene of ``config`` (skipping complete ones) and the annotation files.

    Returns:
        The scene specifications (ground truth for tests: true poses, boxes, objects).
    """
    specs = []
    for n, index in enumerate(config.scene_indices(), start=1):
        spec = build_scene(config, index)
        specs.append(spec)
        if not config.overwrite and _is_complete(config, spec.scene_id):
            log(f"[{n}/{config.num_scenes}] {spec.scene_id}: complete, skipped")
            continue
        log(
            f"[{n}/{config.num_scenes}] {spec.scene_id}: {len(spec.room.furniture)} objects, {len(spec.poses_raw)} frames"
        )
        timings = write_scene(config, spec, log)
        storage.write_bytes(
            _marker_uri(config, spec.scene_id),
            json.dumps({"fingerprint": config.fingerprint()}).encode(),
        )
        log(f"{spec.scene_id}: done ({timings['render_s'] + timings['write_s']:.1f} s)")
    write_annotations(config, specs)
    log(f"annotations written to {storage.join(config.out, 'annotations')}")
    return specs
