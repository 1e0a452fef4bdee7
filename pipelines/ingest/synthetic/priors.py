"""Chance levels of the question families: how well a predictor that reads only the question text can answer.

A question-only predictor is fitted on one set of ScanQA records (the training scenes) and scored by exact match on
another (held-out scenes). Several such predictors are tried and the best one per family is its chance level, so
that a model trained on scenes has to beat every way of exploiting the question text:

* ``exact``: the most frequent training answer of the identical question string, else of the family;
* ``family``: the most frequent training answer of the family;
* ``slot`` (choice questions, which name their candidate answers): the candidate at the position (first or second
  named) that was the answer most often in training;
* ``candidate``: the candidate that was the answer most often in training when it was a candidate (a class-level
  prior such as "big objects are usually the closer one"), ties broken by ``slot``.

Records are ScanQA dicts with ``question``, ``answers`` and ``question_type`` (the synthetic generator's families).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from pipelines.ingest.synthetic.language import choice_candidates

PREDICTORS = ("exact", "family", "slot", "candidate")


def _answer(record: Mapping) -> str:
    return str(record["answers"][0])


def _majority(counter: Counter) -> str:
    """Most frequent key; ties go to the smallest key, so the result does not depend on record order."""
    return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]


class QuestionPrior:
    """Question-only predictors fitted on ``train`` records (see the module docstring)."""

    def __init__(self, train: Sequence[Mapping]) -> None:
        self.by_question: dict[str, Counter] = defaultdict(Counter)
        self.by_family: dict[str, Counter] = defaultdict(Counter)
        self.slot: dict[str, Counter] = defaultdict(Counter)
        self.wins: Counter = Counter()
        self.offers: Counter = Counter()
        for r in train:
            answer, family = _answer(r), str(r["question_type"])
            self.by_question[r["question"]][answer] += 1
            self.by_family[family][answer] += 1
            candidates = choice_candidates(r["question"])
            if candidates is not None and answer in candidates:
                self.slot[family][candidates.index(answer)] += 1
                self.offers.update(candidates)
                self.wins[answer] += 1

    def predict(self, predictor: str, question: str, family: str) -> str:
        """The answer ``predictor`` gives to ``question`` of ``family`` ("" when it has nothing to go on)."""
        if predictor not in PREDICTORS:
            raise ValueError(f"unknown predictor {predictor!r}; expected one of {PREDICTORS}")
        fallback = _majority(self.by_family[family]) if self.by_family.get(family) else ""
        if predictor == "exact":
            seen = self.by_question.get(question)
            return _majority(seen) if seen else fallback
        candidates = choice_candidates(question)
        if predictor == "family" or candidates is None:
            return fallback
        slot = _majority(self.slot[family]) if self.slot.get(family) else 0
        if predictor == "slot":
            return candidates[slot]
        rates = [self.wins[c] / self.offers[c] if self.offers[c] else 0.5 for c in candidates]
        if rates[0] == rates[1]:
            return candidates[slot]
        return candidates[int(rates[1] > rates[0])]


def chance_levels(train: Sequence[Mapping], heldout: Sequence[Mapping]) -> dict[str, dict]:
    """Per family, the exact match (percent) of every question-only predictor fitted on ``train``, on ``heldout``.

    Returns:
        ``{family: {"count": n, "chance_em": best %, "best": predictor name, "em": {predictor: %}}}`` for every
        family present in ``heldout``.
    """
    prior = QuestionPrior(train)
    by_family: dict[str, list[Mapping]] = defaultdict(list)
    for r in heldout:
        by_family[str(r["question_type"])].append(r)
    out: dict[str, dict] = {}
    for family, records in sorted(by_family.items()):
        em = {
            p: 100.0 * sum(prior.predict(p, r["question"], family) in r["answers"] for r in records) / len(records)
            for p in PREDICTORS
        }
        best = max(PREDICTORS, key=lambda p: (em[p], -PREDICTORS.index(p)))
        out[family] = {"count": len(records), "chance_em": em[best], "best": best, "em": em}
    return out
