"""Benchmark-format language annotations derived from the generated scene, so that every answer can be scored.

Facts come only from the :class:`~pipelines.ingest.synthetic.room.Room` (classes, counts, colours, boxes), and the
records use the published field names of ScanQA, SQA3D, ScanRefer (with M3DRef-CLIP's ``eval_type``) and
Multi3DRefer. ScanQA records also carry ``question_type``: the question family (:data:`QUESTION_FAMILIES`).
Conventions chosen once and kept: counts are answered with number words ("two"), yes/no questions with
"yes"/"no", colours with the palette name. Spatial relations are viewpoint-free ("closer", "next to", "bigger")
for ScanQA and ScanRefer, and relative to the stated situation (agent in front of an object, facing it) for SQA3D.

The ScanQA families are built so that the question text alone does not give the answer away (the room generator
draws class presence, counts, colours and sizes independently of the class names, see
:func:`~pipelines.ingest.synthetic.room.generate_room`):

* ``counting``: "How many {plural} are in the room?" for every present class that can occur more than once; the
  count is uniform over ``1..max_count`` of the class.
* ``color``: "What color is the {label}?" for every object that is the only one of its class; colours are uniform.
* ``existence``: "Is there a {label} in the room?" for :data:`EXISTENCE_QUESTIONS` classes drawn without looking
  at the room; each class is present with the generator's ``class_probability`` (0.5: yes and no equally likely).
* ``relative_position``: "Which is closer to {a}, {b} or {c}?" where one of b, c is at least
  :data:`CLOSER_MARGIN_M` closer (footprint gap) to a than the other; which one is named first is a coin flip.
* ``size``: "Which {label} is bigger, the {colour} one or the {colour} one?" between two instances of one class
  whose volumes differ by :data:`BIGGER_RATIO`; which one is named first is a coin flip.

Every noun phrase names exactly one object: the class alone when it is the only one of its class, the colour and
the class otherwise (instances of a class always have distinct colours). Grounding descriptions do the same
(ScanRefer ``eval_type`` "unique" when the class is the only one of its class, "multiple" otherwise).
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import permutations

import numpy as np

from pipelines.ingest.synthetic.room import CATALOGUE, CLASS_BY_LABEL, PALETTE, Room, SceneObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
QUESTION_FAMILIES = ("counting", "color", "existence", "relative_position", "size")
#: Existence questions per scene, about classes drawn uniformly from the catalogue (present or not).
EXISTENCE_QUESTIONS = 4
#: Relative-position questions per scene (at most).
CLOSER_QUESTIONS = 3
#: Footprint-gap difference that makes one object clearly closer than the other, metres.
CLOSER_MARGIN_M = 0.5
#: Volume ratio above which one instance is clearly bigger than the other.
BIGGER_RATIO = 1.5


_CLOSER = re.compile(r"^Which is closer to the (.+), the (.+) or the (.+)\?$")
_BIGGER = re.compile(r"^Which (.+) is bigger, the (\w+) one or the (\w+) one\?$")


def choice_candidates(question: str) -> tuple[str, str] | None:
    """The two candidate answers a ``relative_position`` or ``size`` question names, in the order named.

    ``"Which is closer to the bed, the red chair or the desk?" -> ("red chair", "desk")``; None for questions of
    the other families.
    """
    for pattern in (_CLOSER, _BIGGER):
        match = pattern.match(question)
        if match:
            return match.group(2), match.group(3)
    return None


# Every word of the templates below, besides class names, colours and number words (see vocabulary()).
_TEMPLATE_WORDS = """
how many are in the room what color is there a which closer to or bigger one yes no
i am standing front of and facing it me on my left right walked up looking at this next all
"""


def vocabulary() -> tuple[str, ...]:
    """Every lower-case word the annotations can contain (a word-level tokenizer needs no other word)."""
    words = set(_TEMPLATE_WORDS.split()) | set(PALETTE) | set(NUMBER_WORDS)
    for cls in CATALOGUE:
        words |= set(cls.label.split()) | set(cls.plural.split())
    return tuple(sorted(words))


def number_word(n: int) -> str:
    """``2 -> "two"`` (the counting-answer convention of these annotations)."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def tokenize(text: str) -> list[str]:
    """ScanRefer-style tokens: lower-case words and punctuation marks."""
    return re.findall(r"[a-z0-9]+|[.,!?]", text.lower())


def _gap(a: SceneObject, b: SceneObject) -> float:
    """Distance between the xy footprints of two objects (0 when they touch)."""
    alo, ahi = a.bbox
    blo, bhi = b.bbox
    d = np.maximum(np.maximum(blo[:2] - ahi[:2], alo[:2] - bhi[:2]), 0.0)
    return float(np.hypot(*d))


def _nearest(obj: SceneObject, others: list[SceneObject], margin: float) -> SceneObject | None:
    """The nearest other object, only when every object of a different class is ``margin`` metres farther."""
    ranked = sorted(
        (o for o in others if o.object_id != obj.object_id), key=lambda o: (_gap(obj, o), o.object_id)
    )
    if not ranked:
        return None
    first = ranked[0]
    rivals = [o for o in ranked[1:] if o.label != first.label]
    if rivals and _gap(obj, rivals[0]) - _gap(obj, first) < margin:
        return None
    return first


class SceneLanguage:
    """Derives all annotation records for one room.

    Args:
        room: the generated room.
        split: ``train`` or ``val``; used in ScanQA question ids.
        scene_index: integer index of the scene (for globally unique SQA3D question ids).
        rng: generator for template, class and ordering choices (deterministic per scene).
    """

    def __init__(self, room: Room, split: str, scene_index: int, rng: np.random.Generator):
        self.room, self.split, self.scene_index, self.rng = room, split, scene_index, rng
        self.furniture = room.furniture
        self.counts = Counter(o.label for o in self.furniture)
        present = set(self.counts)
        self.absent = [c.label for c in CATALOGUE if c.label not in present]

    def name(self, obj: SceneObject) -> str:
        """The words naming ``obj`` unambiguously: ``bed`` or, for repeated classes, ``red chair``."""
        return obj.label if self.counts[obj.label] == 1 else f"{obj.color_name} {obj.label}"

    def describe(self, obj: SceneObject) -> str:
        """A noun phrase naming ``obj`` unambiguously: ``the bed`` or, for repeated classes, ``the red chair``."""
        return f"the {self.name(obj)}"

    def scanqa(self) -> list[dict]:
        """ScanQA records of the five families of :data:`QUESTION_FAMILIES` (``question_type``), in that order."""
        out: list[dict] = []
        sid = self.room.scene_id
        by_label = {label: [o for o in self.furniture if o.label == label] for label in sorted(self.counts)}

        def add(family: str, question: str, answer: str, objs: list[SceneObject]) -> None:
            out.append(
                {
                    "answers": [answer],
                    "object_ids": [o.object_id for o in objs],
                    "object_names": [o.label for o in objs],
                    "question": question,
                    "question_id": f"{self.split}-{sid[:9]}-{len(out)}",
                    "question_type": family,
                    "scene_id": sid,
                }
            )

        for label, objs in by_label.items():
            if CLASS_BY_LABEL[label].max_count > 1:
                add("counting", f"How many {CLASS_BY_LABEL[label].plural} are in the room?",
                    number_word(len(objs)), objs)
        for label, objs in by_label.items():
            if len(objs) == 1:
                add("color", f"What color is the {label}?", objs[0].color_name, objs)
        for label in self._pick([c.label for c in CATALOGUE], EXISTENCE_QUESTIONS):
            add("existence", f"Is there a {label} in the room?", "yes" if label in by_label else "no",
                by_label.get(label, [])[:1])
        triples = [
            (a, b, c)
            for a, b, c in permutations(self.furniture, 3)
            if b.object_id < c.object_id and abs(_gap(a, b) - _gap(a, c)) >= CLOSER_MARGIN_M
        ]
        for i in self._pick_indices(len(triples), CLOSER_QUESTIONS):
            a, b, c = triples[i]
            closer = b if _gap(a, b) < _gap(a, c) else c
            first, second = (b, c) if self.rng.random() < 0.5 else (c, b)
            add("relative_position",
                f"Which is closer to {self.describe(a)}, {self.describe(first)} or {self.describe(second)}?",
                self.name(closer), [a, first, second])
        for label, objs in by_label.items():
            pairs = [
                (a, b) for i, a in enumerate(objs) for b in objs[i + 1:]
                if max(a.volume, b.volume) >= BIGGER_RATIO * min(a.volume, b.volume)
            ]
            if not pairs:
                continue
            a, b = pairs[self._pick_indices(len(pairs), 1)[0]]
            bigger = a if a.volume > b.volume else b
            first, second = (a, b) if self.rng.random() < 0.5 else (b, a)
            add("size", f"Which {label} is bigger, the {first.color_name} one or the {second.color_name} one?",
                bigger.color_name, [first, second])
        return out

    def sqa3d(self) -> tuple[list[dict], list[dict]]:
        """SQA3D ``(questions, annotations)``: the agent stands in front of an object, facing it."""
        questions, annotations = [], []
        extent = self.room.extent
        for obj in self.furniture:
            if len(questions) >= 9:
                break
            lo, hi = obj.bbox
            reach = float(np.abs(obj.front) @ ((hi - lo)[:2] / 2.0))
            agent = obj.center[:2] + obj.front * (reach + 0.6)
            inside = (agent > 0.2).all() and (agent < extent[:2] - 0.2).all()
            blocked = any(
                (agent >= o.bbox[0][:2] - 0.1).all() and (agent <= o.bbox[1][:2] + 0.1).all()
                for o in self.furniture
            )
            # The situation names only the class, so the object must be clearly the nearest of its class.
            rivals = [
                float(np.linalg.norm(o.center[:2] - agent))
                for o in self.furniture
                if o.label == obj.label and o.object_id != obj.object_id
            ]
            own = float(np.linalg.norm(obj.center[:2] - agent))
            if not inside or blocked or (rivals and min(rivals) < own + 0.3):
                continue
            facing = -obj.front
            yaw = float(np.arctan2(facing[1], facing[0]))
            situation = f"I am standing in front of the {obj.label} and facing it."
            alternatives = [
                f"Facing the {obj.label}, I am standing right in front of it.",
                f"I walked up to the {obj.label} and I am looking at it.",
            ]
            qa = [(f"What color is the {obj.label} in front of me?", obj.color_name)]
            left = np.array([-facing[1], facing[0]])
            for other in self.furniture:
                lateral = float((other.center[:2] - agent) @ left)
                if other.object_id != obj.object_id and abs(lateral) > 0.4:
                    side = "left" if lateral > 0 else "right"
                    qa.append((f"Is {self.describe(other)} on my left or on my right?", side))
                    break
            label = self._pick(sorted(self.counts), 1)[0]
            qa.append(
                (f"How many {CLASS_BY_LABEL[label].plural} are in the room?", number_word(self.counts[label]))
            )
            for question, answer in qa:
                qid = 100000 * (self.scene_index + 1) + len(questions)
                questions.append(
                    {
                        "alternative_situation": alternatives,
                        "question": question,
                        "question_id": qid,
                        "scene_id": self.room.scene_id,
                        "situation": situation,
                    }
                )
                annotations.append(
                    {
                        "answer_type": "other",
                        "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": 1}],
                        "position": {"x": float(agent[0]), "y": float(agent[1]), "z": 0.0},
                        "question_id": qid,
                        "question_type": "N/A",
                        "rotation": {
                            "_w": float(np.cos(yaw / 2)),
                            "_x": 0.0,
                            "_y": 0.0,
                            "_z": float(np.sin(yaw / 2)),
                        },
                        "scene_id": self.room.scene_id,
                    }
                )
        return questions, annotations

    def scanrefer(self, per_object: int = 2) -> list[dict]:
        """ScanRefer records (``object_id``/``ann_id`` as strings) plus M3DRef-CLIP's ``eval_type``."""
        out = []
        for obj in self.furniture:
            near = _nearest(obj, self.furniture, margin=0.0)
            near_text = f" it is next to {self.describe(near)}." if near is not None else ""
            templates = [
                f"this is a {obj.color_name} {obj.label}.{near_text}",
                f"the {obj.label} is {obj.color_name}.{near_text}",
                f"a {obj.color_name} {obj.label} in the room.{near_text}",
            ]
            for ann_id in range(per_object):
                text = templates[ann_id % len(templates)]
                out.append(
                    {
                        "ann_id": str(ann_id),
                        "description": text,
                        "eval_type": "unique" if self.counts[obj.label] == 1 else "multiple",
                        "object_id": str(obj.object_id),
                        "object_name": obj.label,
                        "scene_id": self.room.scene_id,
                        "token": tokenize(text),
                    }
                )
        return out

    def multi3drefer(self) -> list[dict]:
        """Multi3DRefer records covering all five ``eval_type`` groups (zero-, single- and multi-target)."""
        out: list[dict] = []

        def add(label: str, text: str, objs: list[SceneObject], eval_type: str, color: bool) -> None:
            out.append(
                {
                    "ann_id": len(out),
                    "color": color,
                    "description": text,
                    "eval_type": eval_type,
                    "object_ids": [o.object_id for o in objs],
                    "object_name": label,
                    "scene_id": self.room.scene_id,
                    "spatial": False,
                }
            )

        for label in sorted(self.counts):
            objs = [o for o in self.furniture if o.label == label]
            if len(objs) == 1:
                add(label, f"the {label} in this room.", objs, "st_wo_d", False)
                continue
            for obj in objs:
                add(label, f"the {obj.color_name} {label}.", [obj], "st_w_d", True)
            add(label, f"all of the {CLASS_BY_LABEL[label].plural} in this room.", objs, "mt", False)
            unused = [c for c in PALETTE if c not in {o.color_name for o in objs}]
            add(label, f"the {self._pick(unused, 1)[0]} {label}.", [], "zt_w_d", True)
        for label in self._pick(self.absent, 2):
            add(label, f"the {label} in this room.", [], "zt_wo_d", False)
        return out

    def _pick_indices(self, n: int, k: int) -> list[int]:
        """Up to ``k`` distinct indices of ``range(n)`` drawn uniformly, in increasing order."""
        if n == 0:
            return []
        return sorted(int(i) for i in self.rng.choice(n, size=min(k, n), replace=False))

    def _pick(self, items: list[str], k: int) -> list[str]:
        return [items[i] for i in self._pick_indices(len(items), k)]
