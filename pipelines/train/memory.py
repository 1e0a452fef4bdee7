"""Per-GPU memory estimate of a training step: model state under ZeRO, communication buffers and activations.

Used by ``--dry-run`` (:mod:`pipelines.train.plan`) for any preset, ZeRO stage, GPU count, micro-batch, clip shape,
activation checkpointing and offload, up to the paper's 8 B-parameter ``base()``.

**Model state** (bytes per parameter; ``N`` data-parallel ranks; DeepSpeed 0.19's allocations):

=====================  =======================================================================================
weights                every parameter in the compute dtype (2 bf16, 4 fp32); / N under ZeRO-3, which also
                       holds the gathered working set (``max_live_parameters + prefetch_bucket_size``, at most
                       all parameters) and the parameters below ``param_persistence_threshold`` in full
gradients              trainable parameters: the compute dtype, / N under ZeRO-2 and 3
optimizer              trainable parameters: Adam m and v (8) plus an fp32 master (4), / N; ZeRO-3 in fp32
                       updates its fp32 partition in place (no master copy)
buffers                gradient reduce bucket (``reduce_bucket_size`` elements of the compute dtype), doubled by
                       ``overlap_comm`` under ZeRO-1/2; three under ZeRO-3 (bucket, reduce-scatter staging and
                       its rearranged copy)
=====================  =======================================================================================

Offloaded optimizer states (and, under ZeRO-3, offloaded parameters) move to host memory and are reported there.

**Activations** are not guessed from formulas: the model's own code is traced with *fake tensors*
(``torch._subclasses.fake_tensor.FakeTensorMode``: shapes, dtypes and devices without memory). The model built on
the meta device gets fake CPU parameters in the compute dtype (:func:`fake_model`) and runs a training forward and
backward on fake inputs under a ``TorchDispatchMode`` that follows every tensor storage the step creates and frees;
the live total at the end of the forward is what the backward keeps (saved activations), its maximum over forward
and backward is the step's peak. Freezing, activation checkpointing (its recomputation runs in the traced
backward), the compute dtype and the loss weights are the run's. Fake CPU tensors (not meta ones, for which
PyTorch has no fused attention and materialises the ``L x L`` attention matrix) make
``F.scaled_dot_product_attention`` take the fused kernel, whose memory is linear in ``L`` like the flash and
memory-efficient kernels of a GPU. Parameter gradients are dropped as soon as they are accumulated (DeepSpeed moves
them into its buckets), so the trace counts activations only.

Fake tensors cost nothing per element, but per operation, so each part is traced at two tiny sizes and extrapolated
exactly: the geometric part (encoder, adapter, reconstruction with its DPT heads, metric depth and their losses;
Stage 1: the distillation), traced for the real number of frames (frame chunks and global attention as in the run),
is affine in the patches per frame (2 x 2 and 4 x 4 patch grids are traced); the LLM part is affine in its sequence
length (``L = scene tokens (vl.max_tokens) + text``); everything is linear in the micro-batch. The two parts'
backward passes do not overlap, so the step's activation peak is the sum of both parts' saved bytes (per clip, times
the micro-batch) plus the larger of their backward surpluses (traced for one clip: the working set of the largest
layer's backward, including its parameter gradient before DeepSpeed takes it). The 3D-VL branch's voxel pooling and
the box head's matching depend on the data, cannot run on fake tensors and are left out (they act on pooled tokens
and are small next to the rest).

``bench/bench_memory_model.py`` checks the estimate against the measured peak memory of real training steps on
the CPU.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pipelines.train.config import TrainConfig

GIB = 1024**3


@dataclass(frozen=True)
class StepShape:
    """The shape of one micro-batch.

    Attributes:
        micro_batch: clips per rank per forward pass.
        frames: frames per clip.
        height: frame height in pixels.
        width: frame width in pixels.
        text_tokens: prompt + answer tokens per example (Stage 2).
    """

    micro_batch: int
    frames: int
    height: int
    width: int
    text_tokens: int


@dataclass(frozen=True)
class ActivationTrace:
    """Bytes of one traced forward + backward.

    Attributes:
        saved: live at the end of the forward (what the backward needs).
        peak: the most live at any point of forward and backward.
    """

    saved: float
    peak: float

    @property
    def surplus(self) -> float:
        """What the backward needs on top of the saved activations at its worst moment."""
        return max(0.0, self.peak - self.saved)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU of a training step, and what is offloaded to host memory.

    Attributes:
        weights: parameters held by each rank (ZeRO-3: its partition, the gathered working set and the persistent
            small parameters).
        gradients: gradients of trainable parameters held by each rank.
        optimizer: optimizer state and fp32 master weights held by each rank.
        buffers: DeepSpeed's gradient reduce buckets.
        activations: the step's activation peak (saved activations plus the backward's surplus).
        host: bytes per rank moved to host memory by offloading.
    """

    weights: float
    gradients: float
    optimizer: float
    buffers: float = 0.0
    activations: float = 0.0
    host: float = 0.0

    @property
    def model_state(self) -> float:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        return self.model_state + self.buffers + self.activations

    def describe(self) -> str:
        host = f"; offloaded to host {self.host / GIB:.2f} GiB per rank" if self.host else ""
        return (f"{self.total / GIB:.2f} GiB per GPU at peak (weights {self.weights / GIB:.2f}, gradients "
                f"{self.gradients / GIB:.2f}, optimizer {self.optimizer / GIB:.2f}, buffers "
                f"{self.buffers / GIB:.2f}, activations {self.activations / GIB:.2f}){host}")


def estimate_model_state(total_params: int, trainable_params: int, cfg: TrainConfig, world: int, bf16: bool,
                         persistent_params: int = 0) -> MemoryEstimate:
    """Model-state and buffer bytes per GPU for ``world`` ranks under ``cfg.deepspeed`` (see the module table).

    Args:
        total_params: all parameters.
        trainable_params: parameters that train.
        cfg: the training config (ZeRO stage, offload, bucket sizes).
        world: data-parallel ranks.
        bf16: compute dtype bf16 (else fp32).
        persistent_params: parameters of ZeRO-3's persistent (never partitioned) small tensors.
    """
    ds = cfg.deepspeed
    stage = ds.zero_stage
    width = 2 if bf16 else 4
    if stage >= 3:
        gathered = min(total_params, ds.max_live_parameters + ds.prefetch_bucket_size)
        partition = total_params * width / world
        weights = gathered * width + persistent_params * width
        host = 0.0
        if ds.offload_params != "none":
            host, partition = partition, 0.0
        weights += partition
    else:
        weights, host = float(total_params * width), 0.0
    gradients = trainable_params * width / (world if stage >= 2 else 1)
    master = 4 if (bf16 or stage < 3) else 0
    optimizer = trainable_params * (8 + master) / world
    if ds.offload_optimizer != "none":
        host += optimizer + (gradients if stage >= 2 else 0.0)
        optimizer = 0.0
        gradients = gradients if stage < 2 else 0.0
    # ZeRO-1/2: the bucket, doubled by overlap_comm; ZeRO-3: the bucket plus, while it is reduce-scattered, a
    # staging copy and a rearranged copy of the same size (DeepSpeed's stage3.py).
    copies = (2 if ds.overlap_comm else 1) if stage <= 2 else 3
    buffers = ds.reduce_bucket_size * width * copies
    return MemoryEstimate(weights, gradients, optimizer, buffers, 0.0, host)


# ---------------------------------------------------------------------------------------------- tracing
class _LiveBytes(TorchDispatchMode):
    """Follows every storage created inside the mode until it is freed: the live total and its maximum.

    Storages that exist before (``existing``: the parameters and buffers, which ops see through views) are never
    counted.
    """

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._sizes: dict[int, int] = {t.untyped_storage()._cdata: 0 for t in existing}

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._sizes:
                    self._sizes[key] = storage.nbytes()
                    self.live += self._sizes[key]
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key)
        return out


def fake_model(model: torch.nn.Module, fake_mode, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` (built on the meta device) with fake CPU tensors of ``fake_mode`` as parameters and buffers, floating
    ones in ``dtype`` (as DeepSpeed casts the module; a tied parameter stays tied), in place."""
    replaced: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in replaced:
            with fake_mode:
                new = torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype)
            replaced[id(t)] = torch.nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(
                t, torch.nn.Parameter) else new
        return replaced[id(t)]

    for module in model.modules():
        for registry in (module._parameters, module._buffers):
            for name, tensor in registry.items():
                if tensor is not None:
                    registry[name] = fake(tensor)
    return model


def trace_step(model: torch.nn.Module, step: Callable[[], torch.Tensor], fake_mode) -> ActivationTrace:
    """Trace ``step()`` (a forward returning the loss) and its backward on ``model`` (see :func:`fake_model`)."""
    hooks = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
             for p in model.parameters() if p.requires_grad]
    tracker = _LiveBytes([*model.parameters(), *model.buffers()])
    try:
        with fake_mode, tracker:
            loss = step()
            saved = tracker.live
            loss.backward()
            del loss
    finally:
        for hook in hooks:
            hook.remove()
    return ActivationTrace(float(saved), float(tracker.peak))


def _geometric_step(model, cfg: TrainConfig, frames: int, grid: tuple[int, int], dtype: torch.dtype
                    ) -> Callable[[], torch.Tensor]:
    """One clip through the geometric part and its losses (Stage 1: encoder, adapter, distillation)."""
    from model import VidLLMBatch
    from model.losses import MultitaskLoss
    from model.outputs import VidLLMOutput

    vcfg = model.vidllm_config
    patch = vcfg.patch_size
    hw = (grid[0] * patch, grid[1] * patch)
    loss_fn = MultitaskLoss(cfg.loss)

    def step() -> torch.Tensor:
        clip = torch.zeros(1, frames, 3, *hw, dtype=dtype)
        if cfg.stage == 1:
            p = grid[0] * grid[1]
            batch = VidLLMBatch(frames=clip, teacher_geo=torch.empty(1, frames, p, vcfg.distill.teacher_geo_dim,
                                                                      dtype=dtype),
                                teacher_sem=torch.empty(1, frames, vcfg.distill.teacher_sem_dim, dtype=dtype),
                                teacher_grid=grid)
            return loss_fn(model(batch, reconstruct=False, generator=torch.Generator()), batch)[0]
        # Well-formed targets (unit depth, identity poses, a pinhole K) so the same step also runs on real tensors.
        k = torch.tensor([[float(hw[1]), 0.0, hw[1] / 2], [0.0, float(hw[1]), hw[0] / 2], [0.0, 0.0, 1.0]])
        batch = VidLLMBatch(frames=clip, depth=torch.ones(1, frames, *hw),
                            extrinsics=torch.eye(3, 4).expand(1, frames, 3, 4).clone(),
                            intrinsics=k.expand(1, frames, 3, 3).clone())
        enc = model.encoder(clip)
        ad = model.adapter(enc.tokens)
        out = VidLLMOutput(adapter=ad, grid=enc.grid, image_hw=hw,
                           reconstruction=model.reconstruction(ad.geom, enc.grid, hw),
                           metric_depth=model.metric_depth(enc.layer_tokens, enc.grid, hw))
        return loss_fn(out, batch)[0]

    return step


def _llm_step(model, length: int, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """One sequence of ``length`` embeddings through the LLM and the next-token loss (as ``model.losses.lm_loss``)."""
    hidden = model.vidllm_config.llm.hidden_size

    def step() -> torch.Tensor:
        embeds = torch.empty(1, length, hidden, dtype=dtype, requires_grad=True)
        # A 4-D mask is used as given (transformers builds none from it, which would read values).
        mask = torch.zeros(1, 1, length, length, dtype=dtype)
        logits = model.llm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True,
                           use_cache=False).logits
        labels = torch.zeros(1, length, dtype=torch.long)
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))

    return step


def _affine(points: dict[int, float], size: int) -> float:
    """The line through the two traced ``(size, bytes)`` points, at ``size``."""
    (x0, y0), (x1, y1) = sorted(points.items())
    return y0 + (y1 - y0) / (x1 - x0) * (size - x0)


def estimate_activations(model, cfg: TrainConfig, shape: StepShape, bf16: bool) -> MemoryEstimate:
    """The activation peak of one micro-batch of ``shape`` (see the module docstring).

    Args:
        model: the run's model on the meta device, with its freezing applied; it is switched to training mode,
            the run's activation checkpointing and (for bf16) the bf16 dtype, as DeepSpeed would.
        cfg: the training config (stage, loss weights, activation checkpointing).
        shape: the micro-batch.
        bf16: compute dtype bf16 (else fp32).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    dtype = torch.bfloat16 if bf16 else torch.float32
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = fake_model(model, fake_mode, dtype).train()
    model.set_activation_checkpointing(**dataclasses.asdict(cfg.activation_checkpointing))
    patch = model.vidllm_config.patch_size
    grid_real = (shape.height // patch, shape.width // patch)
    saved, peak = {}, {}
    for grid in ((2, 2), (4, 4)):
        trace = trace_step(model, _geometric_step(model, cfg, shape.frames, grid, dtype), fake_mode)
        saved[grid[0] * grid[1]], peak[grid[0] * grid[1]] = trace.saved, trace.peak
    patches = grid_real[0] * grid_real[1]
    geo = ActivationTrace(_affine(saved, patches), _affine(peak, patches))
    llm = ActivationTrace(0.0, 0.0)
    if cfg.stage == 2 and (cfg.loss.lm > 0 or cfg.loss.box > 0):
        traces = {n: trace_step(model, _llm_step(model, n, dtype), fake_mode) for n in (16, 32)}
        length = model.vidllm_config.vl.max_tokens + shape.text_tokens
        llm = ActivationTrace(_affine({n: t.saved for n, t in traces.items()}, length),
                              _affine({n: t.peak for n, t in traces.items()}, length))
    saved = shape.micro_batch * (geo.saved + llm.saved)
    return MemoryEstimate(0.0, 0.0, 0.0, 0.0, max(0.0, saved + max(geo.surplus, llm.surplus)))


def estimate_memory(model, cfg: TrainConfig, shape: StepShape, world: int, bf16: bool) -> MemoryEstimate:
    """Everything per GPU: :func:`estimate_model_state` plus :func:`estimate_activations` (``model`` as there)."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    threshold = cfg.deepspeed.param_persistence_threshold
    persistent = sum(p.numel() for p in params if p.numel() < threshold) if cfg.deepspeed.zero_stage >= 3 else 0
    state = estimate_model_state(total, trainable, cfg, world, bf16, persistent)
    acts = estimate_activations(model, cfg, shape, bf16)
    return dataclasses.replace(state, activations=acts.activations)


def headroom_gib(estimate: MemoryEstimate, gpu_memory_gib: float) -> float:
    """GiB left on a GPU of ``gpu_memory_gib`` at the estimated peak (negative: it does not fit)."""
    return gpu_memory_gib - estimate.total / GIB
