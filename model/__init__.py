"""Vid-LLM model: pure PyTorch + transformers (no Ray, DeepSpeed, MLflow or storage code here).

Public API: ``VidLLM``, ``VidLLMConfig``, ``VidLLMBatch``, ``VidLLMProcessor``, ``build_tokenizer``,
``register_auto_classes`` (see ``model/vidllm.py`` and ``model/processor.py``).
"""

from model.batch import VidLLMBatch
from model.config import LossWeights, VidLLMConfig
from model.outputs import GroundingOutput, SceneEncoding, VidLLMOutput
from model.processor import VidLLMProcessor
from model.tokenizer import build_tokenizer
from model.vidllm import VidLLM, VidLLMHFConfig, register_auto_classes

__all__ = [
    "GroundingOutput",
    "LossWeights",
    "SceneEncoding",
    "VidLLM",
    "VidLLMBatch",
    "VidLLMConfig",
    "VidLLMHFConfig",
    "VidLLMOutput",
    "VidLLMProcessor",
    "build_tokenizer",
    "register_auto_classes",
]
