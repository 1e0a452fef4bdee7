"""Train stage of the Vid-LLM pipeline: Ray Train V2 + DeepSpeed ZeRO, MLflow tracking, HF-layout export.

Modules: ``config`` (TrainConfig + presets), ``deepspeed_config``, ``data`` (manifest -> per-rank batches),
``loop`` (per-worker loop), ``checkpointing`` (COMPLETE-marker protocol), ``tracking`` (MLflow), ``export``,
``launch`` (TorchTrainer + registration), ``synthetic_shards`` (tiny shards for tests/benchmarks).
Run: ``python -m pipelines.train --help``.
"""
