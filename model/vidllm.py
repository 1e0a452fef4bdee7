"""Vid-LLM (arXiv 2509.24385, Figure 2): one video encoder, two synergistic branches, one LLM.

    frames [B,S,3,H,W]
      -> Encoder (DINOv2)                           tokens [B,S,P,C], multi-layer tokens
      -> CrossTaskAdapter (bridge tokens)           T'_geom, T'_lang
      -> ReconstructionBranch(T'_geom)              cameras + relative depth + point map (+ confidences)
      -> MetricDepthModel(encoder layers)           metric depth
      -> scale alignment (median WLS scale)         metric depth + metric camera translation
      -> VLBranch(T'_lang, detached geometry)       scene tokens [B,M,D]
      -> LLM (scene tokens spliced at <scene>)      text; hidden state at <loc> -> BoxHead -> boxes

``VidLLM`` is a transformers ``PreTrainedModel`` whose config (:class:`VidLLMHFConfig`) wraps the
:class:`model.config.VidLLMConfig` tree, so checkpoints are ``config.json`` + ``model.safetensors`` (no pickle).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_model
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from model.adapter import CrossTaskAdapter
from model.batch import VidLLMBatch
from model.config import VidLLMConfig
from model.distillation import DistillationProjections
from model.encoder import Encoder
from model.grounding import BoxHead
from model.llm import build_llm, splice_scene
from model.metric_depth import MetricDepthModel
from model.outputs import GroundingOutput, SceneEncoding, VidLLMOutput
from model.processor import VidLLMProcessor, as_processor
from model.reconstruction import ReconstructionBranch
from model.scale_alignment import apply_scale, scene_scale
from model.tokenizer import LOC_TOKEN, SCENE_TOKEN, caption_prompt, grounding_prompt, qa_prompt
from model.vl_branch import VLBranch

WEIGHTS_NAME = "model.safetensors"
#: transformers' sharded layout: ``{"metadata": {...}, "weight_map": {tensor name: shard file}}``.
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


class VidLLMHFConfig(PretrainedConfig):
    """HF config wrapper: ``vidllm`` holds ``VidLLMConfig.to_dict()`` (architecture only, no weight paths)."""

    model_type = "vidllm"

    def __init__(self, vidllm: dict | None = None, **kwargs) -> None:
        self.vidllm = vidllm if vidllm is not None else VidLLMConfig.tiny().to_dict()
        super().__init__(**kwargs)


def _architecture_only(cfg: VidLLMConfig, llm_arch: dict) -> VidLLMConfig:
    """The config stored with a checkpoint: weight paths cleared (the checkpoint holds all weights) and the LLM
    architecture made explicit, so loading never reads the original pretrained directories."""
    return dataclasses.replace(
        cfg,
        encoder=dataclasses.replace(cfg.encoder, pretrained_path=None),
        reconstruction=dataclasses.replace(cfg.reconstruction, init_checkpoint=None),
        llm=dataclasses.replace(cfg.llm, pretrained_path=None, arch=llm_arch),
    )


class VidLLM(PreTrainedModel):
    """The composed model.

    Args:
        config: a :class:`VidLLMConfig` (sub-models with a ``pretrained_path`` load those local weights) or the
            :class:`VidLLMHFConfig` of a checkpoint (everything built from config; weights come from the file).
    """

    config_class = VidLLMHFConfig
    base_model_prefix = "vidllm"
    main_input_name = "frames"

    def __init__(self, config: VidLLMConfig | VidLLMHFConfig) -> None:
        cfg = config if isinstance(config, VidLLMConfig) else VidLLMConfig.from_dict(config.vidllm)
        llm = build_llm(cfg.llm)
        llm_arch = cfg.llm.arch
        if cfg.llm.pretrained_path is not None:
            llm_arch = {"model_type": llm.config.model_type, **llm.config.to_diff_dict(),
                        "vocab_size": cfg.llm.vocab_size}
            for key in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype",
                        "quantization_config"):
                llm_arch.pop(key, None)
        stored = _architecture_only(cfg, llm_arch)
        super().__init__(VidLLMHFConfig(vidllm=stored.to_dict()))
        self.vidllm_config = stored
        c = self.encoder_dim = cfg.encoder.hidden_size
        d = cfg.llm.hidden_size
        self.encoder = Encoder(cfg.encoder)
        self.adapter = CrossTaskAdapter(cfg.adapter)
        self.reconstruction = ReconstructionBranch(cfg.reconstruction)
        self.metric_depth = MetricDepthModel(cfg.metric_depth)
        self.vl_branch = VLBranch(cfg.vl, in_dim=c, out_dim=d)
        self.llm = llm
        self.box_head = BoxHead(cfg.grounding, dim=d)
        self.distill = DistillationProjections(cfg.distill, student_dim=c)

    def set_activation_checkpointing(self, *, encoder: bool = False, reconstruction: bool = False,
                                     heads: bool = False, llm: bool = False) -> None:
        """Switch activation checkpointing per component: the switched parts store no activations in the forward
        pass and recompute them, block by block, in the backward pass (same values and gradients, less memory,
        about one extra forward of those parts). A run-time setting of this model object, never saved with a
        checkpoint: the training stage sets it for either stage. Active in training mode only.

        Args:
            encoder: each DINOv2 transformer layer (transformers' activation checkpointing).
            reconstruction: each frame and global block of the alternating attention.
            heads: the DPT heads (depth, point map, and the metric-depth decoder with its bin heads), per frame
                chunk of ``frames_chunk_size`` frames.
            llm: each decoder layer of the LLM (transformers' activation checkpointing).
        """
        kwargs = {"use_reentrant": False}  # the non-reentrant variant needs no input that requires grad
        for hf_model, enabled in ((self.encoder.backbone, encoder), (self.llm, llm)):
            if enabled:
                hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                hf_model.activation_checkpointing_disable()
        self.reconstruction.alternating.gradient_checkpointing = reconstruction
        self.reconstruction.gradient_checkpointing = heads
        self.metric_depth.gradient_checkpointing = heads

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Every sub-module initialises itself at construction and checkpoints carry every tensor, so the generic
        HF re-initialisation must not touch anything."""

    # ------------------------------------------------------------------ forward

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        """Random source for frame sampling and the voxel cap: fixed (seed 0) in eval mode so inference is
        deterministic; drawn from the global RNG in training so samples vary but follow ``torch.manual_seed``."""
        if generator is not None:
            return generator
        seed = int(torch.randint(0, 2**62, ())) if self.training else 0
        return torch.Generator().manual_seed(seed)

    def _geometry(self, enc, adapter_out, image_hw, generator):
        rec = self.reconstruction(adapter_out.geom, enc.grid, image_hw)
        md = self.metric_depth(enc.layer_tokens, enc.grid, image_hw)
        cfg = self.vidllm_config.scale
        if cfg.fixed_scale is not None:
            scale = torch.full(rec.depth.shape[:1], cfg.fixed_scale, dtype=torch.float32, device=rec.depth.device)
        else:
            with torch.no_grad():
                scale = scene_scale(rec.depth.detach().float(), md.depth.detach().float(),
                                    rec.depth_conf.detach().float(), cfg.num_frames, generator)
        depth_m, extrinsics_m = apply_scale(rec.depth.detach(), rec.extrinsics.detach(), scale)
        return rec, md, scale, depth_m, extrinsics_m

    def _scene(self, lang, enc, image_hw, rec, scale, depth_m, extrinsics_m, generator) -> SceneEncoding:
        vl = self.vl_branch(lang, enc.grid, image_hw, depth_m, extrinsics_m, rec.intrinsics, generator)
        return SceneEncoding(tokens=vl.tokens, mask=vl.mask, centres=vl.centres, depth=depth_m,
                             extrinsics=extrinsics_m, intrinsics=rec.intrinsics.detach(), scale=scale)

    def forward(self, batch: VidLLMBatch, reconstruct: bool | None = None,
                generator: torch.Generator | None = None) -> VidLLMOutput:
        """Run the branches the batch needs.

        Args:
            batch: :class:`VidLLMBatch`.
            reconstruct: run reconstruction + metric depth + scale alignment; ``None`` = when the batch has
                geometric targets (depth/extrinsics) or text (the 3D-VL branch needs geometry). A Stage-1 batch
                with only teacher targets therefore skips them.
            generator: random source for scale-alignment frame sampling and the voxel cap.

        Returns:
            :class:`VidLLMOutput`. The LLM and the box head run when ``input_ids`` are given.
        """
        generator = self._generator(generator)
        frames = batch.frames
        image_hw = (frames.shape[-2], frames.shape[-1])
        enc = self.encoder(frames)
        ad = self.adapter(enc.tokens)
        out = VidLLMOutput(adapter=ad, grid=enc.grid, image_hw=image_hw)
        if batch.teacher_geo is not None or batch.teacher_sem is not None:
            out.distill = self.distill(ad.geom, ad.lang, enc.grid, batch.teacher_geo, batch.teacher_sem,
                                       batch.teacher_grid)
        if reconstruct is None:
            reconstruct = batch.input_ids is not None or batch.depth is not None or batch.extrinsics is not None
        if batch.input_ids is not None and not reconstruct:
            raise ValueError("the 3D-VL branch needs reconstructed geometry: reconstruct=False with input_ids")
        if not reconstruct:
            return out
        rec, md, scale, depth_m, extrinsics_m = self._geometry(enc, ad, image_hw, generator)
        out.reconstruction, out.metric_depth = rec, md
        out.scene = self._scene(ad.lang, enc, image_hw, rec, scale, depth_m, extrinsics_m, generator)
        if batch.input_ids is None:
            return out
        cfg = self.vidllm_config.llm
        spliced = splice_scene(self.llm.get_input_embeddings(), batch.input_ids, batch.attention_mask,
                               batch.labels, out.scene.tokens, out.scene.mask, cfg.scene_token_id)
        lm_out = self.llm(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                          output_hidden_states=True, use_cache=False)
        out.lm_logits, out.lm_labels = lm_out.logits, spliced.labels
        is_loc = (batch.input_ids == cfg.loc_token_id) & (spliced.positions >= 0)
        out.has_loc = is_loc.any(dim=1)
        # The box head runs for every text batch (rows without <loc> get a zero query and are masked out of the
        # box loss), so every data-parallel rank produces gradients for the same parameters whatever its task mix.
        idx = torch.arange(is_loc.shape[1], device=is_loc.device).expand_as(is_loc)
        last = torch.where(is_loc, idx, torch.full_like(idx, -1)).max(dim=1).values  # the last <loc> of each row
        pos = spliced.positions.gather(1, last.clamp(min=0)[:, None]).squeeze(1).clamp(min=0)
        hidden = lm_out.hidden_states[-1][torch.arange(pos.shape[0], device=pos.device), pos]
        hidden = torch.where(out.has_loc[:, None], hidden, torch.zeros_like(hidden))
        out.grounding = self.box_head(hidden, out.scene.tokens, out.scene.mask, out.scene.centres)
        return out

    # ------------------------------------------------------------------ inference API

    @torch.no_grad()
    def encode_scene(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> SceneEncoding:
        """Encode a clip for the LLM (what the serving cache keeps).

        Args:
            frames: ``[B, S, 3, H, W]`` float in [0, 1].

        Returns:
            :class:`SceneEncoding` (scene tokens, voxel centres in metres, metric depth/cameras, scale).
        """
        generator = self._generator(generator)
        image_hw = (frames.shape[-2], frames.shape[-1])
        enc = self.encoder(frames)
        ad = self.adapter(enc.tokens)
        rec, _, scale, depth_m, extrinsics_m = self._geometry(enc, ad, image_hw, generator)
        return self._scene(ad.lang, enc, image_hw, rec, scale, depth_m, extrinsics_m, generator)

    def _prompt_inputs(self, scene: SceneEncoding, prompts: list[str], processor: VidLLMProcessor,
                       answer_prefix: str = ""):
        if scene.tokens.shape[0] == 1 and len(prompts) > 1:
            scene = scene.select([0] * len(prompts))
        if scene.tokens.shape[0] != len(prompts):
            raise ValueError(f"{len(prompts)} prompts for {scene.tokens.shape[0]} scenes")
        device = scene.tokens.device
        enc = processor.generation_inputs(list(prompts), answer_prefix)
        spliced = splice_scene(self.llm.get_input_embeddings(), enc["input_ids"].to(device),
                               enc["attention_mask"].to(device), None, scene.tokens, scene.mask,
                               self.vidllm_config.llm.scene_token_id, padding_side="left")
        return scene, spliced

    def _generate(self, spliced, processor: VidLLMProcessor, max_new_tokens: int) -> list[str]:
        cfg = self.vidllm_config.llm
        ids = self.llm.generate(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                                do_sample=False, num_beams=1, pad_token_id=cfg.pad_token_id,
                                eos_token_id=cfg.eos_token_id,
                                **processor.generation_constraints(cfg.eos_token_id, max_new_tokens))
        return processor.decode(ids)

    @torch.no_grad()
    def answer(self, scene: SceneEncoding, prompts: list[str],
               processor: VidLLMProcessor | PreTrainedTokenizerBase, max_new_tokens: int = 16) -> list[str]:
        """Greedy answers to questions about the scenes (QA; SQA3D situations go in the question text).

        Args:
            scene: :class:`SceneEncoding` with B items (or 1, shared by all prompts).
            prompts: B questions; a prompt without ``<scene>`` is wrapped with :func:`model.tokenizer.qa_prompt`.
            processor: a :class:`model.processor.VidLLMProcessor`, or the bare tokenizer (wrapped in the processor
                this model's config describes).
        """
        processor = as_processor(processor, self.vidllm_config)
        prompts = [p if SCENE_TOKEN in p else qa_prompt(p) for p in prompts]
        _, spliced = self._prompt_inputs(scene, prompts, processor)
        return self._generate(spliced, processor, max_new_tokens)

    @torch.no_grad()
    def caption(self, scene: SceneEncoding, boxes: torch.Tensor,
                processor: VidLLMProcessor | PreTrainedTokenizerBase, max_new_tokens: int = 24) -> list[str]:
        """Dense captioning of one box per item: ``boxes`` ``[B, 6]`` centre+size, metres, first-camera frame;
        ``processor`` as in :meth:`answer`."""
        processor = as_processor(processor, self.vidllm_config)
        prompts = [caption_prompt(box.tolist()) for box in boxes]
        _, spliced = self._prompt_inputs(scene, prompts, processor)
        return self._generate(spliced, processor, max_new_tokens)

    @torch.no_grad()
    def ground(self, scene: SceneEncoding, descriptions: list[str],
               processor: VidLLMProcessor | PreTrainedTokenizerBase, max_new_tokens: int = 40) -> GroundingOutput:
        """Visual grounding: the answer starts with ``<loc>``, whose hidden state drives the box head; the model
        then verbalises the coordinates. ``processor`` as in :meth:`answer`.

        Returns:
            :class:`GroundingOutput`: boxes ``[B, Q, 6]`` and probabilities ``[B, Q]`` sorted by score, and the
            decoded text (``"[cx, cy, cz, dx, dy, dz]"`` when the model has learnt the format).
        """
        processor = as_processor(processor, self.vidllm_config)
        prompts = [grounding_prompt(d) for d in descriptions]
        scene, spliced = self._prompt_inputs(scene, prompts, processor, answer_prefix=LOC_TOKEN)
        hidden = self.llm(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                          output_hidden_states=True, use_cache=False).hidden_states[-1][:, -1]
        pred = self.box_head(hidden, scene.tokens, scene.mask, scene.centres)
        scores, order = pred.scores.sigmoid().sort(dim=1, descending=True)
        boxes = pred.boxes.gather(1, order[..., None].expand_as(pred.boxes))
        return GroundingOutput(boxes=boxes, scores=scores, text=self._generate(spliced, processor, max_new_tokens))

    # ------------------------------------------------------------------ checkpoints

    def save_pretrained(self, save_directory: str | Path, **_: object) -> None:
        """Write ``config.json`` and ``model.safetensors`` (shared tensors stored once; no pickle).

        The generic HF writer/loader is not used because its loader materialises the model on the meta device and
        leaves non-persistent buffers of custom sub-modules (pixel normalisation, RoPE tables) as uninitialised
        memory; this pair round-trips bit-identically.
        """
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(path)
        save_model(self, str(path / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *model_args,
                        config: VidLLMHFConfig | None = None, dtype: torch.dtype | str | None = None,
                        torch_dtype: torch.dtype | str | None = None,
                        device_map: str | int | torch.device | dict | None = None,
                        device: str | torch.device | None = None, **kwargs) -> VidLLM:
        """Load a checkpoint written by :meth:`save_pretrained` from a local directory (strict: every tensor must
        be present and no extra one), in eval mode. The weights are ``model.safetensors`` or shards listed by
        ``model.safetensors.index.json`` (transformers' sharded layout, as the training export writes them). ``transformers.AutoModel.from_pretrained`` lands here once
        :func:`register_auto_classes` has run.

        Args:
            pretrained_model_name_or_path: local checkpoint directory (``subfolder=`` appends a sub-directory).
            config: the checkpoint's :class:`VidLLMHFConfig` when already loaded (``AutoModel`` passes it);
                default: read ``config.json``.
            dtype: dtype of the loaded weights: a ``torch.dtype`` or its name (``"bfloat16"``), ``"auto"`` (the
                dtype stored in the file), or ``None`` (fp32). Geometry is computed in fp32 whatever this is
                (:mod:`model.precision`). ``torch_dtype`` is the older name of the same argument.
            device_map: where the whole model goes: a device (``"cpu"``, ``"cuda:1"``, an index, a
                ``torch.device``), ``"auto"`` (the first CUDA device if there is one, else the CPU) or
                ``{"": device}``. A map that splits the model over devices is refused.
            device: older spelling of a single-device ``device_map``.
            kwargs: the hub arguments ``AutoModel`` forwards (``cache_dir``, ``revision``, ``token``, ...), which
                have no meaning for a local directory, are accepted and ignored; anything else is an error.

        Raises:
            FileNotFoundError: the directory lacks ``config.json``, or both ``model.safetensors`` and the index, or
                a shard the index names.
            TypeError: an unknown keyword argument or positional model argument.
            ValueError: conflicting ``dtype``/``torch_dtype`` or ``device``/``device_map``, a multi-device map,
                an unknown dtype, or a config that is not Vid-LLM's.
        """
        subfolder = kwargs.pop("subfolder", None) or ""
        unknown = sorted(set(kwargs) - _IGNORED_LOAD_KWARGS)
        if unknown or model_args:
            raise TypeError(f"VidLLM.from_pretrained got unexpected arguments {unknown or list(model_args)}")
        path = Path(pretrained_model_name_or_path) / subfolder
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"Vid-LLM checkpoint {path} has no config.json")
        weight_files = _weight_files(path)
        if config is None:
            data = json.loads((path / "config.json").read_text())
            if "vidllm" not in data:
                raise ValueError(f"{path / 'config.json'} is not a Vid-LLM config (no 'vidllm' key)")
            vidllm = data["vidllm"]
        elif isinstance(config, VidLLMHFConfig):
            vidllm = config.vidllm
        else:
            raise ValueError(f"VidLLM.from_pretrained: config must be a VidLLMHFConfig, got {type(config).__name__}")
        target_dtype = _resolve_dtype(dtype, torch_dtype, weight_files[0])
        target_device = _resolve_device(device_map, device)
        model = cls(VidLLMConfig.from_dict(vidllm))
        _load_weights(model, weight_files)
        model.to(device=target_device, dtype=target_dtype)
        model.eval()
        return model


# Arguments transformers' AutoModel forwards to from_pretrained that mean nothing for a local Vid-LLM directory.
_IGNORED_LOAD_KWARGS = frozenset({
    "cache_dir", "force_download", "local_files_only", "proxies", "revision", "token", "trust_remote_code",
    "_from_auto", "adapter_kwargs", "code_revision",
})


def _weight_files(path: Path) -> list[Path]:
    """The weight files of checkpoint ``path``: ``model.safetensors``, or the shards its index lists, in order."""
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    index = path / WEIGHTS_INDEX_NAME
    if not index.is_file():
        raise FileNotFoundError(f"Vid-LLM checkpoint {path} has no {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}")
    files = [path / name for name in dict.fromkeys(json.loads(index.read_text())["weight_map"].values())]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"Vid-LLM checkpoint {path}: {WEIGHTS_INDEX_NAME} names {file.name}, absent")
    return files


def _load_weights(model: torch.nn.Module, files: list[Path]) -> None:
    """Load ``files`` into ``model`` one at a time (strict over all of them). A tied tensor may be stored under
    one of its names only (as ``safetensors.torch.save_model`` and the training export do)."""
    expected = model.state_dict()
    loaded: set[str] = set()
    for file in files:
        part = load_file(str(file))
        unexpected = sorted(set(part) - set(expected))
        if unexpected:
            raise ValueError(f"{file}: unexpected tensors {unexpected}")
        model.load_state_dict(part, strict=False)
        loaded |= set(part)
    storages = {expected[n].untyped_storage().data_ptr() for n in loaded}
    missing = sorted(n for n in expected if n not in loaded and expected[n].untyped_storage().data_ptr() not in storages)
    if missing:
        raise ValueError(f"{files[0].parent}: missing tensors {missing}")


def _resolve_dtype(dtype: torch.dtype | str | None, torch_dtype: torch.dtype | str | None,
                   weights: Path) -> torch.dtype:
    """The dtype to load in (see :meth:`VidLLM.from_pretrained`)."""
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"VidLLM.from_pretrained: dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree")
    value = dtype if dtype is not None else torch_dtype
    if value is None:
        return torch.float32
    if value == "auto":
        with safe_open(str(weights), framework="pt") as f:
            counts = Counter(f.get_slice(k).get_dtype() for k in f.keys())  # noqa: SIM118 (not a dict)
        floating = [d for d, _ in counts.most_common() if d in _SAFETENSORS_FLOAT]
        return _SAFETENSORS_FLOAT[floating[0]] if floating else torch.float32
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"VidLLM.from_pretrained: dtype must be a floating torch dtype, its name or 'auto'; "
                         f"got {dtype if dtype is not None else torch_dtype!r}")
    return value


_SAFETENSORS_FLOAT = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _resolve_device(device_map: str | int | torch.device | dict | None,
                    device: str | torch.device | None) -> torch.device:
    """The single device the whole model goes to (see :meth:`VidLLM.from_pretrained`)."""
    if isinstance(device_map, dict):
        places = set(device_map.values())
        if set(device_map) != {""} or len(places) != 1:
            raise ValueError(f"VidLLM.from_pretrained puts the whole model on one device; device_map {device_map} "
                             "splits it (use a single device, 'auto' or {'': device})")
        device_map = places.pop()
    if device_map == "auto":
        device_map = "cuda" if torch.cuda.is_available() else "cpu"
    if device_map is not None and device is not None and torch.device(device_map) != torch.device(device):
        raise ValueError(f"VidLLM.from_pretrained: device={device!r} and device_map={device_map!r} disagree")
    chosen = device_map if device_map is not None else device if device is not None else "cpu"
    return torch.device(f"cuda:{chosen}" if isinstance(chosen, int) else chosen)


def register_auto_classes() -> None:
    """Register Vid-LLM with transformers' Auto classes, so that ``AutoConfig.from_pretrained(dir)`` and
    ``AutoModel.from_pretrained(dir)`` load our checkpoints (``model_type`` ``"vidllm"``).

    Explicit rather than done at import: importing ``model`` changes no global registry (house rule). Idempotent;
    call it once before using the Auto classes on a Vid-LLM checkpoint.
    """
    AutoConfig.register(VidLLMHFConfig.model_type, VidLLMHFConfig, exist_ok=True)
    AutoModel.register(VidLLMHFConfig, VidLLM, exist_ok=True)
