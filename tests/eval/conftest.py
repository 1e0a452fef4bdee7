"""Fixtures of the evaluation tests.

METEOR runs a Java process that loads a 60 MB paraphrase table (6 s on an idle machine, far more on a busy one), so
the session starts it once (``meteor_scorer``) and only ``slow`` tests use it; the fast tests score without METEOR.
"""

from __future__ import annotations

import pytest

from pipelines.eval.metrics.captions import CaptionScorer


@pytest.fixture(scope="session")
def ptb_scorer():
    """PTB tokenisation, no METEOR."""
    with CaptionScorer("ptb", meteor=False) as scorer:
        yield scorer


@pytest.fixture(scope="session")
def whitespace_scorer():
    """No tokenizer (Video-3D LLM), no METEOR."""
    with CaptionScorer("whitespace", meteor=False) as scorer:
        yield scorer


@pytest.fixture(scope="session")
def meteor_scorer():
    """PTB tokenisation with METEOR: one Java process for the session."""
    with CaptionScorer("ptb", meteor=True) as scorer:
        yield scorer
