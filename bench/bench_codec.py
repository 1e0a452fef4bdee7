"""Benchmark: what storing geometry-teacher tokens as int8 instead of fp16 does to Stage 1 (not a test).

The teachers job stores geometry patch tokens with ``token_codec`` ``fp16`` (2 bytes/value) or ``int8`` (per-token
absmax scale, 1.06 bytes/value). This bench measures the effect on training, not only the storage:

1. Clips of real video frames (``tests/data/videos/nasa_13013.mp4``, 480x270, centre-cropped to ``--size`` px).
2. Geometry teacher: the real DINOv2-S of ``vidllm weights install`` when ``--weights-dir`` (or
   ``VIDLLM_WEIGHTS_DIR``) holds it, else a RANDOM DINOv2-S-shaped ViT (labelled so in the output). Semantic
   teacher: a RANDOM CLIP stand-in (no CLIP weights are installable offline); its pooled features are stored as
   float16 under both codecs, so only the geometry targets differ between the runs.
3. The tokens go through each codec exactly as the shards store them (``pipelines.schema.quantize_tokens`` and
   back), and the tiny Vid-LLM student trains Stage 1 (``L_geo + L_lang + L_sc``, AdamW) from the same
   initialisation, once on fp16 and once on int8 targets, in each of ``--seeds`` batch orders (the same order
   for both codecs). Tiny differences in the targets send training down another path, as a different batch order
   does, so an int8 effect is judged against that run-to-run noise floor.
4. On held-out clips, against the fp16 targets: the distillation losses of each student (int8 minus fp16 in the
   same order, against the spread of fp16 over orders), and the cosine of each int8 student's features (CTA
   geometry and semantic tokens) to the fp16 student of the same order, against the cosine between fp16
   students of different orders.

5. The gradient itself, the only thing the targets enter: at the same parameters (at initialisation and after
   fp16 training), the relative change of the Stage-1 gradient from fp16 to int8 targets on the same batch,
   against its change from one batch to another. Free of the chaos of whole training runs.

Ends with ``RESULT <name> <value> <unit> target <op> <value>`` lines whose targets are that noise floor: int8 is
an acceptable default when its effect is no larger than that of shuffling the batches differently, and its
gradient change at most a tenth of the batch-to-batch one.

Run: ``python bench/bench_codec.py [--clips 48 --frames 4 --size 112 --steps 300 --seeds 3 --weights-dir DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import VidLLM, VidLLMConfig  # noqa: E402
from model.batch import VidLLMBatch  # noqa: E402
from model.config import LossWeights  # noqa: E402
from model.freezing import apply_stage  # noqa: E402
from model.losses import MultitaskLoss  # noqa: E402
from pipelines import weights  # noqa: E402
from pipelines.scenes.video import iter_frames  # noqa: E402
from pipelines.schema import dequantize_tokens, quantize_tokens  # noqa: E402
from pipelines.teachers.geometry import GeometryTeacher  # noqa: E402
from pipelines.teachers.semantic import SemanticTeacher, write_random_clip  # noqa: E402

VIDEO = Path(__file__).resolve().parents[1] / "tests" / "data" / "videos" / "nasa_13013.mp4"


def video_clips(num_clips: int, frames: int, size: int) -> np.ndarray:
    """``[N, S, size, size, 3]`` uint8: clips of consecutive-ish frames spread over the video, centre-cropped."""
    from PIL import Image

    decoded = [f.rgb for f in iter_frames(str(VIDEO))]
    starts = np.linspace(0, len(decoded) - frames * 3, num_clips).astype(int)
    out = np.zeros((num_clips, frames, size, size, 3), np.uint8)
    for c, start in enumerate(starts):
        for s in range(frames):
            rgb = decoded[start + 3 * s]
            h, w = rgb.shape[:2]
            side = min(h, w)
            crop = rgb[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
            out[c, s] = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC))
    return out


def teacher_targets(clips: np.ndarray, weights_dir: str | None, workdir: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Geometry tokens ``[N, S, P, Cg]`` and semantic features ``[N, S, Cs]`` (float32) and a label of the teachers."""
    from transformers import CLIPVisionConfig, Dinov2Config, Dinov2Model

    have = weights.installed(weights_dir)
    if weights.DINOV2_SMALL in have:
        geo_path, label = have[weights.DINOV2_SMALL], "real DINOv2-S (vidllm weights install)"
    else:
        geo_path, label = os.path.join(workdir, "random-dinov2-s"), "RANDOM DINOv2-S-shaped ViT (no weights found)"
        torch.manual_seed(0)
        Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                                 image_size=518, layerscale_value=1.0)).save_pretrained(geo_path)
    sem_path = write_random_clip(os.path.join(workdir, "random-clip"), CLIPVisionConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=112,
        patch_size=14))
    geo = GeometryTeacher(geo_path, workdir, architecture="Dinov2Model")
    sem = SemanticTeacher(sem_path, workdir)
    tokens = np.stack([geo(c) for c in clips])
    feats = np.stack([sem(c) for c in clips])
    return tokens, feats, f"{label}; semantic: {sem.standin}"


def through_codec(tokens: np.ndarray, codec: str) -> tuple[np.ndarray, float]:
    """The tokens as a shard stores and returns them under ``codec``, and the stored bytes per value."""
    fields = quantize_tokens(tokens, codec)
    return dequantize_tokens(fields), sum(a.nbytes for a in fields.values()) / tokens.size


def student_config(geo_dim: int, sem_dim: int) -> VidLLMConfig:
    cfg = VidLLMConfig.tiny()
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher_geo_dim=geo_dim,
                                                                teacher_sem_dim=sem_dim))


def batch(frames: np.ndarray, geo: np.ndarray | None, sem: np.ndarray | None) -> VidLLMBatch:
    x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 255.0
    return VidLLMBatch(frames=x, teacher_geo=None if geo is None else torch.from_numpy(geo).float(),
                       teacher_sem=None if sem is None else torch.from_numpy(sem).float())


def train(cfg: VidLLMConfig, frames: np.ndarray, geo: np.ndarray, sem: np.ndarray, steps: int, micro_batch: int,
          lr: float, order_seed: int) -> tuple[VidLLM, list[float]]:
    """Stage 1 from the fixed initialisation (seed 0); batches drawn in the order of ``order_seed``."""
    torch.manual_seed(0)
    model = VidLLM(cfg).train()
    apply_stage(model, "stage1")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = MultitaskLoss(LossWeights.stage1())
    rng = np.random.default_rng(order_seed)
    torch.manual_seed(order_seed)
    losses = []
    order: list[int] = []
    for _ in range(steps):
        if len(order) < micro_batch:
            order += list(rng.permutation(len(frames)))
        idx, order = order[:micro_batch], order[micro_batch:]
        b = batch(frames[idx], geo[idx], sem[idx])
        loss, _ = loss_fn(model(b), b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


@torch.inference_mode()
def evaluate(model: VidLLM, frames: np.ndarray, geo: np.ndarray, sem: np.ndarray) -> dict[str, object]:
    """Distillation losses against the given (fp16) targets, and the CTA features, on held-out clips."""
    b = batch(frames, geo, sem)
    out = model(b)
    _, terms = MultitaskLoss(LossWeights.stage1())(out, b)
    return {"terms": {k: float(v) for k, v in terms.items()}, "geom": out.adapter.geom.flatten(0, -2),
            "lang": out.adapter.lang.flatten(0, -2)}


def gradients(model: VidLLM, frames: np.ndarray, geo: np.ndarray, sem: np.ndarray) -> torch.Tensor:
    """The flattened Stage-1 gradient of the trainable parameters for one batch (the model is left unchanged)."""
    model.train()
    model.zero_grad(set_to_none=True)
    b = batch(frames, geo, sem)
    loss, _ = MultitaskLoss(LossWeights.stage1())(model(b, generator=torch.Generator().manual_seed(0)), b)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return grad


def cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return float(cos.mean()), float(cos.min())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--holdout", type=int, default=8)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=3, help="batch orders; each trains an fp16 and an int8 student")
    parser.add_argument("--weights-dir", default=os.environ.get(weights.WEIGHTS_DIR_ENV))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    started = time.perf_counter()
    clips = video_clips(args.clips, args.frames, args.size)
    with tempfile.TemporaryDirectory(prefix="vidllm-bench-codec-") as workdir:
        tokens, feats, label = teacher_targets(clips, args.weights_dir, workdir)
    print(f"teachers: {label}")
    print(f"{args.clips} clips x {args.frames} frames at {args.size} px; geometry tokens {list(tokens.shape[2:])}, "
          f"semantic {feats.shape[-1]}; teachers took {time.perf_counter() - started:.1f} s")
    geo16, bpv16 = through_codec(tokens, "fp16")
    geo8, bpv8 = through_codec(tokens, "int8")
    sem16 = feats.astype(np.float16).astype(np.float32)
    rel = float(np.linalg.norm(geo8 - geo16) / np.linalg.norm(geo16))
    print(f"storage: fp16 {bpv16:.3f} B/value, int8 {bpv8:.3f} B/value; int8 vs fp16 relative L2 error {rel:.2e}")

    # What a student that matched the int8 targets exactly would still lose against the fp16 ones (L_geo's form).
    unit = lambda t: t / np.linalg.norm(t, axis=-1, keepdims=True)  # noqa: E731
    floor_geo = float(((unit(geo8) - unit(geo16)) ** 2).sum(-1).mean())
    print(f"L_geo of the int8 targets against the fp16 targets: {floor_geo:.2e}")

    n_train = args.clips - args.holdout
    cfg = student_config(tokens.shape[-1], feats.shape[-1])
    held = (clips[n_train:], geo16[n_train:], sem16[n_train:])
    results: dict[tuple[str, int], dict] = {}
    for seed in range(1, args.seeds + 1):
        for codec, geo in (("fp16", geo16), ("int8", geo8)):
            t0 = time.perf_counter()
            model, losses = train(cfg, clips[:n_train], geo[:n_train], sem16[:n_train], args.steps,
                                  args.micro_batch, args.lr, seed)
            r = results[codec, seed] = evaluate(model, *held)
            if (codec, seed) == ("fp16", 1):
                trained = model
            r["total"] = sum(r["terms"].values())
            print(f"{codec} order {seed}: {time.perf_counter() - t0:.1f} s, train loss {losses[0]:.4f} -> "
                  f"{np.mean(losses[-20:]):.4f} (last 20 steps); held-out vs fp16 targets: "
                  + ", ".join(f"{k} {v:.5f}" for k, v in r["terms"].items()) + f", total {r['total']:.5f}")

    seeds = range(1, args.seeds + 1)
    fp16_totals = np.array([results["fp16", k]["total"] for k in seeds])
    paired = np.array([results["int8", k]["total"] - results["fp16", k]["total"] for k in seeds])
    noise = float(fp16_totals.std(ddof=1)) if args.seeds > 1 else float("nan")
    cos_pair = {f: np.mean([cosine(results["int8", k][f], results["fp16", k][f])[0] for k in seeds])
                for f in ("geom", "lang")}
    cross = [(i, j) for i in seeds for j in seeds if i < j]
    cos_cross = {f: np.mean([cosine(results["fp16", i][f], results["fp16", j][f])[0] for i, j in cross])
                 for f in ("geom", "lang")} if cross else {"geom": float("nan"), "lang": float("nan")}
    print(f"held-out distillation loss: fp16 {fp16_totals.mean():.5f} +- {noise:.5f} (std over {args.seeds} batch "
          f"orders); int8 - fp16, same order: {paired.mean():+.5f} (per order: "
          + ", ".join(f"{d:+.5f}" for d in paired) + ")")
    print(f"student features, cos to the fp16 student of the same order (int8) vs of another order (fp16): "
          f"CTA geometry {cos_pair['geom']:.5f} vs {cos_cross['geom']:.5f}, semantic {cos_pair['lang']:.5f} vs "
          f"{cos_cross['lang']:.5f}")
    # The only thing int8 changes is the targets, so compare what it does to a gradient step with what the choice
    # of batch does: at the same parameters (at initialisation and after fp16 training), int8 vs fp16 targets on
    # the same batch, against fp16 targets on two different batches.
    grad_rel = {}
    torch.manual_seed(0)
    for when, model in (("init", VidLLM(cfg)), ("trained", trained)):
        apply_stage(model, "stage1")
        codec_diff, batch_diff = [], []
        for i in range(0, 2 * args.micro_batch * 4, 2 * args.micro_batch):
            a, b = slice(i, i + args.micro_batch), slice(i + args.micro_batch, i + 2 * args.micro_batch)
            g16 = gradients(model, clips[a], geo16[a], sem16[a])
            codec_diff.append(float((gradients(model, clips[a], geo8[a], sem16[a]) - g16).norm() / g16.norm()))
            batch_diff.append(float((gradients(model, clips[b], geo16[b], sem16[b]) - g16).norm() / g16.norm()))
        grad_rel[when] = (float(np.mean(codec_diff)), float(np.mean(batch_diff)))
        print(f"gradient at {when}: |g(int8) - g(fp16)| / |g(fp16)| on the same batch {grad_rel[when][0]:.2e}; "
              f"|g(other batch) - g| / |g| {grad_rel[when][1]:.2e}")
    print(f"RESULT codec_int8_storage {bpv8 / bpv16:.3f} x_of_fp16 target <= 0.6")
    print(f"RESULT codec_int8_gradient_change_trained {grad_rel['trained'][0]:.2e} rel target <= "
          f"{0.1 * grad_rel['trained'][1]:.2e}")
    print(f"RESULT codec_int8_heldout_distill_loss_change {abs(paired.mean()):.5f} loss target <= {noise:.5f}")
    print(f"RESULT codec_int8_student_geom_cos_to_fp16 {cos_pair['geom']:.5f} cos target >= {cos_cross['geom']:.5f}")
    print(f"RESULT codec_int8_student_lang_cos_to_fp16 {cos_pair['lang']:.5f} cos target >= {cos_cross['lang']:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
