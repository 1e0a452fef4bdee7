"""ScanQA / SQA3D exact match and the SQA3D answer normalisation."""

from __future__ import annotations

import pytest

from pipelines.eval.metrics.qa import (
    answer_match,
    clean_answer,
    exact_match_scores,
    sqa3d_question_type,
    strip_prediction,
)


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("The TV.", "TV"),  # lower-case, punctuation dropped, "tv" -> "TV", article before a word removed
        ("  2 chairs  ", "two chairs"),
        ("None", "zero"),
        ("0", "zero"),
        ("20", "twenty"),
        ("23", "twenty-three"),
        ("21", "21"),  # no rule for 21
        ("turn letf", "turn left"),
        ("let", "left"),
        ("rigth   behine", "right behind"),
        ("a table", "table"),
        ("an apple", "apple"),
        ("mat2", "mat"),
        ("5 o' clock", "five o'clock"),
        ("oclock", "o'clock"),
        ("walk backwards!", "walk backward"),
        ("chai", "chair"),
        ("façade", "façade".replace("ç", "")),  # non-ASCII is dropped before the ç -> c rule can see it
        ("yes, it's blue", "yes, it's blue"),
        ("Is it?", "is it"),
    ],
)
def test_clean_answer(raw, cleaned):
    assert clean_answer(raw) == cleaned


def test_clean_answer_is_idempotent_on_cleaned_text():
    for text in ["two chairs", "TV", "left", "o'clock"]:
        assert clean_answer(clean_answer(text)) == clean_answer(text)


def test_strip_prediction():
    assert strip_prediction(" chair. ") == "chair"
    assert strip_prediction("chair..") == "chair"
    assert strip_prediction("Chair") == "Chair"  # case is kept: ScanQA EM is case-sensitive


def test_answer_match():
    assert answer_match("chair", ["table", "chair"]) == (True, True)
    assert answer_match("brown chair", ["chair"]) == (False, True)  # GT inside prediction
    assert answer_match("chair", ["brown chair"]) == (False, True)  # prediction inside GT
    assert answer_match("brownchair", ["brown chair"]) == (False, True)  # whitespace ignored
    assert answer_match("Chair", ["chair"]) == (False, False)  # case-sensitive
    assert answer_match("table", ["chair"]) == (False, False)
    assert answer_match("", ["chair"]) == (
        False,
        False,
    )  # empty never matches (it is a substring of anything)
    assert answer_match("   ", ["chair"]) == (False, False)


def test_scanqa_em_case_and_trailing_period():
    preds = ["chair.", "Chair", "brown chair", "", "on the left"]
    answers = [["chair"], ["chair"], ["chair"], ["chair"], ["on left", "on the left"]]
    out = exact_match_scores(preds, answers, normalize=False)
    assert out["count"] == 5
    assert out["em"] == pytest.approx(100.0 * 2 / 5)
    assert out["em_refined"] == pytest.approx(100.0 * 3 / 5)
    # LLaVA-3D variant: normalisation makes "Chair" exact too
    assert exact_match_scores(preds, answers, normalize=True)["em"] == pytest.approx(100.0 * 3 / 5)


def test_sqa3d_em_with_groups():
    preds = ["2", "The TV.", "left", "no"]
    answers = [["two"], ["tv"], ["right"], ["no"]]
    groups = ["how", "what", "which", "is"]
    out = exact_match_scores(preds, answers, normalize=True, groups=groups)
    assert out["em"] == 75.0 and out["em_refined"] == 75.0
    assert out["by_group"]["which"] == {"em": 0.0, "em_refined": 0.0, "count": 1}
    assert out["by_group"]["how"]["em"] == 100.0
    with pytest.raises(ValueError, match="predictions for"):
        exact_match_scores(["a"], [["a"], ["b"]], normalize=True)


@pytest.mark.parametrize(
    ("question", "qtype"),
    [("What is on the table?", "what"), ("Is the door open?", "is"), ("how many chairs?", "how"),
     ("Can I sit?", "can"), ("Which way?", "which"), ("Where is it?", "other")],
)  # fmt: skip
def test_sqa3d_question_type(question, qtype):
    assert sqa3d_question_type(question) == qtype
