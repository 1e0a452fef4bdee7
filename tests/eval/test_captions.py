"""Caption metrics checked against the pycocoevalcap scorer classes run directly, and the two tokenizers."""

from __future__ import annotations

import contextlib
import io

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from pipelines.eval.metrics.captions import CaptionScorer, ptb_tokenize, whitespace_tokenize

REFS = {
    "q1": ["the brown chair next to the table", "a wooden chair"],
    "q2": ["a white sink in the corner", "the sink"],
    "q3": ["two black monitors on the desk"],
    "q4": ["the door is on the left of the bed", "a closed door"],
}
HYPS = {
    "q1": "the brown chair near the table",
    "q2": "the white sink",
    "q3": "a black monitor on a desk",
    "q4": "a bed",
}


def _direct(gts: dict[str, list[str]], res: dict[str, list[str]], meteor: Meteor | None) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    out = {
        **{f"bleu{i + 1}": b for i, b in enumerate(bleu)},
        "rouge_l": Rouge().compute_score(gts, res)[0],
        "cider": float(Cider().compute_score(gts, res)[0]),
    }
    if meteor is not None:
        out["meteor"] = meteor.compute_score(gts, res)[0]
    return out


def test_whitespace_scores_equal_direct_scorers(whitespace_scorer):
    ours = whitespace_scorer.score(REFS, HYPS)
    direct = _direct({k: list(v) for k, v in REFS.items()}, {k: [v] for k, v in HYPS.items()}, None)
    assert set(ours) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"}
    for name, value in direct.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert 0.0 < ours["bleu4"] < ours["bleu1"] < 1.0
    assert 0.0 < ours["cider"] < 10.0


def test_ptb_tokenizer_matches_pycocoevalcap_class():
    captions = [
        "The chair, left of the TV.",
        'It is a "brown" table!',
        "",
        "sos eos",
        "Mr. Smith's desk -- old",
    ]
    coco = PTBTokenizer().tokenize({str(i): [{"caption": c}] for i, c in enumerate(captions) if c})
    ours = ptb_tokenize(captions)
    assert ours[2] == ""
    for i, c in enumerate(captions):
        if c:
            assert ours[i] == coco[str(i)][0]
    assert ours[0] == "the chair left of the tv"


@pytest.mark.slow
def test_ptb_scores_with_meteor_equal_direct_scorers(meteor_scorer):
    ours = meteor_scorer.score(REFS, {k: v.upper() + "." for k, v in HYPS.items()})
    coco_refs = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    coco_hyps = PTBTokenizer().tokenize({k: [{"caption": v.upper() + "."}] for k, v in HYPS.items()})
    direct = _direct(coco_refs, coco_hyps, meteor_scorer.meteor())
    assert set(ours) == set(direct)
    for name, value in direct.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    # PTB lower-cases and drops the period, so the upper-cased hypotheses score like the originals
    assert ours["cider"] == pytest.approx(meteor_scorer.score(REFS, HYPS)["cider"])
    assert 0.0 < ours["meteor"] < 1.0


def test_tokenizer_choice_changes_scores(ptb_scorer, whitespace_scorer):
    hyps = {k: v.capitalize() + "." for k, v in HYPS.items()}
    assert whitespace_scorer.score(REFS, hyps)["bleu1"] < ptb_scorer.score(REFS, hyps)["bleu1"]
    assert whitespace_tokenize(["  A  b\nc "]) == ["A b c"]


@pytest.mark.slow
def test_identical_captions_reach_the_ceiling(meteor_scorer):
    refs = {"a": ["sos the brown wooden chair eos"], "b": ["sos a white sink in the corner eos"]}
    scores = meteor_scorer.score(refs, {k: v[0] for k, v in refs.items()})
    assert scores["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["rouge_l"] == pytest.approx(1.0)
    assert scores["meteor"] == pytest.approx(1.0)


def test_score_validation(whitespace_scorer):
    with pytest.raises(ValueError, match="differ in keys"):
        whitespace_scorer.score({"a": ["x"]}, {"b": "x"})
    with pytest.raises(ValueError, match="at least one reference"):
        whitespace_scorer.score({"a": []}, {"a": "x"})
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        CaptionScorer("nltk")
    empty = whitespace_scorer.score({}, {})
    assert set(empty.values()) == {0.0}
