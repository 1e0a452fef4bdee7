"""Bytes and errors of the shard codecs quoted in ``pipelines/schema.py``: teacher tokens (fp16 vs int8) and, with
``--scene``, frames (npy, JPEG q95/q90) and depth (npy, zlib) of one 32-frame clip of a real scene folder.

    python bench/bench_shard_codecs.py [--scene data/scans/scene0000_00]

Targets: fp16 tokens within 1e-3 relative L2 error at 2 bytes per value; int8 tokens within 1e-2 at <= 1.1 bytes
per value; JPEG q95 frames above 45 dB PSNR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.schema import (  # noqa: E402
    TOKEN_CODECS,
    decode_clip_sample,
    dequantize_tokens,
    encode_clip_sample,
    quantize_tokens,
)

TOKEN_TARGETS = {"fp16": (2.0, 1e-3), "int8": (1.1, 1e-2)}


def measure_tokens() -> None:
    """Teacher-token codecs on tiny random DINOv2-with-registers outputs ``[32, 999, 64]``."""
    import torch
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                    image_size=518, patch_size=14, num_register_tokens=4)
    model = Dinov2WithRegistersModel(cfg).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(32, 3, 378, 518)).last_hidden_state[:, 5:].numpy()
    for codec in TOKEN_CODECS:
        enc = quantize_tokens(out, codec)
        per_value = sum(a.nbytes for a in enc.values()) / out.size
        dec = dequantize_tokens(enc)
        rel = float(np.linalg.norm(dec - out) / np.linalg.norm(out))
        worst = float((np.abs(dec - out).max(-1) / np.abs(out).max(-1)).max())
        print(f"{codec}: {per_value:.3f} B/value  rel L2 {rel:.2e}  max abs/absmax {worst:.2e}")
        max_bytes, max_error = TOKEN_TARGETS[codec]
        print(f"RESULT tokens_{codec}_bytes_per_value {per_value:.3f} B target <= {max_bytes}")
        print(f"RESULT tokens_{codec}_relative_l2 {rel:.2e} ratio target <= {max_error}")


def measure_frames(scene_uri: str) -> None:
    """Frame and depth codecs on one 32-frame clip of a scene folder (default ingest sampling)."""
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.job import SceneInput, build_scene_clips, metadata_location

    config = IngestConfig()
    scene_id = scene_uri.rstrip("/").rsplit("/", 1)[-1]
    scene = SceneInput(scene_id, scene_uri, metadata_location(scene_id, scene_uri, None), {})
    clip = build_scene_clips(scene, config, config.hash())[0]
    for frame_codec, quality, depth_codec in (("npy", 95, "npy"), ("jpeg", 95, "zlib"), ("jpeg", 90, "zlib")):
        enc = encode_clip_sample(clip, frame_codec, quality, depth_codec)
        frame_bytes = sum(len(v) for k, v in enc.items() if k.startswith("frame"))
        diff = decode_clip_sample(enc).frames.astype(np.float64) - clip.frames
        mse = float((diff**2).mean())
        psnr = 10 * np.log10(255**2 / mse) if mse else float("inf")
        print(f"frames {frame_codec} q{quality}: {frame_bytes / 1e6:.2f} MB/clip, PSNR {psnr:.1f} dB; "
              f"depth {depth_codec}: {len(enc[f'depth_mm.{depth_codec}']) / 1e6:.2f} MB/clip "
              f"({clip.frames.shape[2]}x{clip.frames.shape[1]}, {clip.num_frames} frames)")
        if frame_codec == "jpeg" and quality == 95:
            print(f"RESULT frames_jpeg_q95_psnr {psnr:.1f} dB target >= 45")


def main() -> int:
    parser = argparse.ArgumentParser(description="Measure the shard codecs quoted in pipelines/schema.py.")
    parser.add_argument("--scene", help="a scene folder; also measure frame/depth codecs on one 32-frame clip")
    args = parser.parse_args()
    measure_tokens()
    if args.scene:
        measure_frames(args.scene)
    return 0


if __name__ == "__main__":
    sys.exit(main())
