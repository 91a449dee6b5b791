"""Each method on its own: requested sparsity and bit width reached, weights on the returned grids, plain
Linears afterwards, deterministic, quiet without progress, the library's warnings recorded with the case."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

from pqqp_bench.blocks import block_linears, decoder_blocks
from pqqp_bench.compress import compress
from pqqp_bench.spec import parse_recipe

from conftest import calibration_tokens, tiny_llama

LINEARS = 14  # 2 blocks x (q, k, v, o, gate, up, down)


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {f"blocks.{i}.{name}": linear for i, block in enumerate(decoder_blocks(model))
            for name, linear in block_linears(block).items()}


@pytest.mark.parametrize("recipe, sparsity", [
    ("llmc-sparsegpt:p=0.5", 0.5), ("llmc-sparsegpt:p=0.3", 0.3), ("llmc-wanda:p=0.5", 0.5), ("llmc-wanda:p=0.3", 0.3),
])
def test_unstructured_pruners_reach_the_requested_sparsity(compressed: Callable, recipe: str, sparsity: float) -> None:
    model, report = compressed(recipe)
    achieved = report.achieved()
    # SparseGPT prunes int(p * block weights) + 1 per block of columns (its threshold keeps ties), Wanda
    # int(p * in_features) per row: within one weight per row of the request
    assert achieved["sparsity"] == pytest.approx(sparsity, abs=1 / 64)
    assert achieved["sparsity"] == pytest.approx(achieved["zero_fraction"])
    assert achieved["w_bits"] is None and not report.flags
    if "wanda" in recipe:  # per output row, exactly
        for linear in decoder_linears(model).values():
            zeros = (linear.weight == 0).sum(dim=1)
            assert torch.all(zeros == int(sparsity * linear.in_features))
    assert report.structure[0]["library"].startswith("llmcompressor 0.14")


@pytest.mark.parametrize("recipe", ["llmc-sparsegpt:nm=2:4", "llmc-wanda:nm=2:4", "llmc-sparsegpt:nm=1:4"])
def test_n_of_m_keeps_n_of_every_m(compressed: Callable, recipe: str) -> None:
    model, report = compressed(recipe)
    n, m = (int(x) for x in recipe.split("nm=")[1].split(":"))
    assert report.achieved()["sparsity"] == pytest.approx(1 - n / m)
    for linear in decoder_linears(model).values():
        kept = (linear.weight != 0).reshape(linear.out_features, -1, m).sum(dim=-1)
        assert torch.all(kept == n)


@pytest.mark.parametrize("recipe, bits, group", [
    ("llmc-gptq:w=4,g=32", 4, 32), ("llmc-gptq:w=3", 3, None), ("llmc-rtn:w=4,g=32", 4, 32), ("llmc-rtn:w=8", 8, None),
    ("llmc-rtn:w=4,g=16,clip=mse", 4, 16),
])
def test_quantizers_leave_weights_on_the_returned_grid(compressed: Callable, recipe: str, bits: int,
                                                      group: int | None) -> None:
    model, report = compressed(recipe)
    assert report.achieved()["w_bits"] == bits and not report.flags
    linears = decoder_linears(model)
    assert sorted(report.grids) == sorted(linears) and len(linears) == LINEARS
    for path, linear in linears.items():
        grid = report.grids[path]
        assert grid.bits == bits and grid.symmetric and grid.group == (group or linear.in_features)
        assert torch.equal(grid.round(linear.weight.data), linear.weight.data)  # exactly on the grid
        levels = (linear.weight.data.reshape(linear.out_features, -1, grid.group) / grid.scale.unsqueeze(-1)).round()
        assert levels.min() >= -(2 ** (bits - 1)) and levels.max() <= 2 ** (bits - 1) - 1


@pytest.mark.parametrize("recipe", ["llmc-gptq:w=4,g=32", "llmc-sparsegpt:p=0.5", "llmc-rtn:w=4,g=32"])
def test_plain_modules_afterwards(compressed: Callable, recipe: str) -> None:
    """No quantization wrapper, qparam, offloading cache or forward override is left: later harness stages,
    reports and exports see ordinary Linears holding the computed weights; lm_head and embeddings untouched."""
    model, report = compressed(recipe)
    dense = tiny_llama()
    for module, fresh in zip(model.modules(), dense.modules(), strict=True):
        assert type(module._parameters) is dict and set(vars(module)) == set(vars(fresh))
        assert not (module._forward_hooks or module._forward_pre_hooks)
    for linear in decoder_linears(model).values():
        assert set(linear._parameters) == {"weight", "bias"} and isinstance(linear.weight, nn.Parameter)
    assert "save_pretrained" not in vars(model) and model.config.name_or_path == dense.config.name_or_path
    assert torch.equal(model.lm_head.weight, dense.lm_head.weight)
    assert torch.equal(model.get_input_embeddings().weight, dense.get_input_embeddings().weight)
    json.dumps(report.as_dict())  # what the stage recorded is storable


def test_tied_embeddings_stay_tied(tokens: torch.Tensor) -> None:
    model = tiny_llama()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.get_input_embeddings().weight
    compress(model, parse_recipe("llmc-rtn:w=4"), tokens, progress=False)
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_deterministic(compressed: Callable, tokens: torch.Tensor) -> None:
    first, _ = compressed("llmc-gptq:w=4,g=32")
    again = tiny_llama()
    compress(again, parse_recipe("llmc-gptq:w=4,g=32"), tokens, progress=False)
    for (name, a), b in zip(first.named_parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_quiet_without_progress(capfd: pytest.CaptureFixture, tokens: torch.Tensor) -> None:
    compress(tiny_llama(), parse_recipe("llmc-wanda:p=0.5"), tokens, progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    compress(tiny_llama(), parse_recipe("llmc-wanda:p=0.5"), tokens, progress=True)
    assert "Calibrating" in capfd.readouterr().err  # llm-compressor's own bars


def test_library_fallbacks_are_recorded_with_the_case() -> None:
    """With four calibration tokens and no dampening the Hessians are singular: llm-compressor quantizes
    every Linear with round-to-nearest instead, and says so; the stage records what it said."""
    model = tiny_llama()
    report = compress(model, parse_recipe("llmc-gptq:w=4,damp=0"), calibration_tokens(1, 4), progress=False)
    warnings = report.structure[0]["library warnings"]
    assert any("Hessian inversion failed for 14/14 modules" in line for line in warnings), warnings
    assert report.achieved()["w_bits"] == 4


def test_a_failed_oneshot_leaves_no_wrapper(monkeypatch: pytest.MonkeyPatch, tokens: torch.Tensor) -> None:
    """The library's error reaches the caller; the model keeps no quantization wrapper, observer or offloading."""
    from pqqp_llmc.session import library

    library()
    from llmcompressor.modifiers.gptq import GPTQModifier

    def fail(self: GPTQModifier) -> None:
        raise RuntimeError("compress_modules failed")

    monkeypatch.setattr(GPTQModifier, "compress_modules", fail)
    model, dense = tiny_llama(), tiny_llama()
    with pytest.raises(RuntimeError, match="compress_modules failed"):
        compress(model, parse_recipe("llmc-gptq:w=4"), tokens, progress=False)
    for module, fresh in zip(model.modules(), dense.modules(), strict=True):
        assert type(module._parameters) is dict and set(vars(module)) == set(vars(fresh))
        assert set(module._parameters) == set(fresh._parameters) and set(module._modules) == set(fresh._modules)
        assert not (module._forward_hooks or module._forward_pre_hooks)
