"""Eval stage of the Vid-LLM pipeline.

* :mod:`pipelines.eval.metrics`: the benchmark metrics as pure functions, computed as the reference evaluators do.
* :mod:`pipelines.eval.alignment`: first-camera frame <-> ScanNet axis-aligned frame for boxes.
* :mod:`pipelines.eval.predictions`: the JSON-lines prediction-file format and its typed loader.
* :mod:`pipelines.eval.external`: other systems' prediction files (ScanQA, SQA3D, ScanRefer, Scan2Cap corpus).
* :mod:`pipelines.eval.proposals`: instance proposal files (ours, Video-3D LLM, Chat-Scene, ScanNet/Mask3D, LEO).
* :mod:`pipelines.eval.groundtruth`: the ground-truth records the harness scores against.
* :mod:`pipelines.eval.harness`: ``evaluate(predictions, ground_truth, tasks, config)`` -> nested metric dict.
* :mod:`pipelines.eval.report`: flat metrics, Markdown summary and plots of a result.
* :mod:`pipelines.eval.config`: ``EvalJobConfig``, the evaluation job's typed config.
* :mod:`pipelines.artifacts` (shared): ``--model`` (local, ``s3://``, ``models:/``) -> local checkpoint + model identity.
* :mod:`pipelines.eval.job`: Ray Data batch inference (decode tasks + ``ClipPredictor`` model actors).
* :mod:`pipelines.eval.run`: ``run_evaluation`` end to end (predictions, harness, report, MLflow), and
  ``score_predictions`` for an existing prediction file (no model).
* :mod:`pipelines.eval.plots`: depth-error histogram, headline chart, example predictions.
* :mod:`pipelines.eval.tracking`: the MLflow run linked to the evaluated model.

Protocols, formats and the metrics structure: ``docs/evaluation.md``. CLI: ``python -m pipelines.eval --help``.
"""
