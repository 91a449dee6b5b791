"""LoRA recovery: training helps, adapters stay unmerged beside the compressed base weights (P>Q>L keeps mask and
grid, Q>L>P prunes the base weights with statistics of the adapted model), gradients pass the fake quantizers,
determinism, one-line errors, and the recipe order."""

from __future__ import annotations

import sys
from typing import ClassVar

import pytest
import torch

from pqqp_bench.blocks import block_linears, decoder_blocks
from pqqp_bench.compress import compress
from pqqp_bench.methods.statistics import input_statistics
from pqqp_bench.errors import PqqpError
from pqqp_bench.export import export
from pqqp_bench.methods.base import LayerWork, Method
from pqqp_bench.methods.lora import ADAPTER, LoRA, add_adapters, adapter_layers, next_token_loss
from pqqp_bench.methods.quantize import fake_quant_asymmetric, fake_quant_symmetric
from pqqp_bench.spec import Recipe, parse_recipe
from pqqp_bench.suite import Suite

from conftest import tiny_llama

PQ = "sparsegpt:p=0.3 > rtn:w=4,a=4,kv=4"


def compressed(recipe: str | Recipe, tokens: torch.Tensor, seed: int = 0):
    model = tiny_llama()
    recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    return model, compress(model, recipe, tokens, seed=seed, progress=False)


def adapters(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def base_weights(model) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": lin.weight.detach().clone()
            for i, block in enumerate(decoder_blocks(model)) for n, lin in block_linears(block).items()}


@torch.no_grad()
def calibration_loss(model, tokens: torch.Tensor) -> float:
    return next_token_loss(model, tokens).item()


def test_training_lowers_the_calibration_loss_of_a_quantized_model(tokens) -> None:
    quantized, _ = compressed("rtn:w=4,a=8", tokens)
    tuned, report = compressed("rtn:w=4,a=8 > lora:steps=30,lr=0.01", tokens)
    before, after = calibration_loss(quantized, tokens), calibration_loss(tuned, tokens)
    assert after < before - 0.1, (before, after)
    info = report.structure[0]
    assert info["stage"] == "lora:steps=30,lr=0.01" and info["steps"] == 30 and info["last_loss"] < info["first_loss"]
    hidden, inner, kv = 64, 128, 32  # tiny_llama: k/v project to 2 heads of 16
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inner), (hidden, inner), (inner, hidden)]
    assert info["adapter_params"] == 2 * sum(8 * (i + o) for i, o in shapes)  # r (in + out) per Linear, 2 blocks
    assert info["adapter_fraction"] == pytest.approx(info["adapter_params"] / (2 * sum(i * o for i, o in shapes)))


def test_pql_keeps_the_mask_and_grid_of_the_base_weights(tokens) -> None:
    plain, _ = compressed(PQ, tokens)
    tuned, report = compressed(f"{PQ} > lora:steps=5", tokens)  # the engine's record() checks masks and grids
    assert parse_recipe(report.recipe).order == "P>Q>L"
    achieved = report.achieved()
    assert achieved["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert (achieved["w_bits"], achieved["a_bits"], achieved["kv_bits"]) == (4, 4, 4)
    before, after = base_weights(plain), base_weights(tuned)
    assert all(torch.equal(before[k], after[k]) for k in before)  # adapters beside the weights, never merged in
    assert all(p.abs().sum() > 0 for n, p in adapters(tuned).items() if "lora_B" in n)  # and trained
    assert sorted(block_linears(decoder_blocks(tuned)[0])) == sorted(block_linears(decoder_blocks(plain)[0]))
    with torch.no_grad():
        assert not torch.equal(tuned(tokens[:1]).logits, plain(tokens[:1]).logits)


class MergeAdapters(Method):
    """Merges the adapters into the base weights: what the harness must not do (and record() must catch)."""

    name, kind, scope, granularity, needs_calibration = "merge", "tune", "model", "weights", False

    def ratio(self) -> float:
        return 1.0

    def apply_model(self, model, calibration, device, seed, progress=True) -> dict:
        for layer in adapter_layers(model):
            layer.merge()
        return {}


def test_record_catches_adapters_merged_into_pruned_quantized_weights(tokens) -> None:
    recipe = Recipe(parse_recipe(f"{PQ} > lora:steps=3").stages + (MergeAdapters(),))
    with pytest.raises(RuntimeError, match="pruned weights non-zero"):
        compressed(recipe, tokens)


@pytest.mark.parametrize("basis", ["", "quarot > "])
def test_qlp_prunes_the_base_weights_and_keeps_the_adapters(basis, tokens) -> None:
    model, report = compressed(f"{basis}rtn:w=4,a=4,kv=4 > lora:steps=5 > sparsegpt:p=0.3", tokens)
    assert parse_recipe(report.recipe).order == "Q>L>P"
    achieved = report.achieved()
    assert achieved["sparsity"] == pytest.approx(0.3, abs=0.01) and achieved["w_bits"] == 4
    layers = adapter_layers(model)
    assert len(layers) == 14 and all(layer.lora_B[ADAPTER].weight.abs().sum() > 0 for layer in layers)
    rows = {row.name: row for row in report.linears}
    for index, block in enumerate(decoder_blocks(model)):
        for name, linear in block_linears(block).items():
            assert block.get_submodule(name).base_layer is linear
            row = rows[f"blocks.{index}.{name}"]
            assert row.mask_sparsity == pytest.approx(0.3, abs=0.01) and row.w_bits == 4, row
            assert (linear.weight == 0).float().mean().item() >= row.mask_sparsity, name


class Spy(Method):
    """A layer-scope stage that keeps the input statistics the engine hands it."""

    name, kind, granularity, needs_calibration, statistic = "spy", "tune", "weights", True, "sqnorm"
    seen: ClassVar[dict[str, torch.Tensor]]

    def ratio(self) -> float:
        return 1.0

    def apply(self, work: LayerWork) -> None:
        Spy.seen.update({f"{work.index}.{n}": s.clone() for n, s in work.stats.items()})


def test_a_later_stage_sees_the_adapted_model(tokens) -> None:
    Spy.seen = {}
    model, _ = compressed(Recipe(parse_recipe("rtn:w=4,a=4,kv=4 > lora:steps=5,lr=0.01").stages + (Spy(),)), tokens)
    linears = {f"{i}.{n}": lin for i, b in enumerate(decoder_blocks(model)) for n, lin in block_linears(b).items()}

    def reference() -> dict[str, torch.Tensor]:
        with torch.no_grad(), input_statistics(linears, "sqnorm") as stats:
            for sample in tokens:
                model(sample.unsqueeze(0))
        return dict(stats)

    adapted = reference()
    for layer in adapter_layers(model):
        layer.enable_adapters(False)
    plain = reference()
    assert sorted(Spy.seen) == sorted(adapted)
    for name, stat in Spy.seen.items():
        assert torch.allclose(stat, adapted[name], rtol=1e-4, atol=1e-6), name
    assert not torch.allclose(Spy.seen["1.self_attn.q_proj"], plain["1.self_attn.q_proj"], rtol=1e-3)


def test_straight_through_keeps_values_and_passes_gradients() -> None:
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 3
    for quantize in (lambda t: fake_quant_symmetric(t, 4), lambda t: fake_quant_asymmetric(t, 3)):
        leaf = x.clone().requires_grad_(True)
        out = quantize(leaf)
        out.backward(torch.arange(16.0).expand(4, 16))
        assert torch.equal(out.detach(), quantize(x))  # the very values the no-grad forward gives
        assert torch.equal(leaf.grad, torch.arange(16.0).expand(4, 16))


def test_gradients_reach_block0_adapters_through_quantized_activations_and_kv(tokens) -> None:
    model, _ = compressed("rtn:w=4,a=4,kv=4", tokens)
    add_adapters(model, "all", r=4, alpha=8.0, dropout=0.0)
    next_token_loss(model, tokens[:2]).backward()
    block = decoder_blocks(model)[0]
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj"):
        grad = block.get_submodule(name).lora_B[ADAPTER].weight.grad
        assert grad is not None and grad.abs().sum() > 0, name  # B = 0 at init: only the STE carries these
    assert all(lin.weight.grad is None for lin in block_linears(block).values())


def test_deterministic_given_the_seed(tokens) -> None:
    recipe = "rtn:w=4,a=4 > lora:steps=4,dropout=0.1"
    (a, ra), (b, rb), (c, _) = (compressed(recipe, tokens, seed=s) for s in (3, 3, 4))
    first, again, other = adapters(a), adapters(b), adapters(c)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert ra.structure[0]["last_loss"] == rb.structure[0]["last_loss"]
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert not any(layer.training for layer in adapter_layers(a))  # no adapter dropout once trained
    with torch.no_grad():
        assert torch.equal(a(tokens[:2]).logits, a(tokens[:2]).logits)


def test_targets_pick_linears_by_name(tokens) -> None:
    model, report = compressed("rtn:w=8 > lora:steps=2,targets=q_proj+mlp.down_proj,r=2", tokens)
    wrapped = sorted(n for n, m in decoder_blocks(model)[0].named_modules() if hasattr(m, "lora_A"))
    assert wrapped == ["mlp.down_proj", "self_attn.q_proj"]
    assert report.structure[0]["adapter_params"] == 2 * 2 * ((64 + 64) + (128 + 64))


@pytest.mark.parametrize("text, match", [
    ("lora:r=0", "bad value r='0'"),
    ("lora:steps=few", "bad value steps='few'"),
    ("lora:lr=-1e-3", "bad value lr='-1e-3'"),
    ("lora:dropout=1", "bad value dropout='1'"),
    ("lora:targets=q_proj+", "bad value targets='q_proj\\+'"),
    ("lora:rank=8", "unknown parameter 'rank'"),
])
def test_bad_parameters_are_refused_in_one_line(text, match) -> None:
    with pytest.raises(PqqpError, match=match) as error:
        parse_recipe(text)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("recipe, match", [
    ("rtn:w=8 > lora:targets=w_proj", "targets=w_proj names no Linear"),
    ("rtn:w=8 > lora:r=40", "r=40 exceeds the smaller side of self_attn.k_proj"),
    ("lora:steps=1 > lora:steps=1", "already carries LoRA adapters"),
])
def test_recipes_that_cannot_run_are_refused(recipe, match, tokens) -> None:
    with pytest.raises(PqqpError, match=match) as error:
        compressed(recipe, tokens)
    assert "\n" not in str(error.value)


def test_missing_peft_names_the_extra(tokens, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(PqqpError, match=r"pip install 'pqqp-bench\[peft\]'"):
        compressed("lora:steps=1", tokens)


def test_orders_of_a_quantizer_template_with_recovery() -> None:
    suite = Suite(pruners=("sparsegpt",), quantizers=("rtn > lora:steps=7",), ratios=(0.3,), bits=(4,))
    pq, qp = (suite.joint("sparsegpt", "rtn > lora:steps=7", 0.3, 4, order) for order in ("P>Q", "Q>P"))
    assert str(pq) == "sparsegpt:p=0.3 > rtn:w=4,a=4,kv=4 > lora:steps=7" and pq.order == "P>Q>L"
    assert str(qp) == "rtn:w=4,a=4,kv=4 > lora:steps=7 > sparsegpt:p=0.3" and qp.order == "Q>L>P"
    assert pq.ratios() == parse_recipe("sparsegpt:p=0.3 > rtn:w=4,a=4,kv=4").ratios()  # LoRA compresses nothing
    text = "lora:r=4,alpha=8,steps=10,lr=0.002,batch=2,targets=q_proj+v_proj,dropout=0.05"
    assert str(parse_recipe(text)) == text and parse_recipe(str(parse_recipe(text))) == parse_recipe(text)
    assert LoRA().values["targets"] == "all"


def test_export_refuses_lora(tokens, tokenizer, tmp_path) -> None:
    model, report = compressed("rtn:w=8,a=8 > lora:steps=1", tokens)
    with pytest.raises(PqqpError, match="LoRA adapters stay unmerged"):
        export(model, tokenizer, report, tmp_path / "m")

