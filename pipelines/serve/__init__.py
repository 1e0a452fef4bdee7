"""Serve stage of the Vid-LLM pipeline."""
