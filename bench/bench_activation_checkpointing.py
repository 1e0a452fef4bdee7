"""Benchmark: peak memory of one training step with and without activation checkpointing (CPU).

The model is the ``tiny`` Vid-LLM at a resolution and clip length where activations, not weights, dominate the
memory of a step (``--frames`` frames of ``--size`` px, DPT heads and the metric-depth decoder in chunks of
``--chunk`` frames, as the presets decode 32 frames in chunks of 8). One forward + backward of every Stage-2 loss
(and the Stage-1 distillation losses) runs with checkpointing off (``baseline``) and with
``VidLLM.set_activation_checkpointing(encoder=True, reconstruction=True, heads=True, llm=True)`` (``ours``).

Two measures, both taken in the same run for both settings:

* **Peak RSS** of the step: each setting runs in a fresh child process; the child records its resident set size
  just before the step (model, batch and one warm-up step already in memory) and its peak RSS
  (``getrusage(RUSAGE_SELF).ru_maxrss``) after it; the difference is the step's peak. glibc's mmap threshold is
  pinned to 64 KiB in the children (``MALLOC_MMAP_THRESHOLD_``), so every tensor buffer of any size is mapped and
  unmapped on its own and RSS follows the live tensors instead of the heap's high-water mark.
* **Saved activations**: the bytes of distinct tensor storages autograd keeps for the backward pass at the end of
  the forward (``torch.autograd.graph.saved_tensors_hooks``; parameters excluded), a deterministic count of what
  checkpointing is meant to remove.

The loss and every gradient are compared between the two settings (they must be identical up to float rounding).

Run: ``python bench/bench_activation_checkpointing.py [--frames 8 --size 224 --chunk 2]``. Ends with
``RESULT <name> <value> <unit> target <op> <value>`` lines. Figures are taken on a shared machine; the RSS
figures vary by a few MiB between runs, the saved-activation bytes do not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build(args: argparse.Namespace):
    """The model (seeded), a synthetic Stage-2 batch with every target, and the loss."""
    from model import LossWeights, VidLLM, VidLLMBatch, VidLLMConfig, build_tokenizer
    from model.tokenizer import encode_example, grounding_answer, grounding_prompt

    tiny = VidLLMConfig.tiny()
    cfg = dataclasses.replace(
        tiny,
        reconstruction=dataclasses.replace(tiny.reconstruction, frames_chunk_size=args.chunk),
        metric_depth=dataclasses.replace(tiny.metric_depth, frames_chunk_size=args.chunk),
    )
    torch.manual_seed(0)
    model = VidLLM(cfg).train()
    tok = build_tokenizer(cfg)
    gen = torch.Generator().manual_seed(0)
    s, h = args.frames, args.size
    ids, labels = encode_example(tok, grounding_prompt("the chair near the table"),
                                 grounding_answer([(0.4, -0.2, 2.0, 0.6, 0.5, 0.4)]))
    depth = (1.0 + 0.02 * torch.arange(h, dtype=torch.float32)).expand(1, s, h, h).clone()
    extrinsics = torch.eye(3, 4).expand(1, s, 3, 4).clone()
    extrinsics[..., 0, 3] = -0.1 * torch.arange(s, dtype=torch.float32)
    intrinsics = torch.tensor([[h * 1.0, 0.0, (h - 1) / 2], [0.0, h * 1.0, (h - 1) / 2], [0.0, 0.0, 1.0]])
    grid = h // 14
    batch = VidLLMBatch(
        frames=torch.rand(1, s, 3, h, h, generator=gen), depth=depth, extrinsics=extrinsics,
        intrinsics=intrinsics.expand(1, s, 3, 3).clone(),
        teacher_geo=torch.randn(1, s, grid * grid, cfg.distill.teacher_geo_dim, generator=gen),
        teacher_sem=torch.randn(1, s, cfg.distill.teacher_sem_dim, generator=gen),
        input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        labels=torch.tensor([labels]), boxes=torch.tensor([[[0.4, -0.2, 2.0, 0.6, 0.5, 0.4]]]),
        box_mask=torch.ones(1, 1, dtype=torch.bool),
    )  # fmt: skip
    from model.losses import MultitaskLoss

    weights = LossWeights(geo=1, lang=1, sc=1, camera=5, depth=1, point=1, metric_depth=1, lm=1, box=1)
    return model, batch, MultitaskLoss(weights)


def step(model, batch, loss_fn, saved: list | None = None) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor):
        if saved is not None and t.untyped_storage().data_ptr() not in params:
            saved.append((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, _ = loss_fn(model(batch, generator=torch.Generator().manual_seed(1)), batch)
    total.backward()
    return total.detach()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    model, batch, loss_fn = build(args)
    if args.child == "on":
        model.set_activation_checkpointing(encoder=True, reconstruction=True, heads=True, llm=True)
    step(model, batch, loss_fn)  # warm-up: one-time allocations (thread pools, kernels, caches)
    saved: list = []
    step(model, batch, loss_fn, saved)  # count saved activations (not the peak run: the hook holds references)
    saved_bytes = sum(dict(saved).values())
    model.zero_grad(set_to_none=True)
    before = rss_bytes()
    loss = step(model, batch, loss_fn)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.save({"loss": loss, "grads": grads}, args.out)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"before": before, "peak": peak, "saved_bytes": saved_bytes, "param_bytes": param_bytes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels (multiple of 14)")
    parser.add_argument("--chunk", type=int, default=2, help="frames per DPT-head / metric-depth chunk")
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size % 14:
        parser.error(f"--size {args.size} is not a multiple of the patch size 14")
    if args.child:
        child(args)
        return
    import tempfile

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    results, tensors = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in ("off", "on"):
            out = os.path.join(tmp, f"{setting}.pt")
            cmd = [sys.executable, __file__, "--child", setting, "--out", out, "--frames", str(args.frames),
                   "--size", str(args.size), "--chunk", str(args.chunk)]
            proc = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            results[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
            tensors[setting] = torch.load(out)
    mib = 2**20
    peak = {k: (v["peak"] - v["before"]) / mib for k, v in results.items()}
    saved = {k: v["saved_bytes"] / mib for k, v in results.items()}
    loss_diff = (tensors["on"]["loss"] - tensors["off"]["loss"]).abs().item()
    grad_diff = max((tensors["on"]["grads"][n] - g).abs().max().item() for n, g in tensors["off"]["grads"].items())
    print(f"config: tiny Vid-LLM, {args.frames} frames of {args.size}x{args.size} px, head chunks of {args.chunk} "
          f"frames; parameters {results['off']['param_bytes'] / mib:.1f} MiB")
    for k, name in (("off", "baseline"), ("on", "ours")):
        print(f"{name:8s} step peak RSS {peak[k]:8.1f} MiB   saved activations {saved[k]:8.1f} MiB")
    print(f"|loss difference| {loss_diff:.2e}   max |gradient difference| {grad_diff:.2e}")
    print(f"RESULT activation_checkpointing_peak_rss_reduction {100 * (1 - peak['on'] / peak['off']):.1f} % "
          f"target >= 30")
    print(f"RESULT activation_checkpointing_saved_activations_reduction {100 * (1 - saved['on'] / saved['off']):.1f} "
          f"% target >= 30")
    print(f"RESULT activation_checkpointing_loss_difference {loss_diff:.2e} abs target <= 1e-5")


if __name__ == "__main__":
    main()
