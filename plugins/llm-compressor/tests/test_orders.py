"""Both orders with the harness's own methods, end to end through `compress`, with the honest outcome.

llm-compressor's GPTQ does not know the harness's masks: its error compensation moves pruned weights off
zero, and those the 4-bit grid does not round back to zero stay non-zero. The engine's reconcile then shrinks
the mask to the weights still zero and flags the case; the achieved sparsity is the honest one. In the other
order the harness's SparseGPT keeps llm-compressor's grid, and nothing is lost.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch

from pqqp_bench.blocks import block_linears, decoder_blocks


def zeros(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": linear.weight == 0 for i, block in enumerate(decoder_blocks(model))
            for name, linear in block_linears(block).items()}


def share(masks: dict[str, torch.Tensor]) -> float:
    return sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


def test_prune_then_llmc_gptq_reports_what_survived(compressed: Callable) -> None:
    pruned = zeros(compressed("sparsegpt:p=0.5")[0])  # the same first stage alone (deterministic)
    model, report = compressed("sparsegpt:p=0.5 > llmc-gptq:w=4")
    after = zeros(model)
    survived = {k: pruned[k] & after[k] for k in pruned}  # pruned and still zero
    refilled = 1 - share(survived) / share(pruned)
    achieved = report.achieved()
    assert achieved["sparsity"] == pytest.approx(share(survived))  # the mask is what is still zero
    assert achieved["w_bits"] == 4  # every weight on llm-compressor's grid
    if refilled > 0:  # llm-compressor 0.14: it refills (about 3% of the pruned weights on this model)
        assert achieved["sparsity"] < 0.5
        assert len(report.flags) == 1, report.flags
        line = re.fullmatch(r"llmc-gptq:w=4 refilled ([\d.]+)% of the weights pruned before it \(in (\d+) Linears\)",
                            report.flags[0])
        assert line and float(line[1]) == pytest.approx(100 * refilled, abs=0.05)
    else:
        assert achieved["sparsity"] == pytest.approx(share(pruned)) and not report.flags


def test_llmc_gptq_then_prune_keeps_both(compressed: Callable) -> None:
    model, report = compressed("llmc-gptq:w=4 > sparsegpt:p=0.5")
    achieved = report.achieved()
    assert achieved["sparsity"] == pytest.approx(0.5, abs=1 / 64) and achieved["w_bits"] == 4
    assert not report.flags
    quantized = compressed("llmc-gptq:w=4")[1]
    for path, grid in quantized.grids.items():  # the harness's SparseGPT rounded onto llm-compressor's grid
        assert torch.equal(report.grids[path].scale, grid.scale)


def test_prune_then_llmc_rtn_keeps_the_mask(compressed: Callable) -> None:
    """Round-to-nearest on a symmetric grid maps zero to zero: nothing to flag."""
    report = compressed("sparsegpt:p=0.5 > llmc-rtn:w=4")[1]
    assert report.achieved()["sparsity"] == pytest.approx(0.5, abs=1 / 64) and report.achieved()["w_bits"] == 4
    assert not report.flags


def test_quantize_then_llmc_sparsegpt_leaves_the_grid_and_says_so(compressed: Callable) -> None:
    """llm-compressor's SparseGPT updates the kept weights without the harness's grid: they leave it, the
    Linears count as not quantized, and the case is flagged."""
    report = compressed("gptq:w=4 > llmc-sparsegpt:p=0.5")[1]
    assert report.achieved()["w_bits"] is None and report.achieved()["sparsity"] == pytest.approx(0.5, abs=1 / 64)
    assert report.flags == ["llmc-sparsegpt:p=0.5 moved 14 quantized Linears off their grid: counted as not quantized"]


def test_quantize_then_llmc_wanda_keeps_the_grid(compressed: Callable) -> None:
    """Wanda only zeroes weights, and zero is on a symmetric grid: both hold."""
    report = compressed("gptq:w=4 > llmc-wanda:p=0.5")[1]
    assert report.achieved()["w_bits"] == 4 and report.achieved()["sparsity"] == pytest.approx(0.5)
    assert not report.flags


def test_after_a_rotation(compressed: Callable, tokens: torch.Tensor) -> None:
    """quarot's online Hadamards (forward pre-hooks) and attention function survive oneshot, and llm-compressor's
    GPTQ calibrates through them: 8-bit weights stay within 1% of the dense model's logits (the rotation is exact)."""
    from conftest import tiny_llama

    model, report = compressed("quarot > llmc-gptq:w=8")
    assert report.achieved()["w_bits"] == 8 and not report.flags
    assert model.model.layers[0].mlp.down_proj._forward_pre_hooks
    with torch.no_grad():
        dense, rotated = tiny_llama()(tokens).logits, model(tokens).logits
    assert float((rotated - dense).norm() / dense.norm()) < 0.01
