"""Outputs are ``transformers.utils.ModelOutput``s: every tensor a module returns is reachable through dicts,
lists and tuples (how DeepSpeed ZeRO-3 finds the tensors to hook per sub-module), and they behave as dataclasses."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import torch
from transformers.utils import ModelOutput

from model import GroundingOutput, SceneEncoding, VidLLMBatch, VidLLMOutput
from model.adapter import AdapterOutput
from model.encoder import EncoderOutput
from model.metric_depth import MetricDepthOutput
from model.outputs import DistillFeatures
from model.reconstruction import ReconstructionOutput
from model.vl_branch import VLBranchOutput

from .conftest import make_batch

BUILTIN_LEAVES = (int, float, bool, str, type(None))


def tensors_seen_as_containers(value) -> list[torch.Tensor]:
    """The tensors a walker that knows only tensors, lists, tuples and string-keyed dicts finds (DeepSpeed ZeRO-3's
    ``apply_to_tensors_only`` and post-forward hook); anything else must be a builtin scalar, or the walker would
    miss what it holds."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in tensors_seen_as_containers(v)]
    if isinstance(value, dict):
        # ZeRO-3's post-forward hook reads a dict output by its string keys (``name.startswith('__')``).
        assert all(isinstance(k, str) for k in value), f"{type(value).__name__} has non-string keys {list(value)}"
        return [t for v in value.values() for t in tensors_seen_as_containers(v)]
    assert isinstance(value, BUILTIN_LEAVES), f"opaque {type(value).__name__} hides its tensors from ZeRO-3"
    return []


def tensors_by_attribute(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if dataclasses.is_dataclass(value):
        return [t for f in dataclasses.fields(value) for t in tensors_by_attribute(getattr(value, f.name))]
    if isinstance(value, list | tuple):
        return [t for v in value for t in tensors_by_attribute(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_by_attribute(v)]
    return []


def test_every_output_type_is_a_model_output():
    for cls in (VidLLMOutput, SceneEncoding, GroundingOutput, DistillFeatures, EncoderOutput, AdapterOutput,
                ReconstructionOutput, MetricDepthOutput, VLBranchOutput, VidLLMBatch):
        assert issubclass(cls, ModelOutput) and dataclasses.is_dataclass(cls), cls.__name__


def test_forward_output_exposes_every_tensor_through_dicts(tiny_model, batch):
    out = tiny_model(batch)
    by_container = {id(t) for t in tensors_seen_as_containers(out)}
    by_attribute = {id(t) for t in tensors_by_attribute(out)}
    assert by_container == by_attribute and len(by_attribute) > 20
    assert out["scene"]["tokens"] is out.scene.tokens and "metric_depth" in out and "lm_logits" in out
    assert tensors_seen_as_containers(batch)  # the input batch too


def test_every_submodule_returns_containers_zero3_can_walk(tiny_model, batch):
    """A forward hook on every module sees what ZeRO-3's hooks see: no module may return an opaque object."""
    seen: dict[str, str] = {}

    def check(name):
        def hook(_module, _inputs, output):
            tensors_seen_as_containers(output)
            seen[name] = type(output).__name__
        return hook

    handles = [m.register_forward_hook(check(n)) for n, m in tiny_model.named_modules() if n]
    try:
        tiny_model(batch)
    finally:
        for h in handles:
            h.remove()
    assert {"encoder", "adapter", "reconstruction", "metric_depth", "vl_branch", "llm", "box_head"} <= set(seen)
    assert seen["encoder"] == "EncoderOutput" and seen["reconstruction"] == "ReconstructionOutput"


def test_a_dict_valued_first_field_is_kept_as_given():
    """ModelOutput's own __post_init__ would unpack a lone dict-valued first field into key/value pairs."""
    adapter = AdapterOutput(geom=torch.zeros(1), lang=torch.ones(1), bridge=torch.zeros(2))
    out = VidLLMOutput(adapter=adapter, grid=(2, 2), image_hw=(28, 28))
    assert out.adapter is adapter and out["adapter"] is adapter and not hasattr(out, "geom")
    assert list(out.keys()) == ["adapter", "grid", "image_hw"]
    distill = DistillFeatures()
    distill.student_geo = torch.ones(1)
    assert list(distill.keys()) == ["student_geo"]


def test_outputs_and_batches_pickle_copy_and_replace(tiny_model, tokenizer):
    tiny_model.eval()
    batch = make_batch(tokenizer, batch_size=1)
    scene = tiny_model.encode_scene(batch.frames)
    for value in (scene, batch):
        restored = pickle.loads(pickle.dumps(value))
        assert type(restored) is type(value) and list(restored.keys()) == list(value.keys())
        assert all(torch.equal(getattr(restored, k), getattr(value, k)) for k in value
                   if isinstance(getattr(value, k), torch.Tensor))
    assert torch.equal(copy.deepcopy(scene).tokens, scene.tokens)
    assert torch.equal(scene.select([0, 0]).tokens[1], scene.tokens[0])
    replaced = dataclasses.replace(batch, frames=batch.frames * 0)
    assert replaced["frames"].abs().sum() == 0 and replaced.labels is batch.labels
