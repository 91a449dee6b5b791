"""Timings for pytest-benchmark, so a CI can gate on them with pytest-benchmark's own comparison:

    pytest benchmarks/test_timings.py --benchmark-autosave                  # once, on the reference commit
    pytest benchmarks/test_timings.py --benchmark-compare --benchmark-compare-fail=median:10%

A small random Llama (4 blocks, width 256) stands in for a real model: the numbers are the harness's own cost
(the layer-wise compression engine and the perplexity loop), not a model's, and take seconds.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pqqp_bench.compress import compress
from pqqp_bench.evaluate import perplexity
from pqqp_bench.spec import parse_recipe

VOCAB, SEQLEN = 512, 128


def small_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQLEN, use_cache=False)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, SEQLEN), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("recipe", ["wanda:p=0.5 > rtn:w=4,a=4,kv=4", "rtn:w=4,a=4,kv=4 > wanda:p=0.5"])
def test_compress(benchmark, windows: torch.Tensor, recipe: str) -> None:
    report = benchmark.pedantic(lambda model: compress(model, parse_recipe(recipe), windows, progress=False),
                                setup=lambda: ((small_llama(),), {}), rounds=5)
    assert report.achieved()["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_perplexity(benchmark, windows: torch.Tensor) -> None:
    result = benchmark(perplexity, small_llama(), windows, progress=False)
    assert result.windows == 8
