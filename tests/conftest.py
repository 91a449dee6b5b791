"""Shared fixtures: tiny random models and a character tokenizer built in the test, no downloads."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

pytest_plugins = ["pytester"]

CHARS = string.printable


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable character, plus <unk>: enough for corpus and CLI tests."""
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")


def tiny_llama(seed: int = 0, layers: int = 2, hidden: int = 64, context: int = 256, heads: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(CHARS) + 1, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=context, use_cache=False,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gemma3(seed: int = 0) -> Gemma3ForCausalLM:
    """A Gemma 3 text model whose sliding-window and global layers get different masks and rotary bases."""
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(CHARS) + 1, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        sliding_window=8, use_cache=False,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    )
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return char_tokenizer()


@pytest.fixture
def model() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture
def tokens() -> torch.Tensor:
    """Eight random calibration windows of 32 tokens."""
    return torch.randint(1, len(CHARS) + 1, (8, 32), generator=torch.Generator().manual_seed(1))


def save_tiny_llama(folder: Path) -> Path:
    """A tiny Llama with its tokenizer saved as a local HF folder."""
    tiny_llama().save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def write_corpus(path: Path) -> Path:
    """A small English-like text file, long enough for a few windows of 32 characters."""
    words = "the order of pruning and quantization changes a compressed model".split()
    gen = torch.Generator().manual_seed(2)
    path.write_text(" ".join(words[i] for i in torch.randint(0, len(words), (3000,), generator=gen).tolist()))
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return save_tiny_llama(tmp_path / "tiny-llama")


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.txt")


OUTCOMES = ("PASSED", "FAILED", "SKIPPED", "ERROR")


def outcomes(output: str, prefix: str) -> list[str]:
    """Each `prefix[...]` test's outcome, from pytest -v's progress lines (`id OUTCOME`) and -rA's summary lines
    (`OUTCOME id`; a skipped test's summary line has no id, and -s can split a progress line)."""
    found = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) > 1 and f"::{prefix}[" in words[0] and words[1] in OUTCOMES:
            found[words[0]] = words[1]
        elif len(words) > 1 and words[0] in OUTCOMES and f"::{prefix}[" in words[1]:
            found[words[1]] = words[0]
    return list(found.values())
