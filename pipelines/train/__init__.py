"""Train stage of the Vid-LLM pipeline: Ray Train V2 + DeepSpeed ZeRO, MLflow tracking, HF-layout export.

Modules: ``config`` (TrainConfig, the stage presets with their freezing and loss weights), ``plan`` (the checks and
plan of ``--dry-run``), ``memory`` (per-GPU estimate), ``trainer`` (the loop as named steps), ``loop`` (the Ray Train
entry point), ``deepspeed_config``, ``data`` (manifest -> per-rank batches), ``checkpointing`` (COMPLETE-marker
protocol), ``tracking`` (MLflow), ``progress`` (per-step line and step log), ``export``, ``launch`` (TorchTrainer,
pyfunc logging and registration), ``synthetic_shards`` (tiny shards for tests/benchmarks).
Run: ``python -m pipelines.train --help``.
"""
