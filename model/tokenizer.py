"""Tokenizers for Vid-LLM: an offline word-level vocabulary for tiny tests, or a checkpoint's own tokenizer.

Both carry the two task tokens: ``<scene>`` (the single placeholder where scene tokens are spliced into the
prompt) and ``<loc>`` (whose last hidden state feeds the grounding head).

The word-level tokenizer is built from a fixed vocabulary, so token ids are identical on every machine and the
tiny LLM's ``vocab_size`` can be derived from it without any file. Its pre-tokenizer turns spaces into a ``▁``
marker (Metaspace) and splits digits and punctuation into single tokens, so coordinates such as
``[1.13, -0.50, 2.00]`` round-trip exactly through ``encode``/``decode`` with a ~60-token numeric alphabet.

The text side of the model lives here too: the prompt templates (:class:`Prompt`: ``<scene>`` and the task words,
a shortenable body, the answer cue) and tokenising with the label policy (:func:`encode_example`: labels and EOS
are never cut, an example that cannot fit raises :class:`TextBudgetError`). :class:`model.processor.VidLLMProcessor`
puts them behind one object with the chat template, padding and frame conversion.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from model.config import LLMConfig

SCENE_TOKEN = "<scene>"
LOC_TOKEN = "<loc>"
PAD_TOKEN = "[PAD]"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "[UNK]"
SPACE = "▁"

# Fixed ids of the word-level tokenizer (the special tokens come first).
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, SCENE_TOKEN, LOC_TOKEN)

_SYMBOLS = tuple("0123456789") + tuple(".,[]-?!:;'\"()/%+")

# ScanNet-style object classes (the 18 ScanRefer/benchmark classes plus common ScanNet200 ones).
_OBJECTS = """
wall floor cabinet bed chair sofa table door window bookshelf picture counter desk curtain refrigerator fridge
shower toilet sink bathtub garbage bin trash can otherfurniture furniture pillow lamp monitor tv television box
shelf shelves stool armchair couch nightstand dresser mirror plant backpack bag bottle cup mug keyboard computer
laptop printer whiteboard board blackboard radiator rug mat towel ottoman bench cushion basket closet wardrobe
oven microwave stove kettle coffee machine washing dryer fan heater clock book books blanket suitcase jacket
shoe shoes person ceiling column pillar stairs railing object objects thing cube sphere cylinder ball block
cone pyramid crate column lamp pot vase frame poster sign light container bucket tub
"""

_COLOURS = """
red green blue yellow orange purple pink brown black white gray grey silver golden gold beige tan dark light
wooden wood metal metallic plastic glass fabric leather striped colored coloured color colour
"""

_NUMBERS = """
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
seventeen eighteen nineteen twenty first second third fourth fifth last several many few no none yes both
all each every single pair half
"""

_SPATIAL = """
left right front back behind above below under beneath over on top bottom near nearest closest far farthest
furthest next beside between middle center centre corner side edge against inside outside in into out at by
to from of with without around across along facing opposite close away up down north south east west
higher lower taller shorter bigger smaller larger largest smallest biggest tallest shortest long longer wide
height width length size big small large tall short high low round square rectangular flat empty full
room scene space area part end
"""

_FUNCTION = """
a an the this that these those it its is are was were be been being there here which what where who whom
whose why how when do does did can could would should will shall may might must has have had and or but not
if then than so as for about per me my i you your we our they their he she his her them one ones other
another same different more most less least much very too also only just any some such own
describe description tell give show find locate located location coordinates coordinate box bounding answer
question count number many kind type shape made material placed lying standing sitting hanging mounted
leaning stacked attached used use look looks like appears seen see visible among
please name call called sits stands hangs lies rests kept stored holding holds contains contain
"""


def word_vocabulary(extra_words: tuple[str, ...] = ()) -> list[str]:
    """The ordered token list of the word-level tokenizer: specials, ``▁``, symbols, then ``▁word`` entries.

    Args:
        extra_words: additional (lower-case) words appended in the given order, e.g. from a data set.
    """
    tokens: list[str] = [*SPECIAL_TOKENS, SPACE, *_SYMBOLS]
    seen = set(tokens)
    words = " ".join((_OBJECTS, _COLOURS, _NUMBERS, _SPATIAL, _FUNCTION)).split()
    for word in (*words, *extra_words):
        entry = SPACE + word.lower()
        if entry not in seen:
            seen.add(entry)
            tokens.append(entry)
    return tokens


def word_vocab_size(extra_words: tuple[str, ...] = ()) -> int:
    """Number of tokens of the word-level tokenizer (the tiny LLM's ``vocab_size``)."""
    return len(word_vocabulary(extra_words))


def build_word_tokenizer(extra_words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Build the offline word-level tokenizer (no files, no downloads)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(word_vocabulary(extra_words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Punctuation("isolated"),
    ])
    core.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[SCENE_TOKEN, LOC_TOKEN],
    )


def load_pretrained_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Load a checkpoint's tokenizer from a local directory and add ``<scene>``/``<loc>`` (and a pad token).

    The new tokens get the ids right after the checkpoint's vocabulary; :func:`model.llm.build_llm` resizes the
    embeddings to match.
    """
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": [SCENE_TOKEN, LOC_TOKEN]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_tokenizer(cfg) -> PreTrainedTokenizerBase:
    """The tokenizer matching ``cfg`` (a ``VidLLMConfig`` or an ``LLMConfig``).

    Raises:
        ValueError: when the tokenizer's ``<scene>``/``<loc>`` ids disagree with the ids in the config (the
            config was written for another tokenizer), it has more tokens than the LLM's vocabulary, or the config
            asks for a chat template the tokenizer does not have.
    """
    llm_cfg: LLMConfig = cfg if isinstance(cfg, LLMConfig) else cfg.llm
    if llm_cfg.tokenizer_path is None:
        tok = build_word_tokenizer(llm_cfg.extra_words)
    else:
        tok = load_pretrained_tokenizer(llm_cfg.tokenizer_path)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (("scene", SCENE_TOKEN), ("loc", LOC_TOKEN))}
    if ids["scene"] != llm_cfg.scene_token_id or ids["loc"] != llm_cfg.loc_token_id:
        raise ValueError(
            f"tokenizer ids <scene>={ids['scene']} <loc>={ids['loc']} disagree with llm config "
            f"scene_token_id={llm_cfg.scene_token_id} loc_token_id={llm_cfg.loc_token_id}"
        )
    if len(tok) > llm_cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens but the LLM vocab_size is {llm_cfg.vocab_size}")
    if llm_cfg.use_chat_template and not getattr(tok, "chat_template", None):
        raise ValueError(f"LLMConfig.use_chat_template is set but the tokenizer at {llm_cfg.tokenizer_path} has no "
                         "chat template")
    return tok


# ---------------------------------------------------------------- prompt templates (shared by training and inference)

TruncationSide = Literal["left", "right"]


class Prompt(str):
    """A prompt's text that remembers which part may be shortened to fit a token budget.

    ``head`` (``<scene>`` and the task words) and ``tail`` (the answer cue) are always kept whole; ``body`` (the
    free text: a question or a description) may lose tokens on its ``truncation_side`` (``"left"``: from its
    start, ``"right"``: from its end). A ``Prompt`` *is* its text (a ``str``), so it goes wherever a prompt
    string goes; string operations on it return plain strings, which are never shortened.
    """

    head: str
    body: str
    tail: str
    truncation_side: TruncationSide

    def __new__(cls, head: str, body: str, tail: str, truncation_side: TruncationSide = "right") -> Prompt:
        if truncation_side not in ("left", "right"):
            raise ValueError(f"Prompt.truncation_side must be 'left' or 'right', got {truncation_side!r}")
        obj = super().__new__(cls, head + body + tail)
        obj.head, obj.body, obj.tail, obj.truncation_side = head, body, tail, truncation_side
        return obj

    def __reduce__(self):
        return Prompt, (self.head, self.body, self.tail, self.truncation_side)


def format_box(box) -> str:
    """``[cx, cy, cz, dx, dy, dz]`` with 2 decimals (metres, first-camera frame), the paper's answer format."""
    values = [float(v) for v in box]
    if len(values) != 6:
        raise ValueError(f"a box has 6 numbers (centre + size), got {len(values)}")
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def qa_prompt(question: str) -> Prompt:
    """Prompt for 3D question answering (ScanQA; SQA3D puts its situation before the question). Shortened from
    the start of the question text, so the end (SQA3D's actual question) survives."""
    return Prompt(f"{SCENE_TOKEN} question:", " " + question.strip(), " answer:", truncation_side="left")


def caption_prompt(box) -> Prompt:
    """Prompt for dense captioning of the object in ``box`` (6 numbers); never shortened (the box is the
    question)."""
    return Prompt(f"{SCENE_TOKEN} describe the object at {format_box(box)}.", "", " answer:")


def grounding_prompt(description: str) -> Prompt:
    """Prompt for visual grounding; the answer is ``<loc> [cx, cy, cz, dx, dy, dz]`` (see :func:`grounding_answer`).
    Shortened from the end of the description (descriptions name the referred object first)."""
    return Prompt(f"{SCENE_TOKEN} locate:", " " + description.strip(), " answer:", truncation_side="right")


def grounding_answer(boxes) -> str:
    """Target text of a grounding answer: ``<loc>`` then every target box as text (Multi3DRefer: several)."""
    return LOC_TOKEN + "".join(" " + format_box(b) for b in boxes)


# ---------------------------------------------------------------- tokenising with the label policy

class TextBudgetError(ValueError):
    """An example that cannot fit its token budget without cutting its labels (never done).

    Attributes:
        example: the example's identifier as given by the caller (``None`` if none was given).
        answer_tokens: tokens of the answer including EOS (the labels).
        min_prompt_tokens: the prompt's tokens that are never cut (``<scene>``, task words, answer cue and the
            chat template's own tokens).
        max_length: the budget.
    """

    def __init__(self, example: str | None, answer_tokens: int, min_prompt_tokens: int, max_length: int) -> None:
        self.example, self.answer_tokens = example, answer_tokens
        self.min_prompt_tokens, self.max_length = min_prompt_tokens, max_length
        name = f"example {example!r}" if example is not None else "example"
        super().__init__(
            f"{name} does not fit max_length={max_length}: its answer needs {answer_tokens} tokens with EOS and its "
            f"prompt at least {min_prompt_tokens} (<scene>, task words and answer cue); labels are never cut"
        )


class EncodedExample(NamedTuple):
    """Token ids and next-token labels of one example (``labels`` is -100 on the prompt)."""

    input_ids: list[int]
    labels: list[int]


def prompt_pieces(tokenizer: PreTrainedTokenizerBase, prompt: str,
                  use_chat_template: bool = False) -> tuple[list[int], list[int], list[int], TruncationSide]:
    """Token ids of a prompt as ``(head, body, tail, truncation_side)``; only ``body`` may be shortened.

    The three parts are tokenised separately, in training and at inference alike, so both see identical ids. With
    ``use_chat_template`` the prompt is the user turn of the tokenizer's chat template, rendered with the
    generation prompt (the assistant turn is the answer): the template's text before the prompt joins ``head``,
    the text after it joins ``tail``. A plain ``str`` prompt is all ``head``.

    Raises:
        ValueError: the prompt has no ``<scene>``; the chat template is missing or does not contain the prompt
            text verbatim.
    """
    if SCENE_TOKEN not in prompt:
        raise ValueError(f"a prompt needs the {SCENE_TOKEN} placeholder: {prompt[:80]!r}")
    head, body, tail, side = (prompt.head, prompt.body, prompt.tail, prompt.truncation_side) \
        if isinstance(prompt, Prompt) else (str(prompt), "", "", "right")
    add_special = True
    if use_chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("use_chat_template is set but the tokenizer has no chat template")
        text = str(prompt)
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        at = rendered.find(text)
        if at < 0:
            raise ValueError("the tokenizer's chat template does not contain the prompt text verbatim")
        head, tail = rendered[:at] + head, tail + rendered[at + len(text):]
        add_special = False  # the template writes its own special tokens (as apply_chat_template(tokenize=True))

    def ids(piece: str, special: bool = False) -> list[int]:
        return tokenizer(piece, add_special_tokens=special)["input_ids"] if piece else []

    return ids(head, add_special), ids(body), ids(tail), side


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str, use_chat_template: bool = False) -> list[int]:
    """Token ids of an answer (the labels), without EOS. Without a chat template the answer continues the prompt
    text after a space; with one it is the assistant turn's content."""
    text = answer.strip() if use_chat_template else " " + answer.strip()
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_example(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, max_length: int | None = None,
                   use_chat_template: bool = False, example: str | None = None) -> EncodedExample:
    """Token ids and labels of one training example: ``prompt answer<eos>``, labels -100 on the prompt.

    Label policy: the answer and its EOS are never cut. When ``prompt + answer + EOS`` exceeds ``max_length`` the
    prompt's body (:class:`Prompt`) is shortened on its truncation side, down to nothing; ``<scene>``, the task
    words and the answer cue always stay. ``max_length=None`` means no budget (the length follows the data).

    Args:
        tokenizer: from :func:`build_tokenizer`.
        prompt: from :func:`qa_prompt`, :func:`caption_prompt`, :func:`grounding_prompt` (a plain string with
            ``<scene>`` works too and is never shortened).
        answer: the target text.
        max_length: token budget of the whole example, or ``None``.
        use_chat_template: wrap the prompt in the tokenizer's chat template (``LLMConfig.use_chat_template``).
        example: identifier of the example, named in :class:`TextBudgetError`.

    Raises:
        TextBudgetError: the answer with EOS and the prompt's fixed parts exceed ``max_length``.
        ValueError: see :func:`prompt_pieces`.
    """
    head, body, tail, side = prompt_pieces(tokenizer, prompt, use_chat_template)
    labels = answer_ids(tokenizer, answer, use_chat_template) + [tokenizer.eos_token_id]
    if max_length is not None:
        room = max_length - len(labels) - len(head) - len(tail)
        if room < 0:
            raise TextBudgetError(example, len(labels), len(head) + len(tail), max_length)
        if len(body) > room:
            body = body[len(body) - room:] if side == "left" else body[:room]
    prompt_ids = head + body + tail
    return EncodedExample(prompt_ids + labels, [-100] * len(prompt_ids) + labels)
