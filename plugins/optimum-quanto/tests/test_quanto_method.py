"""The `quanto` method computes what optimum-quanto computes, and later pruners really act on it.

References are quanto's own results on copies of the same Linears (`quantize` + `freeze` + `.dequantize()`, or
`quantize_weight` for the zeropoint option); the adapted model is compared with them, then run through both
orders with the harness's pruners.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from optimum.quanto import (
    Calibration, HqqOptimizer, MaxOptimizer, QModuleMixin, freeze, qint2, qint4, qint8, quantize, quantize_weight,
)
from pqqp_bench.blocks import block_linears, decoder_blocks
from pqqp_bench.compress import compress
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods.quantize import WeightGrid
from pqqp_bench.spec import parse_recipe
from torch import nn

from conftest import tiny_llama
from pqqp_quanto.adapter import QuantoActivation
from pqqp_quanto.grids import ShiftedGrid

QTYPES = {8: qint8, 4: qint4, 2: qint2}


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every decoder Linear by the harness's path, `blocks.<i>.<name>`."""
    blocks = enumerate(decoder_blocks(model))
    return {f"blocks.{i}.{name}": lin for i, block in blocks for name, lin in block_linears(block).items()}


def quanto_linear(linear: nn.Linear, bits: int, group: int | str | None = "auto", **options) -> nn.Module:
    """A frozen quanto QLinear made from a copy of `linear` with quanto's public API."""
    wrapper = nn.Sequential(copy.deepcopy(linear))
    with torch.no_grad():
        quantize(wrapper, weights=QTYPES[bits], **options)
        if group != "auto":
            wrapper[0].weight_group_size = group
        freeze(wrapper)
    return wrapper[0]


def zeropoint_reference(weight: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """quanto's affine quantization with its integer zero point (`zeropoint=True`), dequantized."""
    scale, shift = MaxOptimizer()(weight, QTYPES[bits], axis=0, group_size=group, zeropoint=True)
    return quantize_weight(weight, QTYPES[bits], axis=0, scale=scale, shift=shift, group_size=group).dequantize()


def run(model: nn.Module, recipe: str, tokens: torch.Tensor | None = None):
    return compress(model, parse_recipe(recipe), tokens, progress=False)


# --- what quanto itself does (why the adapter dequantizes) -------------------------------------------------------


def test_zeroing_a_frozen_qlinear_changes_nothing() -> None:
    """The pitfall: a frozen QLinear computes with its packed integer weight; zeros written into `.weight` are lost."""
    qlinear = quanto_linear(nn.Linear(64, 32), 4)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    before = qlinear(x)
    with torch.no_grad():
        qlinear.weight.data.mul_(0.0)
        qlinear.weight[:, :32] = 0.0
    assert torch.equal(qlinear(x), before)
    assert (qlinear.weight.dequantize() == 0).float().mean() < 0.05


def test_torch_prune_of_a_frozen_qlinear_is_requantized_away() -> None:
    """torch.nn.utils.prune makes `.weight` a float tensor with zeros, which the QLinear quantizes again at every
    call with a new float shift: the weight it computes with has (almost) no zeros, on another grid."""
    qlinear = quanto_linear(nn.Linear(64, 32), 4)
    torch_prune.l1_unstructured(qlinear, "weight", amount=0.5)
    assert (qlinear.weight == 0).float().mean() == 0.5
    assert (qlinear.qweight.dequantize() == 0).float().mean() < 0.05


@pytest.mark.parametrize("bits, group, zero_kept",
                         [(8, None, True), (4, "auto", False), (4, 32, False), (2, 16, False)])
def test_where_quanto_puts_zero(bits: int, group, zero_kept: bool) -> None:
    """int8 (symmetric) and the zeropoint option keep zero; quanto's default float shift (int4/int2) does not."""
    linear = nn.Linear(64, 32)
    with torch.no_grad():
        linear.weight[:, ::2] = 0.0
    weight = quanto_linear(linear, bits, group).weight.dequantize()
    assert bool((weight[:, ::2] == 0).all()) is zero_kept
    if bits < 8:
        reference = zeropoint_reference(linear.weight.data, bits, group if isinstance(group, int) else None)
        assert bool((reference[:, ::2] == 0).all())


# --- the adapter reproduces quanto ------------------------------------------------------------------------------


@pytest.mark.parametrize("stage, bits, group, options", [
    ("quanto:w=8", 8, "auto", {}),
    ("quanto:w=4", 4, "auto", {}),
    ("quanto:w=4,g=32", 4, 32, {}),
    ("quanto:w=2,g=16", 2, 16, {}),
    ("quanto:w=4,g=none", 4, None, {}),
    ("quanto:w=4,g=32,opt=hqq", 4, 32, {"hqq": True}),
])
def test_weights_are_quantos_dequantization(model: nn.Module, stage: str, bits: int, group, options: dict) -> None:
    before = {path: copy.deepcopy(lin) for path, lin in linears(model).items()}
    report = run(model, stage)
    optimizer = {"optimizer": HqqOptimizer()} if options.get("hqq") else {}
    for path, linear in linears(model).items():
        expected = quanto_linear(before[path], bits, group, **optimizer).weight.dequantize()
        assert type(linear) is nn.Linear and torch.equal(linear.weight.data, expected), path
        grid = report.grids[path]
        assert type(grid) is (WeightGrid if bits == 8 else ShiftedGrid) and grid.bits == bits
        assert torch.equal(grid.round(before[path].weight.data), expected), path  # the grid is quanto's, exactly
    assert report.achieved()["w_bits"] == bits and report.flags == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantos_own_group_size(dtype: torch.dtype) -> None:
    """g=auto is quanto's choice: 128 for in_features 256 and 512 (in bf16, quanto packs these for tinygemm)."""
    model = tiny_llama(layers=1, hidden=256).to(dtype)
    before = {path: copy.deepcopy(lin) for path, lin in linears(model).items()}
    report = run(model, "quanto:w=4")
    assert report.structure[0]["group_sizes"] == {"128": 7} and "grid_not_reproduced" not in report.structure[0]
    for path, linear in linears(model).items():
        expected = quanto_linear(before[path], 4).weight.dequantize()
        assert torch.equal(linear.weight.data, expected), path
        grid = report.grids[path]
        assert grid.group == 128 and torch.equal(grid.round(before[path].weight.data), expected), path


def test_integer_zero_point_is_quantos_zeropoint_option(model: nn.Module) -> None:
    before = {path: lin.weight.data.clone() for path, lin in linears(model).items()}
    report = run(model, "quanto:w=4,g=32,zp=int")
    for path, linear in linears(model).items():
        expected = zeropoint_reference(before[path], 4, 32)
        assert torch.equal(linear.weight.data, expected), path
        grid = report.grids[path]
        assert type(grid) is WeightGrid and not grid.symmetric and torch.equal(grid.zero, grid.zero.round())
        assert torch.equal(grid.round(before[path]), expected), path


def test_adapted_forward_equals_quantos_forward(model: nn.Module, tokens: torch.Tensor) -> None:
    """Weights only: the plain-Linear model computes what quanto's frozen QLinear model computes."""
    reference = copy.deepcopy(model)
    quantize(reference, weights=qint4, include=["model.layers.*"])
    for module in reference.modules():
        if isinstance(module, QModuleMixin):
            module.weight_group_size = 32
    freeze(reference)
    run(model, "quanto:w=4,g=32")
    assert not any(isinstance(m, QModuleMixin) for m in model.modules())
    assert sum(isinstance(m, QModuleMixin) for m in reference.modules()) == len(linears(model))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, reference(tokens).logits, rtol=1e-5, atol=1e-5)


def test_activation_hook_equals_quantos_input_quantization() -> None:
    """One W8A8 Linear: dequantized weight + the pre-hook compute what quanto's QLinear computes (its input
    quantization; the output quantization quanto may add is not reproduced, so it is disabled here)."""
    x = torch.randn(4, 16, 64, generator=torch.Generator().manual_seed(0))
    wrapper = nn.Sequential(nn.Linear(64, 32))
    quantize(wrapper, weights=qint8, activations=qint8)
    with torch.no_grad(), Calibration():
        wrapper(x)
    freeze(wrapper)
    qlinear = wrapper[0]
    qlinear.disable_output_quantization()
    plain = nn.Linear(64, 32)
    plain.weight.data.copy_(qlinear.weight.dequantize())
    plain.bias.data.copy_(qlinear.bias.data)
    plain.register_forward_pre_hook(QuantoActivation(qint8, qlinear.input_scale))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), qlinear(x), rtol=1e-5, atol=1e-5)


def test_activation_scales_are_quantos_calibration(model: nn.Module, tokens: torch.Tensor) -> None:
    reference = copy.deepcopy(model)
    quantize(reference, weights=qint8, activations=qint8, include=["model.layers.*"])
    with torch.no_grad(), Calibration():
        for window in tokens:
            reference(window.unsqueeze(0), use_cache=False)
    report = run(model, "quanto:w=8,a=int8", tokens)
    for path, linear in linears(model).items():
        (hook,) = [h for h in linear._forward_pre_hooks.values() if isinstance(h, QuantoActivation)]
        torch.testing.assert_close(hook.scale, linears(reference)[path].input_scale)
    assert report.achieved()["a_bits"] == 8 and report.achieved()["w_bits"] == 8


def test_module_identity_is_kept(model: nn.Module) -> None:
    """The harness holds the block Linears (LayerWork): after quanto they are the same objects, holding its weights."""
    held = linears(model)
    run(model, "quanto:w=4")
    assert all(linears(model)[path] is linear for path, linear in held.items())


def test_deterministic(model: nn.Module) -> None:
    other = copy.deepcopy(model)
    run(model, "quanto:w=4,g=32,opt=hqq")
    run(other, "quanto:w=4,g=32,opt=hqq")
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(linears(model).values(), linears(other).values()))


# --- both orders through the harness ----------------------------------------------------------------------------


@pytest.mark.parametrize("pruner", ["magnitude:p=0.5", "sparsegpt:p=0.5"])
def test_quantize_then_prune_reaches_the_requested_sparsity(pruner: str, tokens: torch.Tensor) -> None:
    """Q>P: the pruner acts on the weights the model computes with, and keeps them on quanto's grid."""
    model = tiny_llama(layers=1)
    report = run(model, f"quanto:w=4 > {pruner}", tokens)
    achieved = report.achieved()
    assert achieved["sparsity"] == pytest.approx(0.5) and achieved["w_bits"] == 4 and report.flags == []
    for path, linear in linears(model).items():
        assert type(linear) is nn.Linear and (linear.weight == 0).float().mean() >= 0.5
        assert report.grids[path].holds(linear.weight.data)
    with torch.no_grad():
        pruned_logits = model(tokens).logits
    dense = tiny_llama(layers=1)
    run(dense, "quanto:w=4")
    with torch.no_grad():
        assert not torch.allclose(pruned_logits, dense(tokens).logits)  # pruning changed what is computed


def test_prune_then_quantize_default_refills_the_mask(tokens: torch.Tensor) -> None:
    """P>Q with quanto's default float shift: zero is not on its int4 grid, so every pruned weight becomes
    non-zero; the engine takes the weights as they are and flags it."""
    model = tiny_llama(layers=1)
    report = run(model, "sparsegpt:p=0.5 > quanto:w=4", tokens)
    achieved = report.achieved()
    assert report.flags == ["quanto:w=4 refilled 100.0% of the weights pruned before it (in 7 Linears)"]
    assert achieved["sparsity"] < 0.01 and achieved["w_bits"] == 4


@pytest.mark.parametrize("quantizer", ["quanto:w=4,zp=int", "quanto:w=4,g=32,zp=int", "quanto:w=8"])
def test_prune_then_quantize_keeps_the_mask_where_zero_is_a_level(model: nn.Module, quantizer: str) -> None:
    report = run(model, f"magnitude:p=0.5 > {quantizer}")
    achieved = report.achieved()
    assert achieved["sparsity"] == pytest.approx(0.5) and report.flags == []
    assert achieved["w_bits"] == int(quantizer.split("w=")[1][0])


def test_w8a8_then_prune(model: nn.Module, tokens: torch.Tensor) -> None:
    report = run(model, "quanto:w=8,a=int8 > wanda:p=0.5", tokens)
    achieved = report.achieved()
    outcome = (achieved["sparsity"], achieved["w_bits"], achieved["a_bits"], report.flags)
    assert outcome == (pytest.approx(0.5), 8, 8, [])


def test_activations_need_calibration(model: nn.Module) -> None:
    with pytest.raises(PqqpError, match="needs calibration samples"):
        run(model, "quanto:w=8,a=int8")


def test_refuses_to_calibrate_through_earlier_hooks(model: nn.Module, tokens: torch.Tensor) -> None:
    linears(model)["blocks.0.mlp.down_proj"].register_forward_pre_hook(lambda module, args: args)
    with pytest.raises(PqqpError, match=r"forward pre-hooks .* on blocks\.0\.mlp\.down_proj .*accepted a=none"):
        run(model, "quanto:w=8,a=int8", tokens)
