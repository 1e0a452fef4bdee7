"""Vid-LLM pipelines: ingest, teachers, training, evaluation and serving on Ray."""
