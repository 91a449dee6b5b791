"""Perplexity: the GPTQ/SparseGPT window convention, checked against transformers' own loss."""

from __future__ import annotations

import math

import torch

from pqqp_bench.evaluate import perplexity


def test_perplexity_matches_the_mean_of_hf_window_losses(model, tokens) -> None:
    result = perplexity(model, tokens, progress=False)
    with torch.no_grad():
        losses = [model(w.unsqueeze(0), labels=w.unsqueeze(0)).loss.item() for w in tokens]
    assert math.isclose(result.ppl, math.exp(sum(losses) / len(losses)), rel_tol=1e-5)
    assert (result.windows, result.seqlen, result.tokens) == (8, 32, 8 * 31)
    assert len(result.window_nll) == 8
    assert math.isclose(sum(result.window_nll) / result.tokens, result.nll)


def test_batch_size_does_not_change_the_result(model, tokens) -> None:
    one = perplexity(model, tokens, batch_size=1, progress=False)
    three = perplexity(model, tokens, batch_size=3, progress=False)
    assert math.isclose(one.ppl, three.ppl, rel_tol=1e-5)
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(one.window_nll, three.window_nll))
