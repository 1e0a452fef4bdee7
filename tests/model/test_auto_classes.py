"""transformers' Auto classes load Vid-LLM checkpoints once registered (explicitly, never at import), and
``from_pretrained`` honours ``dtype``/``torch_dtype`` and ``device_map``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

from model import VidLLM, VidLLMHFConfig, register_auto_classes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkpoint(tiny_model, tmp_path) -> Path:
    tiny_model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module, dtype: torch.dtype) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].to(dtype), sb[k]) for k in sa)


def test_importing_model_registers_nothing_and_register_auto_classes_does(checkpoint):
    """In a fresh interpreter: after ``import model`` the Auto classes do not know ``vidllm``; after
    ``register_auto_classes()`` they load the checkpoint."""
    script = f"""
import model
from transformers import AutoConfig, AutoModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
assert "vidllm" not in CONFIG_MAPPING, "import registered vidllm"
try:
    AutoConfig.from_pretrained({str(checkpoint)!r})
except (ValueError, KeyError) as err:
    print("refused before registration:", type(err).__name__)
else:
    raise SystemExit("AutoConfig loaded a vidllm config without registration")
model.register_auto_classes()
m = AutoModel.from_pretrained({str(checkpoint)!r})
print("loaded", type(m).__name__)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused before registration" in proc.stdout and "loaded VidLLM" in proc.stdout


def test_auto_classes_load_a_checkpoint_with_dtype_and_device_map(tiny_model, checkpoint):
    register_auto_classes()
    register_auto_classes()  # idempotent
    config = AutoConfig.from_pretrained(checkpoint)
    assert isinstance(config, VidLLMHFConfig) and config.architectures == ["VidLLM"]
    loaded = AutoModel.from_pretrained(checkpoint)
    assert isinstance(loaded, VidLLM) and not loaded.training
    assert _same_weights(tiny_model, loaded, torch.float32)
    bf16 = AutoModel.from_pretrained(checkpoint, dtype=torch.bfloat16, device_map="cpu")
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert _same_weights(tiny_model, bf16, torch.bfloat16)
    old_name = AutoModel.from_pretrained(checkpoint, torch_dtype="bfloat16", device_map="auto")
    assert next(old_name.parameters()).dtype == torch.bfloat16
    assert next(old_name.parameters()).device == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_from_pretrained_dtype_auto_follows_the_file(tiny_model, tmp_path):
    tiny_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert next(VidLLM.from_pretrained(tmp_path / "bf16", dtype="auto").parameters()).dtype == torch.bfloat16
    assert next(VidLLM.from_pretrained(tmp_path / "bf16").parameters()).dtype == torch.float32  # default: fp32


def test_from_pretrained_device_map_forms_and_refusals(checkpoint):
    for device_map in ("cpu", torch.device("cpu"), {"": "cpu"}):
        model = VidLLM.from_pretrained(checkpoint, device_map=device_map)
        assert next(model.parameters()).device == torch.device("cpu")
    with pytest.raises(ValueError, match="one device"):
        VidLLM.from_pretrained(checkpoint, device_map={"llm": "cpu", "encoder": "cpu"})
    with pytest.raises(ValueError, match="disagree"):
        VidLLM.from_pretrained(checkpoint, dtype=torch.float16, torch_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="floating torch dtype"):
        VidLLM.from_pretrained(checkpoint, dtype="int8")
    with pytest.raises(TypeError, match="low_cpu_mem_usage"):
        VidLLM.from_pretrained(checkpoint, low_cpu_mem_usage=True)
    VidLLM.from_pretrained(checkpoint.parent, subfolder=checkpoint.name, revision="main", cache_dir="/nowhere")
