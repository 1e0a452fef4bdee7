"""Ingest stage of the Vid-LLM pipeline."""
