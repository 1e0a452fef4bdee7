"""Benchmark metrics as pure functions: boxes/IoU, QA exact match, captions, grounding, Scan2Cap, reconstruction."""
