"""Typed configuration tree of Vid-LLM: the geometric components' configs plus the 3D-VL half.

``VidLLMConfig`` composes one dataclass per component. Dimensions that follow from other components (the adapter
width feeding the 3D-VL branch, the LLM hidden size feeding the projector and box head) are *derived* by the
composing model, never duplicated here, so presets cannot drift out of sync. Presets:

* ``tiny()``: a few thousand-parameter model that runs forward+backward on ``[1, 4, 3, 28, 28]`` frames in well
  under a second on CPU (tests).
* ``small()``: DINOv2-S/14 encoder and a SmolLM2-135M-shaped Llama (hidden 576, 30 layers, 9 heads, 3 KV heads,
  vocab 49152 + the two task tokens).
* ``base()``: DINOv2-L/14 at 518 px, 32 frames, K = 16 bridge tokens, a Vicuna-7B-shaped Llama (hidden 4096).

``to_dict()``/``from_dict()`` give a JSON-safe round trip (tuples come back as tuples).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from model.adapter import AdapterConfig
from model.encoder import EncoderConfig
from model.metric_depth import MetricDepthConfig
from model.reconstruction import ReconstructionConfig


@dataclass
class VLBranchConfig:
    """3D-VL branch (paper §3.3, Eq. 3-4): back-projection, 3D position MLP, voxel pooling, LLM projector.

    Attributes:
        voxel_size_m: voxel edge in metres for pooling (LLaVA-3D: 0.2 m).
        max_tokens: cap on scene tokens per clip after pooling (LLaVA-3D: 2560).
        pos_hidden: hidden width of the 3D position MLP ``P -> P'``.
        min_depth_m: patches with predicted depth below this are dropped (invalid geometry).
        blind: give the LLM and the box head no scene tokens at all (the blind baseline: trained on the same
            questions and answers, it can only learn the answer prior; its boxes come from the prior too).
    """

    voxel_size_m: float = 0.2
    max_tokens: int = 2560
    pos_hidden: int = 256
    min_depth_m: float = 1e-3
    blind: bool = False

    def __post_init__(self) -> None:
        if self.voxel_size_m <= 0 or self.max_tokens < 1 or self.pos_hidden < 1 or self.min_depth_m < 0:
            raise ValueError(f"invalid VLBranchConfig: {self}")


@dataclass
class LLMConfig:
    """The causal LM and its tokenizer.

    Attributes:
        arch: kwargs of the HF config, including ``model_type`` (e.g. ``"llama"``); the model is built with
            ``AutoModelForCausalLM.from_config``. ``vocab_size`` must already include ``<scene>``/``<loc>``.
        scene_token_id: id of ``<scene>`` in the tokenizer.
        loc_token_id: id of ``<loc>`` in the tokenizer.
        pad_token_id / bos_token_id / eos_token_id: tokenizer ids used for padding and generation.
        pretrained_path: local HF directory to load LM weights from (``local_files_only``); ``None`` = random init.
            Cleared in the config stored with a full Vid-LLM checkpoint (the weights are in the checkpoint).
        tokenizer_path: local directory of the tokenizer; ``None`` = the offline word-level tokenizer.
        extra_words: extra words for the word-level tokenizer (appended after the fixed vocabulary).
        use_chat_template: prompts are the user turn of the tokenizer's chat template and answers the assistant
            turn (instruction-tuned LMs such as SmolLM2-Instruct), in training and at inference alike
            (:class:`model.processor.VidLLMProcessor`). Part of the architecture: a checkpoint trained with it
            must be prompted with it.
    """

    arch: dict[str, Any]
    scene_token_id: int
    loc_token_id: int
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int
    pretrained_path: str | None = None
    tokenizer_path: str | None = None
    extra_words: tuple[str, ...] = ()
    use_chat_template: bool = False

    def __post_init__(self) -> None:
        for key in ("model_type", "hidden_size", "vocab_size"):
            if key not in self.arch:
                raise ValueError(f"LLMConfig.arch must contain {key!r}; got keys {sorted(self.arch)}")
        ids = (self.scene_token_id, self.loc_token_id, self.pad_token_id, self.bos_token_id, self.eos_token_id)
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"LLMConfig token ids {ids} must lie in [0, vocab_size={self.vocab_size})")
        if self.scene_token_id == self.loc_token_id:
            raise ValueError("LLMConfig: <scene> and <loc> need distinct ids")

    @property
    def hidden_size(self) -> int:
        return int(self.arch["hidden_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.arch["vocab_size"])

    @classmethod
    def word_level(cls, **arch: Any) -> LLMConfig:
        """A Llama-shaped LM over the offline word-level tokenizer (ids fixed by ``model.tokenizer``)."""
        from model.tokenizer import SPECIAL_TOKENS, word_vocab_size

        ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        arch = {"model_type": "llama", "vocab_size": word_vocab_size(), **arch}
        return cls(arch=arch, scene_token_id=ids["<scene>"], loc_token_id=ids["<loc>"], pad_token_id=ids["[PAD]"],
                   bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"])


def _llama_arch(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, **extra: Any) -> dict:
    return {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": intermediate,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, **extra}


@dataclass
class GroundingConfig:
    """Box head on the ``<loc>`` hidden state (LLaVA-3D "grounding module" style, DETR-like queries).

    Attributes:
        dim: width of the head (the LLM hidden states and scene tokens are projected to it).
        num_queries: Q box queries per ``<loc>`` (several targets for Multi3DRefer); trained by Hungarian matching.
        num_heads: attention heads of the query cross-attention over scene tokens.
        num_layers: query decoder layers.
        min_size_m: lower bound added to the softplus box size (metres).
    """

    dim: int = 256
    num_queries: int = 8
    num_heads: int = 8
    num_layers: int = 2
    min_size_m: float = 0.01

    def __post_init__(self) -> None:
        if self.num_queries < 1 or self.num_heads < 1 or self.num_layers < 1 or self.min_size_m < 0:
            raise ValueError(f"invalid GroundingConfig: {self}")
        if self.dim % self.num_heads:
            raise ValueError(f"GroundingConfig.dim {self.dim} not divisible by num_heads {self.num_heads}")


@dataclass
class DistillationConfig:
    """Stage-1 dual-teacher distillation projections (paper §3.4).

    Attributes:
        dim: common dimension of student and teacher features.
        teacher_geo_dim: geometry teacher width (VGGT's DINOv2-L/14-reg patch tokens: 1024).
        teacher_sem_dim: semantic teacher width (CLIP ViT-L/14-336 pooled feature: 1024 (projection dim 768)).
        seed: seed of the fixed orthogonal teacher projections.
    """

    dim: int = 1024
    teacher_geo_dim: int = 1024
    teacher_sem_dim: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.dim, self.teacher_geo_dim, self.teacher_sem_dim) < 1:
            raise ValueError(f"invalid DistillationConfig: {self}")


@dataclass
class ScaleConfig:
    """Real-scale alignment (paper §3.2): median of per-frame WLS scales over up to ``num_frames`` frames.

    Attributes:
        num_frames: frames sampled per clip for the median.
        fixed_scale: use this scale instead of aligning to the Metric Depth Model (the "no metric depth"
            ablation uses 1.0: geometry stays in the reconstruction branch's normalised units); None = align.
    """

    num_frames: int = 16
    fixed_scale: float | None = None

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"ScaleConfig.num_frames must be >= 1, got {self.num_frames}")
        if self.fixed_scale is not None and not self.fixed_scale > 0:
            raise ValueError(f"ScaleConfig.fixed_scale must be None or > 0, got {self.fixed_scale}")


@dataclass
class LossWeights:
    """Weights and hyper-parameters of :class:`model.losses.MultitaskLoss`; every weight defaults to 0 (off).

    The training stages' weights are training policy, set by the presets of ``pipelines/train/config.py``.

    ``sc`` is λ of ``L_distill = L_geo + L_lang + λ L_sc``; the paper does not give it, we use 1.0 (the Gram
    term is already O(1e-2) because it averages over M² token pairs). ``metric_depth_alpha`` is α of Eq. 9
    (not given either; 0.5 keeps the robust denominator active for |e - b| ~ 1). Camera, depth and point values
    follow VGGT. Every weight defaults to 0 (off); the training stage presets choose them.
    """

    geo: float = 0.0
    lang: float = 0.0
    sc: float = 0.0
    camera: float = 0.0
    depth: float = 0.0
    point: float = 0.0
    metric_depth: float = 0.0
    lm: float = 0.0
    box: float = 0.0
    camera_gamma: float = 0.6
    camera_weight_trans: float = 1.0
    camera_weight_rot: float = 1.0
    camera_weight_fov: float = 0.5
    depth_alpha: float = 0.2
    depth_grad_weight: float = 1.0
    point_alpha: float = 0.2
    point_grad_weight: float = 1.0
    metric_depth_alpha: float = 0.5
    box_l1: float = 5.0
    box_giou: float = 2.0
    box_score: float = 1.0

    def __post_init__(self) -> None:
        bad = {k: v for k, v in dataclasses.asdict(self).items() if v < 0}
        if bad:
            raise ValueError(f"LossWeights must be non-negative, got {bad}")
        if not 0 < self.camera_gamma <= 1:
            raise ValueError(f"camera_gamma must be in (0, 1], got {self.camera_gamma}")


@dataclass
class VidLLMConfig:
    """The whole model: the geometric components (encoder, adapter, reconstruction, metric depth) plus the 3D-VL
    branch, LLM, grounding head and the distillation and scale-alignment settings. Architecture only: what trains
    and the loss weights are training policy (``pipelines/train``)."""

    encoder: EncoderConfig
    adapter: AdapterConfig
    reconstruction: ReconstructionConfig
    metric_depth: MetricDepthConfig
    llm: LLMConfig
    vl: VLBranchConfig = field(default_factory=VLBranchConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    distill: DistillationConfig = field(default_factory=DistillationConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    def __post_init__(self) -> None:
        enc_dim = self.encoder.hidden_size
        for name, dim in (("adapter", self.adapter.dim), ("reconstruction", self.reconstruction.dim),
                          ("metric_depth", self.metric_depth.dim)):
            if dim != enc_dim:
                raise ValueError(f"{name}.dim ({dim}) must equal the encoder hidden_size ({enc_dim})")
        if self.reconstruction.patch_size != self.encoder.patch_size:
            raise ValueError(f"reconstruction.patch_size {self.reconstruction.patch_size} != encoder patch size "
                             f"{self.encoder.patch_size}")

    @property
    def patch_size(self) -> int:
        """Patch side in pixels (frames must be multiples of it)."""
        return self.encoder.patch_size

    @classmethod
    def tiny(cls) -> VidLLMConfig:
        return cls(
            encoder=EncoderConfig.tiny(), adapter=AdapterConfig.tiny(),
            reconstruction=ReconstructionConfig.tiny(), metric_depth=MetricDepthConfig.tiny(),
            llm=LLMConfig.word_level(**_llama_arch(64, 2, 4, 2, 128, max_position_embeddings=512)),
            vl=VLBranchConfig(voxel_size_m=0.2, max_tokens=64, pos_hidden=32),
            grounding=GroundingConfig(dim=32, num_queries=4, num_heads=4, num_layers=1),
            distill=DistillationConfig(dim=32, teacher_geo_dim=48, teacher_sem_dim=40),
            scale=ScaleConfig(num_frames=16),
        )

    @classmethod
    def small(cls) -> VidLLMConfig:
        # SmolLM2-135M shape; 49152 + <scene> + <loc>.
        arch = _llama_arch(576, 30, 9, 3, 1536, vocab_size=49154, rope_theta=100000.0, tie_word_embeddings=True,
                           max_position_embeddings=8192)
        llm = LLMConfig(arch=arch, scene_token_id=49152, loc_token_id=49153, pad_token_id=2, bos_token_id=1,
                        eos_token_id=2)
        return cls(
            encoder=EncoderConfig.small(), adapter=AdapterConfig.small(),
            reconstruction=ReconstructionConfig.small(), metric_depth=MetricDepthConfig.small(), llm=llm,
            vl=VLBranchConfig(pos_hidden=256), grounding=GroundingConfig(dim=256, num_queries=8, num_heads=8),
            distill=DistillationConfig(dim=384),
        )

    @classmethod
    def base(cls) -> VidLLMConfig:
        # Vicuna-7B v1.5 shape (LLaVA-1.5-7B's LM); 32000 + <scene> + <loc>.
        arch = _llama_arch(4096, 32, 32, 32, 11008, vocab_size=32002)
        llm = LLMConfig(arch=arch, scene_token_id=32000, loc_token_id=32001, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2)
        return cls(
            encoder=EncoderConfig.base(), adapter=AdapterConfig.base(),
            reconstruction=ReconstructionConfig.base(), metric_depth=MetricDepthConfig.base(), llm=llm,
            vl=VLBranchConfig(pos_hidden=1024), grounding=GroundingConfig(dim=512, num_queries=8, num_heads=8),
            distill=DistillationConfig(dim=1024),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe nested dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VidLLMConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them.

        Checkpoints written before freezing became training policy carry a ``freezing`` entry (glob patterns per
        stage); it is dropped here, since what trains is now set by the training config.
        """
        if isinstance(data, dict) and "freezing" in data:
            data = {k: v for k, v in data.items() if k != "freezing"}
        return _from_dict(cls, data, "VidLLMConfig")


def _from_dict(cls: type, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(options[0], value, where) if len(options) == 1 else value
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) == len(value):
            return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
        return tuple(value)
    return value
