"""GPU check: the paper-size model's inference, a Stage-2 training step and the teachers' throughput on one GPU.

Three measurements, each in bf16 on the first CUDA device, with random weights (the sizes, not the values, set the
cost), in well under 8 minutes on one 80 GB-class GPU:

* **inference**: ``VidLLMConfig.base()`` (8.0 B parameters) encodes one clip of 32 frames of 378 x 518 pixels
  (``VidLLM.encode_scene``) and answers a question with up to 16 greedy tokens (``VidLLM.answer``): latency of the
  second run (the first warms up kernels) and peak GPU memory (``--tiny``: the process's peak resident set).
* **Stage-2 step**: ``VidLLMConfig.small()`` at the paper's clip shape (32 frames of 378 x 518, micro-batch 1),
  every Stage-2 loss (camera, depth, point map, metric depth, language, box) with the Stage-2 freezing, bf16 weights,
  fused AdamW: median step time of 3 steps after one warm-up, model FLOPs per step (``FlopCounterMode`` over a
  forward + backward), MFU against the GPU's dense bf16 peak (``--peak-tflops``; known for A100/H100/H200), peak
  GPU memory.
* **teachers**: the geometry teacher (DINOv2-L/14 with registers, VGGT's encoder) and the semantic teacher (CLIP
  ViT-L/14-336 vision tower) of :mod:`pipelines.teachers` over 32-frame clips: frames per second.

The tokenizers are word-level stand-ins with the LLMs' vocabulary sizes and ``<scene>``/``<loc>`` ids (no real
tokenizer is needed to measure cost). ``--tiny`` runs the same code on the CPU with the tiny model, 4 frames of
28 x 28 pixels and tiny teachers (CI runs it; its figures mean nothing).

Run: ``python bench/gpu_check.py [--tiny]``. Ends with ``RESULT <name> <value> <unit> target <op> <value>`` lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

#: Dense bf16 peak (TFLOP/s) by device name fragment: A100 (SXM), H100 (SXM), H200.
PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures at."""

    device: torch.device
    dtype: torch.dtype
    frames: int
    height: int
    width: int
    teacher_frames: int

    @classmethod
    def pick(cls, tiny: bool) -> Sizes:
        if tiny:
            return cls(torch.device("cpu"), torch.float32, 4, 28, 28, 4)
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device (use --tiny to exercise the code on the CPU)")
        return cls(torch.device("cuda"), torch.bfloat16, 32, 378, 518, 32)


def synthetic_tokenizer(llm_cfg):
    """A word-level tokenizer with the LLM's vocabulary size and its special and ``<scene>``/``<loc>`` ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from model.tokenizer import LOC_TOKEN, SCENE_TOKEN

    names = {llm_cfg.pad_token_id: "<pad>", llm_cfg.bos_token_id: "<bos>", llm_cfg.eos_token_id: "<eos>",
             llm_cfg.scene_token_id: SCENE_TOKEN, llm_cfg.loc_token_id: LOC_TOKEN}
    vocab = {names.get(i, f"w{i}"): i for i in range(llm_cfg.vocab_size)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=names[llm_cfg.bos_token_id]))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    pad = names[llm_cfg.pad_token_id]
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token=pad,
                                  unk_token="<bos>")
    tok.add_special_tokens({"additional_special_tokens": [SCENE_TOKEN, LOC_TOKEN]})
    return tok


def build_model(cfg, sizes: Sizes):
    """The model with random weights, initialised on the device, in the compute dtype (as DeepSpeed casts it)."""
    from model import VidLLM

    torch.manual_seed(0)
    with sizes.device:
        model = VidLLM(cfg)
    return model.to(sizes.dtype)


def reset_peak(sizes: Sizes) -> None:
    if sizes.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(sizes: Sizes) -> float:
    """Peak GPU memory allocated since :func:`reset_peak`; on the CPU, the process's peak resident set."""
    if sizes.device.type != "cuda":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def sync(sizes: Sizes) -> None:
    if sizes.device.type == "cuda":
        torch.cuda.synchronize()


def inference(sizes: Sizes, tiny: bool) -> dict[str, float]:
    """``base()`` (or tiny) clip -> scene tokens -> a 16-token answer."""
    from model import VidLLMConfig

    cfg = VidLLMConfig.tiny() if tiny else VidLLMConfig.base()
    model = build_model(cfg, sizes).eval()
    tok = synthetic_tokenizer(cfg.llm)
    frames = torch.rand(1, sizes.frames, 3, sizes.height, sizes.width, device=sizes.device, dtype=sizes.dtype)
    times = []
    reset_peak(sizes)
    for _ in range(2):
        sync(sizes)
        start = time.perf_counter()
        with torch.inference_mode():
            scene = model.encode_scene(frames)
            answer = model.answer(scene, ["what is on the table?"], tok, max_new_tokens=16)
        sync(sizes)
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    out = {"latency_s": times[-1], "peak_gib": peak_gib(sizes), "params_b": params / 1e9,
           "scene_tokens": int(scene.mask.sum()), "answer_words": len(answer[0].split())}
    del model, scene
    return out


def stage2_batch(cfg, tok, sizes: Sizes):
    """One clip at ``sizes`` with every Stage-2 target (geometry of a camera sliding sideways, one grounding answer)."""
    from model import VidLLMBatch
    from model.tokenizer import encode_example, grounding_answer, grounding_prompt

    s, h, w, dev = sizes.frames, sizes.height, sizes.width, sizes.device
    box = (0.4, -0.2, 2.0, 0.6, 0.5, 0.4)
    ids, labels = encode_example(tok, grounding_prompt("the chair near the table"), grounding_answer([box]))
    extrinsics = torch.eye(3, 4, device=dev).expand(1, s, 3, 4).clone()
    extrinsics[..., 0, 3] = -0.05 * torch.arange(s, device=dev, dtype=torch.float32)
    k = torch.tensor([[float(w), 0, w / 2], [0, float(w), h / 2], [0, 0, 1]], device=dev)
    return VidLLMBatch(
        frames=torch.rand(1, s, 3, h, w, device=dev, dtype=sizes.dtype),
        depth=torch.full((1, s, h, w), 2.0, device=dev), extrinsics=extrinsics, intrinsics=k.expand(1, s, 3, 3).clone(),
        input_ids=torch.tensor([ids], device=dev), attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=dev),
        labels=torch.tensor([labels], device=dev), boxes=torch.tensor([[box]], device=dev),
        box_mask=torch.ones(1, 1, dtype=torch.bool, device=dev))


def training_step(sizes: Sizes, tiny: bool) -> dict[str, float]:
    """Stage-2 steps of ``small()`` (or tiny): forward, every loss, backward, fused AdamW."""
    from torch.utils.flop_counter import FlopCounterMode

    from model import VidLLMConfig
    from model.freezing import apply_freezing
    from model.losses import MultitaskLoss
    from pipelines.train.config import stage_policy

    cfg = VidLLMConfig.tiny() if tiny else VidLLMConfig.small()
    model = build_model(cfg, sizes).train()
    weights, freeze = stage_policy(2)
    apply_freezing(model, freeze.trainable, freeze.frozen)
    loss_fn = MultitaskLoss(weights)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=sizes.device.type == "cuda")
    batch = stage2_batch(cfg, synthetic_tokenizer(cfg.llm), sizes)

    def step() -> None:
        loss, _ = loss_fn(model(batch), batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = loss_fn(model(batch), batch)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    reset_peak(sizes)
    times = []
    for _ in range(4):
        sync(sizes)
        start = time.perf_counter()
        step()
        sync(sizes)
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times[1:]), "tflops_per_step": flops / 1e12, "peak_gib": peak_gib(sizes)}


def teachers(sizes: Sizes, tiny: bool) -> dict[str, float]:
    """Frames per second of the geometry and semantic teachers on 32-frame clips (bf16 on the GPU)."""
    import numpy as np
    from transformers import CLIPVisionConfig, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from model.encoder import EncoderConfig
    from pipelines.teachers.geometry import GeometryTeacher
    from pipelines.teachers.semantic import CLIP_L_336, SemanticTeacher, write_random_clip

    dtype = "float32" if tiny else "bfloat16"
    gpus = 0.0 if tiny else 1.0
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (sizes.teacher_frames, sizes.height, sizes.width, 3), dtype=np.uint8)
    out = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-teachers-") as tmp:
        if tiny:
            geo_cfg = Dinov2WithRegistersConfig(**{**EncoderConfig.tiny().dinov2, "num_register_tokens": 4})
            clip_cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=28, patch_size=14, projection_dim=16)
        else:
            geo_cfg = Dinov2WithRegistersConfig(**EncoderConfig.base().dinov2)
            clip_cfg = CLIPVisionConfig(**CLIP_L_336)
        torch.manual_seed(0)
        Dinov2WithRegistersModel(geo_cfg).save_pretrained(f"{tmp}/geo")
        write_random_clip(f"{tmp}/sem", clip_cfg)
        for name, teacher in (("geometry", GeometryTeacher(f"{tmp}/geo", f"{tmp}/cache", dtype, gpus)),
                              ("semantic", SemanticTeacher(f"{tmp}/sem", f"{tmp}/cache", dtype, gpus))):
            teacher(frames)  # warm-up
            sync(sizes)
            start = time.perf_counter()
            for _ in range(3):
                teacher(frames)
            sync(sizes)
            out[f"{name}_fps"] = 3 * len(frames) / (time.perf_counter() - start)
            del teacher
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (CI; figures mean nothing)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the GPU's dense bf16 peak for MFU (default: from the device name when known)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("inference", "training", "teachers"))
    args = parser.parse_args()
    sizes = Sizes.pick(args.tiny)
    name = torch.cuda.get_device_name(0) if sizes.device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), 0.0)
    print(f"device {name}, {sizes.frames} frames of {sizes.height}x{sizes.width}, {sizes.dtype}", flush=True)
    results = []
    began = time.perf_counter()
    if "inference" not in args.skip:
        inf = inference(sizes, args.tiny)
        print(f"inference: {inf['params_b']:.2f} B parameters, {inf['scene_tokens']} scene tokens, "
              f"{inf['latency_s']:.2f} s to an answer, peak {inf['peak_gib']:.1f} GiB", flush=True)
        results += [("gpu_check_inference_latency", inf["latency_s"], "s", "<= 10"),
                    ("gpu_check_inference_peak_memory", inf["peak_gib"], "GiB", "<= 78")]
    if "training" not in args.skip:
        tr = training_step(sizes, args.tiny)
        step_tflops = tr["tflops_per_step"] / tr["step_s"]
        mfu = 100 * step_tflops / peak if peak else float("nan")
        print(f"stage-2 step: {tr['step_s']:.3f} s, {tr['tflops_per_step']:.4g} TFLOP per step "
              f"({step_tflops:.1f} TFLOP/s, MFU {mfu:.1f} % of {peak:g}), peak {tr['peak_gib']:.1f} GiB", flush=True)
        results += [("gpu_check_stage2_step_time", tr["step_s"], "s", ">= 0"),
                    ("gpu_check_stage2_mfu", mfu, "%", ">= 25"),
                    ("gpu_check_stage2_peak_memory", tr["peak_gib"], "GiB", "<= 78")]
    if "teachers" not in args.skip:
        te = teachers(sizes, args.tiny)
        print(f"teachers: geometry {te['geometry_fps']:.1f} frames/s, semantic {te['semantic_fps']:.1f} frames/s",
              flush=True)
        results += [("gpu_check_geometry_teacher_throughput", te["geometry_fps"], "frames/s", ">= 0"),
                    ("gpu_check_semantic_teacher_throughput", te["semantic_fps"], "frames/s", ">= 0")]
    print(f"total {time.perf_counter() - began:.1f} s", flush=True)
    for result, value, unit, target in results:
        print(f"RESULT {result} {value:.3f} {unit} target {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
