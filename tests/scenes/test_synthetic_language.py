"""Synthetic language: answers follow from the room, the question text does not give them away, names are unique."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from pipelines.ingest.synthetic import SyntheticConfig, build_scene
from pipelines.ingest.synthetic.language import (
    BIGGER_RATIO,
    CLOSER_MARGIN_M,
    QUESTION_FAMILIES,
    SceneLanguage,
    choice_candidates,
    number_word,
    tokenize,
    vocabulary,
)
from pipelines.ingest.synthetic.priors import chance_levels
from pipelines.ingest.synthetic.room import CATALOGUE, CLASS_BY_LABEL, PALETTE

SEEDS = (0, 1, 2)
SCENES = 120


def _gap(a, b) -> float:
    (alo, ahi), (blo, bhi) = a.bbox, b.bbox
    return float(np.hypot(*np.maximum(np.maximum(blo[:2] - ahi[:2], alo[:2] - bhi[:2]), 0.0)))


def _language(seed: int, index: int):
    spec = build_scene(SyntheticConfig(out="unused", num_scenes=1, seed=seed, num_frames=8), index)
    return spec.room, SceneLanguage(spec.room, "train", index, np.random.default_rng([seed, index, 1]))


@pytest.fixture(scope="module")
def corpus() -> dict[int, list[tuple]]:
    """Per seed: ``(room, scanqa, scanrefer, multi3drefer)`` of SCENES scenes (built without rendering)."""
    out = {}
    for seed in SEEDS:
        rows = []
        for index in range(SCENES):
            room, lang = _language(seed, index)
            rows.append((room, lang.scanqa(), lang.scanrefer(), lang.multi3drefer()))
        out[seed] = rows
    return out


def _resolve(room, phrase: str) -> list:
    """Objects a noun phrase (``bed``, ``red chair``) can mean."""
    return [o for o in room.furniture if phrase in (o.label, f"{o.color_name} {o.label}")]


@pytest.mark.parametrize("seed", SEEDS)
def test_answers_follow_from_the_room(corpus, seed):
    families = Counter()
    for room, scanqa, _, _ in corpus[seed]:
        objs = {o.object_id: o for o in room.furniture}
        counts = Counter(o.label for o in room.furniture)
        for r in scanqa:
            q, (answer,), family = r["question"], r["answers"], r["question_type"]
            families[family] += 1
            if family == "counting":
                label = r["object_names"][0]
                assert q == f"How many {CLASS_BY_LABEL[label].plural} are in the room?"
                assert answer == number_word(counts[label]) and CLASS_BY_LABEL[label].max_count > 1
            elif family == "color":
                (obj,) = (objs[i] for i in r["object_ids"])
                assert counts[obj.label] == 1 and answer == obj.color_name
            elif family == "existence":
                label = re.fullmatch(r"Is there a (.+) in the room\?", q).group(1)
                assert answer == ("yes" if counts[label] else "no")
            elif family == "relative_position":
                anchor = re.fullmatch(r"Which is closer to the (.+?), the .+", q).group(1)
                (a,) = _resolve(room, anchor)
                pair = [_resolve(room, c) for c in choice_candidates(q)]
                assert all(len(p) == 1 for p in pair), "every noun phrase names exactly one object"
                (b,), (c,) = pair
                gaps = {name: _gap(a, o) for name, o in zip(choice_candidates(q), (b, c), strict=True)}
                assert abs(gaps[choice_candidates(q)[0]] - gaps[choice_candidates(q)[1]]) >= CLOSER_MARGIN_M
                assert answer == min(gaps, key=gaps.get)
            else:
                assert family == "size"
                label = re.fullmatch(r"Which (.+) is bigger, .+", q).group(1)
                a, b = (next(o for o in room.furniture if o.label == label and o.color_name == c)
                        for c in choice_candidates(q))
                assert max(a.volume, b.volume) >= BIGGER_RATIO * min(a.volume, b.volume)
                assert answer == (a if a.volume > b.volume else b).color_name
    assert set(families) == set(QUESTION_FAMILIES) and min(families.values()) >= 50


@pytest.mark.parametrize("seed", SEEDS)
def test_answers_are_balanced_within_each_template(corpus, seed):
    per_question: dict[str, Counter] = defaultdict(Counter)
    first_named: Counter = Counter()
    colours: Counter = Counter()
    for _, scanqa, _, _ in corpus[seed]:
        for r in scanqa:
            answer, family = r["answers"][0], r["question_type"]
            if family in ("counting", "existence"):
                per_question[r["question"]][answer] += 1
            elif family == "color":
                colours[answer] += 1
            else:
                first_named[(family, answer == choice_candidates(r["question"])[0])] += 1
    for question, answers in per_question.items():
        n = sum(answers.values())
        if question.startswith("Is there"):
            assert n >= 15 and 0.2 <= answers["yes"] / n <= 0.8, (question, answers)
        else:
            label = next(c.label for c in CATALOGUE if question == f"How many {c.plural} are in the room?")
            options = CLASS_BY_LABEL[label].max_count
            assert set(answers) <= {number_word(k) for k in range(1, options + 1)}
            assert n >= 15 and max(answers.values()) / n <= 1 / options + 0.25, (question, answers)
    assert max(colours.values()) / sum(colours.values()) <= 2.0 / len(PALETTE)
    for family in ("relative_position", "size"):
        first, second = first_named[(family, True)], first_named[(family, False)]
        assert first + second >= 50 and 0.35 <= first / (first + second) <= 0.65, family


@pytest.mark.parametrize("seed", SEEDS)
def test_question_only_predictors_stay_near_chance_on_other_scenes(corpus, seed):
    train = [r for _, scanqa, _, _ in corpus[seed] for r in scanqa]
    heldout = [r for _, scanqa, _, _ in corpus[(seed + 1) % len(SEEDS)] for r in scanqa]
    levels = chance_levels(train, heldout)
    limits = {"counting": 60.0, "color": 20.0, "existence": 65.0, "relative_position": 66.0, "size": 66.0}
    assert set(levels) == set(limits)
    for family, limit in limits.items():
        assert levels[family]["chance_em"] <= limit, (family, levels[family])
        assert levels[family]["chance_em"] == max(levels[family]["em"].values())


def test_question_only_predictor_finds_a_prior_when_there_is_one():
    def record(question, answer, family):
        return {"question": question, "answers": [answer], "question_type": family}

    train = [record("Is there a bed in the room?", "yes", "existence")] * 3
    train += [record("Which is closer to the bed, the desk or the sofa?", "sofa", "relative_position")] * 2
    train += [record("Which is closer to the sink, the bed or the lamp?", "bed", "relative_position")] * 3
    heldout = [record("Is there a bed in the room?", "yes", "existence"),
               record("Which is closer to the toilet, the desk or the sofa?", "sofa", "relative_position")]
    levels = chance_levels(train, heldout)
    assert levels["existence"]["chance_em"] == 100.0 and levels["existence"]["best"] == "exact"
    relative = levels["relative_position"]
    assert relative["em"] == {"exact": 0.0, "family": 0.0, "slot": 0.0, "candidate": 100.0}
    assert relative["chance_em"] == 100.0 and relative["best"] == "candidate"


def _colour_and_class(sentence: str) -> tuple[str, str]:
    """``(colour, class)`` named by the first sentence of a ScanRefer description (the generator's templates)."""
    if sentence.startswith("the "):
        label, colour = sentence[len("the "):].split(" is ")
        return colour, label
    words = sentence.removeprefix("this is a ").removeprefix("a ").removesuffix(" in the room")
    colour, label = words.split(" ", 1)
    return colour, label


@pytest.mark.parametrize("seed", SEEDS)
def test_grounding_descriptions_single_out_their_targets(corpus, seed):
    eval_types = Counter()
    for room, _, scanrefer, multi3drefer in corpus[seed]:
        counts = Counter(o.label for o in room.furniture)
        for r in scanrefer:
            colour, label = _colour_and_class(r["description"].split(".")[0])
            matches = [o for o in room.furniture if o.label == label and o.color_name == colour]
            assert [o.object_id for o in matches] == [int(r["object_id"])], r["description"]
            assert r["eval_type"] == ("unique" if counts[label] == 1 else "multiple")
            eval_types[r["eval_type"]] += 1
        for r in multi3drefer:
            text = r["description"]
            if text.startswith("all of the "):
                plural = text[len("all of the "):-len(" in this room.")]
                targets = [o for o in room.furniture if CLASS_BY_LABEL[o.label].plural == plural]
            elif text.endswith(" in this room."):
                targets = [o for o in room.furniture if o.label == text[len("the "):-len(" in this room.")]]
            else:
                targets = _resolve(room, text[len("the "):-1])
            assert sorted(r["object_ids"]) == sorted(o.object_id for o in targets), text
            assert (len(targets) > 1) == (r["eval_type"] == "mt")
            eval_types[r["eval_type"]] += 1
    assert set(eval_types) == {"unique", "multiple", "zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt"}


def test_the_vocabulary_covers_every_annotation_word(corpus):
    from model.tokenizer import UNK_TOKEN, build_word_tokenizer

    texts = set()
    for _, scanqa, scanrefer, multi3drefer in corpus[0][:30]:
        texts |= {r["question"] for r in scanqa} | {r["answers"][0] for r in scanqa}
        texts |= {r["description"] for r in scanrefer + multi3drefer}
    _, lang = _language(0, 0)
    questions, _ = lang.sqa3d()
    texts |= {q["situation"] + " " + q["question"] for q in questions}
    words = {w for t in texts for w in tokenize(t) if w.isalpha()}
    assert words <= set(vocabulary()), sorted(words - set(vocabulary()))
    tokenizer = build_word_tokenizer(vocabulary())
    assert not {t for t in texts if UNK_TOKEN in tokenizer.tokenize(t)}
    assert UNK_TOKEN in build_word_tokenizer().tokenize("How many chairs are in the room?"), (
        "the fixed vocabulary lacks plurals: the data set's words must be passed as extra words"
    )


def test_annotation_files_hold_only_the_chosen_families(tmp_path):
    from pipelines.ingest.synthetic import write_annotations
    from pipelines.scenes.annotations import benchmark_paths, read_scanqa

    config = SyntheticConfig(out=str(tmp_path), num_scenes=3, question_families=("color", "size"),
                             situated_questions=False)
    write_annotations(config, [build_scene(config, i) for i in range(3)])
    paths = benchmark_paths(str(tmp_path / "annotations"), "train")
    records = read_scanqa(paths["scanqa"])
    assert records and {r.question_type for r in records} <= {"color", "size"}
    sqa = tmp_path / "annotations" / "sqa_task" / "balanced" / "v1_balanced_questions_train_scannetv2.json"
    assert json.loads(sqa.read_text())["questions"] == []
    assert config.fingerprint() == SyntheticConfig(out="elsewhere", num_scenes=1).fingerprint()
    with pytest.raises(ValueError, match="question_families"):
        SyntheticConfig(out="x", num_scenes=1, question_families=("colour",))
