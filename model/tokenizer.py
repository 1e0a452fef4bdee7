"""Tokenizers for Vid-LLM: an offline word-level vocabulary for tiny tests, or a checkpoint's own tokenizer.

Both carry the two task tokens: ``<scene>`` (the single placeholder where scene tokens are spliced into the
prompt) and ``<loc>`` (whose last hidden state feeds the grounding head).

The word-level tokenizer is built from a fixed vocabulary, so token ids are identical on every machine and the
tiny LLM's ``vocab_size`` can be derived from it without any file. Its pre-tokenizer turns spaces into a ``▁``
marker (Metaspace) and splits digits and punctuation into single tokens, so coordinates such as
``[1.13, -0.50, 2.00]`` round-trip exactly through ``encode``/``decode`` with a ~60-token numeric alphabet.
"""

from __future__ import annotations

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
            config was written for another tokenizer).
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
    return tok


# ---------------------------------------------------------------- prompt templates (shared by training and inference)

def format_box(box) -> str:
    """``[cx, cy, cz, dx, dy, dz]`` with 2 decimals (metres, first-camera frame), the paper's answer format."""
    values = [float(v) for v in box]
    if len(values) != 6:
        raise ValueError(f"a box has 6 numbers (centre + size), got {len(values)}")
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def qa_prompt(question: str) -> str:
    """Prompt for 3D question answering (ScanQA/SQA3D)."""
    return f"{SCENE_TOKEN} question: {question.strip()} answer:"


def caption_prompt(box) -> str:
    """Prompt for dense captioning of the object in ``box`` (6 numbers)."""
    return f"{SCENE_TOKEN} describe the object at {format_box(box)}. answer:"


def grounding_prompt(description: str) -> str:
    """Prompt for visual grounding; the answer is ``<loc> [cx, cy, cz, dx, dy, dz]`` (see :func:`grounding_answer`)."""
    return f"{SCENE_TOKEN} locate: {description.strip()} answer:"


def grounding_answer(boxes) -> str:
    """Target text of a grounding answer: ``<loc>`` then every target box as text (Multi3DRefer: several)."""
    return LOC_TOKEN + "".join(" " + format_box(b) for b in boxes)


def encode_example(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str,
                   max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids and labels of one training example: ``prompt answer<eos>``; labels are -100 on the prompt.

    Raises:
        ValueError: the prompt alone does not fit in ``max_length`` (the answer would be cut entirely).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if max_length is not None and len(prompt_ids) >= max_length:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit max_length={max_length}: {prompt[:80]!r}")
    ids = prompt_ids + answer_ids
    labels = [-100] * len(prompt_ids) + answer_ids
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels
