"""Caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) with the ``pycocoevalcap`` scorer classes.

The numbers depend on tokenisation, and the peers disagree, so it is an explicit choice:

* ``"ptb"`` (default): the Stanford PTB tokenizer shipped in the ``pycocoevalcap`` wheel
  (``stanford-corenlp-3.4.1.jar``, ``-preserveLines -lowerCase``), then the COCO punctuation tokens are dropped,
  exactly what ``pycocoevalcap``'s ``PTBTokenizer`` does. LLaVA-3D (Vid-LLM's template), Chat-Scene, GPT4Scene and
  LEO evaluate this way. We run the same jar through stdin instead of calling ``PTBTokenizer`` because that class
  writes a temporary file into the installed package directory, which fails on read-only installs.
* ``"whitespace"``: no tokenizer; captions are only whitespace-normalised and the scorers split on spaces, as in
  Video-3D LLM / 3DRS / Ross3D ``eval_scanqa.py``. Case and punctuation are kept (``"Chair."`` != ``"chair"``).

METEOR runs ``meteor-1.5.jar`` in a Java subprocess that takes a few seconds to load its paraphrase table, so a
:class:`CaptionScorer` owns one METEOR process for its lifetime: create one per evaluation session and reuse it.
Scores are returned raw (BLEU/METEOR/ROUGE in [0, 1], CIDEr-D in [0, 10]); reports multiply by 100.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from importlib import resources

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

TOKENIZERS: tuple[str, ...] = ("ptb", "whitespace")
DEFAULT_TOKENIZER = "ptb"
CAPTION_METRICS: tuple[str, ...] = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")

# Tokens pycocoevalcap's PTBTokenizer removes after tokenising (its PUNCTUATIONS list).
PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_PTB_JAR = "stanford-corenlp-3.4.1.jar"


class CaptionMetricError(RuntimeError):
    """A caption metric could not be computed (Java missing, a subprocess failed, malformed input)."""


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise CaptionMetricError("the 'java' executable is not on PATH; METEOR and the PTB tokenizer need it")
    return java


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenise captions with the Stanford PTB tokenizer from the pycocoevalcap wheel, COCO-style.

    Args:
        captions: raw captions; newlines inside a caption are treated as spaces.

    Returns:
        One lower-cased, space-joined token string per caption, COCO punctuation tokens removed.
    """
    lines = [" ".join(c.split()) for c in captions]
    todo = [i for i, line in enumerate(lines) if line]
    out = [""] * len(lines)
    if not todo:
        return out
    jar = resources.files("pycocoevalcap.tokenizer") / _PTB_JAR
    with resources.as_file(jar) as jar_path:
        if not jar_path.is_file():
            raise CaptionMetricError(f"{jar_path}: PTB tokenizer jar missing from the pycocoevalcap install")
        cmd = [
            _java(),
            "-cp",
            str(jar_path),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
        ]
        proc = subprocess.run(
            cmd, input="\n".join(lines[i] for i in todo) + "\n", capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        raise CaptionMetricError(
            f"PTB tokenizer failed (exit {proc.returncode}): {proc.stderr.strip()[:500]}"
        )
    token_lines = proc.stdout.split("\n")
    if len(token_lines) < len(todo):
        raise CaptionMetricError(f"PTB tokenizer returned {len(token_lines)} lines for {len(todo)} captions")
    for i, line in zip(todo, token_lines, strict=False):
        out[i] = " ".join(w for w in line.strip().split(" ") if w and w not in PTB_PUNCTUATION)
    return out


def whitespace_tokenize(captions: Sequence[str]) -> list[str]:
    """The no-tokenizer path: collapse whitespace only (case and punctuation kept)."""
    return [" ".join(c.split()) for c in captions]


class CaptionScorer:
    """Computes BLEU-1..4, METEOR, ROUGE-L and CIDEr-D over a corpus with the pycocoevalcap scorers.

    Args:
        tokenizer: ``"ptb"`` or ``"whitespace"`` (see the module docstring).
        meteor: compute METEOR (needs Java); when False the ``"meteor"`` key is absent from results.

    The METEOR Java process starts on first use and lives until :meth:`close` (or the ``with`` block ends).
    """

    def __init__(self, tokenizer: str = DEFAULT_TOKENIZER, meteor: bool = True):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        self.tokenizer = tokenizer
        self.use_meteor = meteor
        self._meteor: Meteor | None = None
        self._owns_meteor = True

    def tokenize(self, captions: Sequence[str]) -> list[str]:
        """Tokenise a flat list of captions with the configured tokenizer."""
        if self.tokenizer == "ptb":
            return ptb_tokenize(captions)
        return whitespace_tokenize(captions)

    def meteor(self) -> Meteor:
        """The pycocoevalcap ``Meteor`` scorer of this session, its Java process started on first call."""
        if self._meteor is None:
            _java()
            self._meteor = Meteor()
        return self._meteor

    def score(
        self, references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str], tokenize: bool = True
    ) -> dict[str, float]:
        """Corpus scores of one hypothesis per key against its references.

        Args:
            references: key -> non-empty list of reference captions.
            hypotheses: key -> hypothesis caption; must have exactly the keys of ``references``.
            tokenize: apply the configured tokenizer first (False when the caller already did).

        Returns:
            ``{"bleu1".."bleu4", "meteor", "rouge_l", "cider"}`` raw corpus scores (CIDEr-D unscaled); an empty
            corpus gives zeros.
        """
        if set(references) != set(hypotheses):
            missing = sorted(set(references) - set(hypotheses))[:5]
            extra = sorted(set(hypotheses) - set(references))[:5]
            raise ValueError(f"hypotheses and references differ in keys (missing {missing}, extra {extra})")
        keys = sorted(references)
        metrics = [m for m in CAPTION_METRICS if m != "meteor" or self.use_meteor]
        if not keys:
            return dict.fromkeys(metrics, 0.0)
        for k in keys:
            if not references[k]:
                raise ValueError(f"references[{k!r}] is empty; every key needs at least one reference")
        flat_refs = [r for k in keys for r in references[k]]
        hyps = [hypotheses[k] for k in keys]
        if tokenize:
            toks = self.tokenize(flat_refs + hyps)
            flat_refs, hyps = toks[: len(flat_refs)], toks[len(flat_refs) :]
        gts: dict[str, list[str]] = {}
        pos = 0
        for k in keys:
            gts[k] = flat_refs[pos : pos + len(references[k])]
            pos += len(references[k])
        res = {k: [h] for k, h in zip(keys, hyps, strict=True)}
        out: dict[str, float] = {}
        # Bleu.compute_score prints its n-gram statistics to stdout; keep logs clean.
        with contextlib.redirect_stdout(io.StringIO()):
            bleu, _ = Bleu(4).compute_score(gts, res)
        out.update({f"bleu{i + 1}": float(b) for i, b in enumerate(bleu)})
        if self.use_meteor:
            out["meteor"] = float(self.meteor().compute_score(gts, res)[0])
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
        out["cider"] = float(Cider().compute_score(gts, res)[0])
        return {m: out[m] for m in metrics}

    def close(self) -> None:
        """Stop the METEOR subprocess, if started and owned by this scorer."""
        meteor, self._meteor = self._meteor, None
        if meteor is not None and self._owns_meteor:
            proc = meteor.meteor_p
            if proc.stdin is not None:
                proc.stdin.close()
            proc.kill()
            proc.wait()

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
