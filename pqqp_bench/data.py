"""Corpora, calibration samples and evaluation windows.

A corpus is split once, by token position, into a calibration part (the first `1 - holdout` of its tokens)
and a held-out evaluation part (the rest), so calibration and evaluation never overlap and neither moves when
the other's size changes. Corpora with their own splits (WikiText-2) use train for calibration and test for
evaluation. Texts are tokenized without special tokens and cut into windows of `seqlen` tokens.

Windows follow the model's BOS convention (`bos`): a model trained with a BOS token at the start of every
sequence (Gemma, Llama) scores text without it in a regime it never saw (a Gemma 3 model on a novel: perplexity
82.3 without BOS, 29.2 with it). Where BOS is on, each window is BOS followed by `seqlen - 1` corpus tokens, so
every window still predicts `seqlen - 1` tokens (its first corpus token from BOS alone), as lm-eval's rolling
windows do. `auto` asks the tokenizer what it does (`bos_token_id`), not a list of model names.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import PreTrainedTokenizerBase

from .errors import PqqpError
from .catalog import AUSTEN_HINT, AUSTEN_NOVELS, austen_dir
from .settings import DEFAULT_HOLDOUT, check_bos

@dataclass(frozen=True)
class Texts:
    """A corpus as raw text: one text to split by position, or separate calibration and evaluation texts."""

    name: str
    source: str
    text: str = ""
    calibration: str = ""
    evaluation: str = ""


@dataclass
class Corpus:
    """A tokenized corpus with its two non-overlapping token streams."""

    name: str
    source: str
    calibration: torch.Tensor
    evaluation: torch.Tensor
    split: str
    bos: int | None = None  # the BOS token id every window starts with, or None (`bos_token_id`)

    def cut(self, tokens: torch.Tensor, seqlen: int) -> torch.Tensor:
        """`tokens` as consecutive windows of `seqlen` ids ([n, seqlen]), each BOS + `seqlen - 1` tokens where
        the corpus has a BOS token, else `seqlen` tokens."""
        body = seqlen - (self.bos is not None)
        slots = tokens.numel() // body
        windows = tokens[: slots * body].view(slots, body)
        if self.bos is None:
            return windows
        return torch.cat([torch.full((slots, 1), self.bos, dtype=windows.dtype), windows], dim=1)

    def slots(self, tokens: torch.Tensor, seqlen: int) -> int:
        """How many windows of `seqlen` ids `tokens` holds."""
        return tokens.numel() // (seqlen - (self.bos is not None))

    def calibration_samples(self, n: int, seqlen: int, seed: int) -> torch.Tensor:
        """`n` distinct, non-overlapping windows of `seqlen` calibration tokens, chosen by `seed`: [n, seqlen]."""
        if n < 1 or seqlen < 2:
            raise PqqpError(f"calibration needs n >= 1 samples of seqlen >= 2 tokens, got n={n}, seqlen={seqlen}")
        slots = self.slots(self.calibration, seqlen)
        if n > slots:
            raise PqqpError(
                f"{n} calibration samples of {seqlen} tokens do not fit corpus '{self.name}': its calibration "
                f"part holds {slots} windows ({self.split}); accepted n <= {slots}"
            )
        chosen = torch.randperm(slots, generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return self.cut(self.calibration, seqlen)[chosen].clone()

    def evaluation_windows(self, seqlen: int, tokens: int | None = None) -> torch.Tensor:
        """Consecutive non-overlapping windows from the start of the evaluation part: [tokens // seqlen, seqlen]."""
        if seqlen < 2:
            raise PqqpError(f"seqlen={seqlen} is not accepted: a window needs at least 2 tokens")
        available = self.slots(self.evaluation, seqlen)
        wanted = available if tokens is None else tokens // seqlen
        if wanted < 1 or wanted > available:
            asked = "all" if tokens is None else tokens
            raise PqqpError(
                f"evaluation of {asked} tokens in windows of {seqlen} does not fit corpus '{self.name}': its "
                f"evaluation part holds {available} windows ({self.evaluation.numel()} tokens, {self.split}); "
                f"accepted {seqlen}..{available * seqlen} tokens"
            )
        return self.cut(self.evaluation, seqlen)[:wanted].clone()


def pydoc_text() -> Texts:
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
    return Texts("pydoc", "CPython pydoc_data.topics (stdlib)", text=text)


def austen_text() -> Texts:
    from .rdata import read_lazyload_db

    folder = austen_dir()
    if folder is None:
        raise PqqpError(f"corpus 'austen' is not available: {AUSTEN_HINT}")
    novels = read_lazyload_db(folder)
    text = "\n\n".join("\n".join(line or "" for line in novels[name]) for name in AUSTEN_NOVELS)
    return Texts("austen", f"Jane Austen's six novels ({folder})", text=text)


def wikitext2_text() -> Texts:
    try:
        from datasets import load_dataset

        parts = {s: load_dataset("wikitext", "wikitext-2-raw-v1", split=s) for s in ("train", "test")}
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PqqpError(f"corpus 'wikitext2' needs `datasets` and the HF hub (or its cache): {reason}") from None
    join = lambda split: "\n\n".join(parts[split]["text"])  # noqa: E731 (the GPTQ convention)
    return Texts("wikitext2", "WikiText-2 raw v1 (HF datasets)", calibration=join("train"), evaluation=join("test"))


def jsonl_rows(path: Path, content: str) -> list[str]:
    """The "text" of each non-empty line of a .jsonl file (a bare JSON string counts as the text)."""
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PqqpError(f"corpus file {path} line {number} is not JSON ({exc.msg}): accepted one {{\"text\": ...}} per line") from None
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            rows.append(row["text"])
        elif isinstance(row, str):
            rows.append(row)
        else:
            raise PqqpError(f"corpus file {path} line {number} has no \"text\" string: accepted one {{\"text\": ...}} per line")
    return rows


def file_text(path: Path) -> Texts:
    if not path.is_file():
        raise PqqpError(f"corpus file {path} does not exist; accepted: {', '.join(CORPORA)}, or a .txt/.jsonl path")
    if path.suffix not in (".jsonl", ".txt", ".md", ""):
        raise PqqpError(f"corpus file {path} has suffix {path.suffix!r}: accepted .txt or .jsonl (one {{\"text\": ...}} per line)")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PqqpError(f"corpus file {path} is not UTF-8 text (byte {exc.start}): accepted UTF-8 .txt or .jsonl") from None
    if "\x00" in content:
        raise PqqpError(f"corpus file {path} holds NUL bytes (first at character {content.index(chr(0))}): accepted "
                        f"UTF-8 text, not a binary file")
    text = "\n\n".join(jsonl_rows(path, content)) if path.suffix == ".jsonl" else content
    if not text.strip():
        raise PqqpError(f"corpus file {path} is empty: it needs text to calibrate and evaluate on")
    return Texts(path.stem, f"file {path}", text=text)


CORPORA: dict[str, Callable[[], Texts]] = {"pydoc": pydoc_text, "austen": austen_text, "wikitext2": wikitext2_text}


def load_texts(name: str) -> Texts:
    """A named corpus or a .txt/.jsonl path, as raw text."""
    if name in CORPORA:
        return CORPORA[name]()
    if name.endswith((".txt", ".jsonl", ".md")) or os.sep in name:
        return file_text(Path(name).expanduser())
    raise PqqpError(f"unknown corpus {name!r}: accepted {', '.join(CORPORA)}, or a path to a .txt/.jsonl file")


def corpus_fingerprint(name: str) -> str:
    """`<name>:<16 hex>`: the corpus's name (a file's own name) and the sha256 of its text as the harness reads it,
    so the same name with other content (an edited file, `pydoc` of another Python build) is another corpus."""
    texts = load_texts(name)
    digest = hashlib.sha256("\0".join((texts.text, texts.calibration, texts.evaluation)).encode("utf-8"))
    label = Path(name).expanduser().name if name not in CORPORA else name
    return f"{label}:{digest.hexdigest()[:16]}"


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer itself starts a text with its BOS token when asked for special tokens.

    Decided by what it does, not by its `add_bos_token` flag (a tokenizer converted from GGUF may report False
    and add BOS through its post-processor all the same) nor by the model's name."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    probe = "Hello"
    with_special = tokenizer(probe, add_special_tokens=True, verbose=False)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"]
    return bool(with_special) and with_special[0] == bos and (not plain or plain[0] != bos)


def bos_token(tokenizer: PreTrainedTokenizerBase, setting: str = "auto") -> int | None:
    """The BOS id every window starts with under `setting` (auto | always | never), or None for none."""
    check_bos(setting)
    if setting == "never" or (setting == "auto" and not adds_bos(tokenizer)):
        return None
    if tokenizer.bos_token_id is None:
        raise PqqpError("bos='always' but the tokenizer has no BOS token: accepted auto or never for this model")
    return int(tokenizer.bos_token_id)


def bos_label(bos: int | None) -> str:
    """How a window starts, as keys and reports print it: `bos` or `none`."""
    return "none" if bos is None else "bos"


def load_corpus(name: str, tokenizer: PreTrainedTokenizerBase, holdout: float = DEFAULT_HOLDOUT,
                bos: str = "auto") -> Corpus:
    """Tokenize a corpus and split it into calibration and evaluation tokens; windows start with BOS as `bos`
    (auto | always | never) says (`bos_token`)."""
    if not 0.0 < holdout < 1.0:
        raise PqqpError(f"holdout={holdout} is not a fraction: accepted a float in (0, 1)")
    start = bos_token(tokenizer, bos)
    texts = load_texts(name)
    if texts.text:
        ids = tokenize(tokenizer, texts.text)
        cut = int(round(ids.numel() * (1.0 - holdout)))
        split = f"first {1 - holdout:.0%} of {ids.numel()} tokens calibrate, last {holdout:.0%} evaluate"
        return Corpus(texts.name, texts.source, ids[:cut], ids[cut:], split, start)
    return Corpus(
        texts.name,
        texts.source,
        tokenize(tokenizer, texts.calibration),
        tokenize(tokenizer, texts.evaluation),
        "train split calibrates, test split evaluates",
        start,
    )
