"""The local end-to-end demo: synthetic scenes -> shards -> teachers -> DeepSpeed training -> eval -> Ray Serve.

Run ``vidllm demo`` (or ``python -m pipelines.demo``); ``--help`` explains the options. :func:`main` takes the
command-line arguments and returns the exit status.
"""

from pipelines.demo.config import SIZES, DemoConfig, DemoPaths, DemoSizeConfig
from pipelines.demo.run import main

__all__ = ["SIZES", "DemoConfig", "DemoPaths", "DemoSizeConfig", "main"]
