"""Teachers stage of the Vid-LLM pipeline."""
