"""Question-answering exact-match metrics for ScanQA and SQA3D, as the peer evaluators compute them.

**ScanQA EM@1** (Video-3D LLM ``llava/eval/eval_scanqa.py``): the prediction, with surrounding whitespace and a
trailing ``"."`` removed, must equal one of the ground-truth answers *exactly*: case-sensitive, inner whitespace
untouched. ScanQA answers are lower-case, so a capitalised prediction is wrong, as in the reference. The LLaVA-3D /
Chat-Scene variant first applies the SQA3D :func:`clean_answer` to prediction and answers; that is
``normalize=True`` (off by default).

**Refined EM** (LEO ``evaluator/scanqa_eval.py`` ``answer_match``, reused by Chat-Scene/LLaVA-3D): with all
whitespace removed, the prediction is a substring of a ground-truth answer or a ground-truth answer is a substring of
the prediction. The references differ on an empty prediction (``"" in gt`` is always true); we follow the variant
that guards it: an empty prediction never matches.

**SQA3D EM** (``llava/eval/eval_sqa3d.py``, from LEO ``data/data_utils.py``): :func:`clean_answer` on prediction
and answer, then exact match; refined EM as above on the cleaned strings. :func:`clean_answer` implements, in order:

1. lower-case; strip leading/trailing spaces; collapse runs of spaces; ``". " * n`` -> ``". "``;
2. drop every character outside ``[a-zA-Z0-9,'\\s\\-:]`` (so ``.?!"()`` go), then ``ç`` -> ``c``, ``’`` -> ``'``;
3. typo fixes (whole words): letf/let -> left, tehre -> there, rigth/rght -> right, behine -> behind, tv -> TV,
   chai -> chair, wasing -> washing, waslked -> walked, oclock / "o' clock" -> o'clock;
4. numbers to words (whole words): 0 and none -> zero, 1..20 -> one..twenty, 23 -> twenty-three;
5. a word with one trailing digit loses it (``mat2`` -> ``mat``); the articles a/an/the before a word are removed;
   backwards -> backward.

**Question families** (per-family EM, e.g. for a learning benchmark whose families must each beat the answer prior):
an annotation's own ``family`` field wins, else a ``question_type`` other than ``"N/A"``; without either,
:func:`question_family` applies a template rule to the question text (first match, lower-cased):

=====================  ===================================================================================
``counting``           starts with "how many"
``colour``             "what color" / "what colour" / "what is the color|colour"
``existence``          starts with "is there" / "are there"
``size``               "bigger", "smaller", "larger", "taller", "shorter", "biggest", "smallest", "largest"
``relative_position``  "next to", "left", "right", "behind", "in front", "above", "below", "under", "near",
                       "beside", "between", "closest", "nearest", "on top"
``other``              anything else
=====================  ===================================================================================
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMBER_WORDS = {
    "0": "zero", "none": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
    "7": "seven", "8": "eight", "9": "nine", "10": "ten", "11": "eleven", "12": "twelve", "13": "thirteen",
    "14": "fourteen", "15": "fifteen", "16": "sixteen", "17": "seventeen", "18": "eighteen", "19": "nineteen",
    "20": "twenty", "23": "twenty-three",
}  # fmt: skip

# Whole-word rewrites of the SQA3D normaliser, applied in this order (order matters: "let" must not eat "letf").
_TYPO_FIXES: tuple[tuple[str, str], ...] = (
    (r"\bletf\b", "left"),
    (r"\blet\b", "left"),
    (r"\btehre\b", "there"),
    (r"\brigth\b", "right"),
    (r"\brght\b", "right"),
    (r"\bbehine\b", "behind"),
    (r"\btv\b", "TV"),
    (r"\bchai\b", "chair"),
    (r"\bwasing\b", "washing"),
    (r"\bwaslked\b", "walked"),
    (r"\boclock\b", "o'clock"),
    (r"\bo'[ ]+clock\b", "o'clock"),
)
_NUMBER_FIXES = tuple((rf"\b{re.escape(k)}\b", v) for k, v in _NUMBER_WORDS.items())
_TAIL_FIXES: tuple[tuple[str, str], ...] = (
    (r"\b([a-zA-Z]+)([0-9])\b", r"\g<1>"),
    (r"\ba\b ([a-zA-Z]+)", r"\g<1>"),
    (r"\ban\b ([a-zA-Z]+)", r"\g<1>"),
    (r"\bthe\b ([a-zA-Z]+)", r"\g<1>"),
    (r"\bbackwards\b", "backward"),
)
_RULES = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"[ ]+$", ""),
        (r"^[ ]+", ""),
        (r" {2,}", " "),
        (r"\.[ ]{2,}", ". "),
        (r"[^a-zA-Z0-9,'\s\-:]+", ""),
        ("ç", "c"),
        ("’", "'"),
        *_TYPO_FIXES,
        *_NUMBER_FIXES,
        *_TAIL_FIXES,
    )
)

SQA3D_QUESTION_TYPES: tuple[str, ...] = ("what", "is", "how", "can", "which", "other")
QUESTION_FAMILIES: tuple[str, ...] = ("counting", "colour", "existence", "size", "relative_position", "other")
_FAMILY_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("counting", re.compile(r"^how many\b")),
    ("colour", re.compile(r"\bwhat (is the )?colou?r\b")),
    ("existence", re.compile(r"^(is|are) there\b")),
    ("size", re.compile(r"\b(bigger|smaller|larger|taller|shorter|biggest|smallest|largest)\b")),
    ("relative_position", re.compile(
        r"\b(next to|left|right|behind|in front|above|below|under|near|beside|between|closest|nearest|on top)\b")),
)


def clean_answer(text: str) -> str:
    """The SQA3D answer normalisation (see the module docstring for the exact rule list)."""
    out = text.lower()
    for pattern, repl in _RULES:
        out = pattern.sub(repl, out)
    return out


def strip_prediction(text: str) -> str:
    """ScanQA prediction post-processing: surrounding whitespace, then one or more trailing ``"."``, removed."""
    return text.strip().rstrip(".")


def _squash(text: str) -> str:
    return "".join(text.split())


def answer_match(pred: str, answers: Sequence[str]) -> tuple[bool, bool]:
    """Exact and refined match of one prediction against its ground-truth answers.

    Args:
        pred: the (already post-processed) prediction.
        answers: the ground-truth answers (already post-processed the same way).

    Returns:
        ``(exact, refined)``: ``exact`` when ``pred`` equals an answer; ``refined`` when exact, or when the
        whitespace-free prediction is a substring of a whitespace-free answer or vice versa. Empty predictions
        and empty answers never match.
    """
    if not pred or not _squash(pred):
        return False, False
    if pred in answers:
        return True, True
    p = _squash(pred)
    for answer in answers:
        a = _squash(answer)
        if a and (p in a or a in p):
            return False, True
    return False, False


def sqa3d_question_type(question: str) -> str:
    """SQA3D question type from the question's first word: what / is / how / can / which / other."""
    q = question.lstrip().lower()
    for qtype in SQA3D_QUESTION_TYPES[:-1]:
        if q.startswith(qtype):
            return qtype
    return "other"


def question_family(question: str) -> str:
    """The template family of a question (see the module docstring); ``"other"`` when no rule matches."""
    q = " ".join(question.lower().split())
    for family, pattern in _FAMILY_RULES:
        if pattern.search(q):
            return family
    return "other"


def exact_match_scores(
    preds: Sequence[str],
    answers: Sequence[Sequence[str]],
    normalize: bool,
    groups: Sequence[str] | None = None,
) -> dict[str, float | dict[str, float]]:
    """EM@1 and refined EM over a set of questions, in percent.

    Args:
        preds: ``[Q]`` raw predictions ("" for a question without prediction).
        answers: ``[Q]`` lists of ground-truth answers.
        normalize: apply :func:`clean_answer` to both sides (SQA3D; ScanQA's LLaVA-3D variant); otherwise only
            :func:`strip_prediction` is applied to the prediction (ScanQA, Video-3D LLM).
        groups: optional ``[Q]`` group names (e.g. SQA3D question types) for a per-group breakdown.

    Returns:
        ``{"em": %, "em_refined": %, "count": Q}`` plus ``"by_group": {name: {...}}`` when ``groups`` is given.
    """
    if len(preds) != len(answers):
        raise ValueError(f"{len(preds)} predictions for {len(answers)} questions")
    if groups is not None and len(groups) != len(preds):
        raise ValueError(f"{len(groups)} group labels for {len(preds)} questions")
    exact: list[bool] = []
    refined: list[bool] = []
    for pred, gts in zip(preds, answers, strict=True):
        if normalize:
            p, g = clean_answer(strip_prediction(pred)), [clean_answer(a) for a in gts]
        else:
            p, g = strip_prediction(pred), list(gts)
        e, r = answer_match(p, g)
        exact.append(e)
        refined.append(r)

    def summary(idx: list[int]) -> dict[str, float]:
        n = len(idx)
        return {
            "em": 100.0 * sum(exact[i] for i in idx) / n if n else 0.0,
            "em_refined": 100.0 * sum(refined[i] for i in idx) / n if n else 0.0,
            "count": n,
        }

    out: dict[str, float | dict[str, float]] = dict(summary(list(range(len(preds)))))
    if groups is not None:
        names = sorted(set(groups))
        out["by_group"] = {name: summary([i for i, g in enumerate(groups) if g == name]) for name in names}
    return out
