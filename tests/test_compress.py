"""The layer-wise engine: order semantics, kept masks, calibration propagation, determinism, records."""

from __future__ import annotations

import copy

import pytest
import torch

from pqqp_bench.compress import block_linears, compress, decoder_blocks
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods import LayerWork
from pqqp_bench.methods.prune import Magnitude, Wanda
from pqqp_bench.methods.quantize import KV_ATTENTION, fake_quant_symmetric
from pqqp_bench.spec import Recipe, parse_recipe

from conftest import tiny_gemma3, tiny_llama


def linear_weights(model) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def decoder_weights(model) -> dict[str, torch.Tensor]:
    return {n: w for n, w in linear_weights(model).items() if "layers." in n}


class Probe(Wanda):
    """Wanda that also keeps a copy of the statistics it was handed, per block."""

    name = "probe"

    def __init__(self, seen: dict, **values) -> None:
        super().__init__(**values)
        self.seen = seen

    def apply(self, work: LayerWork) -> None:
        self.seen[work.index] = {k: v.clone() for k, v in work.stats.items()}
        super().apply(work)


@pytest.mark.parametrize("pruner", ["wanda:p=0.5", "magnitude:p=0.3", "wanda:nm=2:4"])
def test_prune_then_quantize_keeps_every_pruned_weight_at_zero(model, tokens, pruner: str) -> None:
    dense = decoder_weights(model)
    report = compress(model, parse_recipe(f"{pruner} > rtn:w=3,a=4,kv=4"), tokens, progress=False)
    sparsity = parse_recipe(pruner).stages[0].sparsity
    for name, weight in decoder_weights(model).items():
        rows, cols = weight.shape
        assert (weight == 0).sum(dim=1).ge(round(sparsity * cols)).all(), name
        assert not torch.equal(weight, dense[name] * (weight != 0))  # the kept weights were quantized
    achieved = report.achieved()
    # exact up to rounding p * in_features to whole weights per row (64 inputs here: 0.5/64)
    assert achieved["sparsity"] == pytest.approx(sparsity, abs=0.5 / 64)
    assert (achieved["w_bits"], achieved["a_bits"], achieved["kv_bits"]) == (3, 4, 4)
    assert achieved["total"] == pytest.approx(16 / 3 / (1 - achieved["sparsity"]))


def test_engine_refuses_a_stage_that_refills_pruned_weights(model, tokens) -> None:
    class Refill(Magnitude):
        name = "refill"

        def apply(self, work: LayerWork) -> None:
            for linear in work.linears.values():
                linear.weight.data.fill_(1.0)

    with pytest.raises(RuntimeError, match="mask not kept"):
        compress(model, Recipe((Magnitude(p=0.5), Refill(p=0.0))), tokens, progress=False)


def test_the_two_orders_give_different_weights(model, tokens) -> None:
    recipe = parse_recipe("wanda:p=0.5 > rtn:w=4,a=4,kv=4")
    pq, qp = copy.deepcopy(model), copy.deepcopy(model)
    compress(pq, recipe, tokens, progress=False)
    compress(qp, recipe.reversed(), tokens, progress=False)
    a, b = decoder_weights(pq), decoder_weights(qp)
    assert any(not torch.equal(a[n], b[n]) for n in a)
    for weight in b.values():  # Q>P still prunes exactly half of each row
        assert (weight == 0).sum(dim=1).ge(weight.shape[1] // 2).all()


def test_same_seed_gives_bit_identical_models(model, tokens) -> None:
    recipe = parse_recipe("rtn:w=4,a=4,kv=4 > wanda:p=0.5")
    one, two = copy.deepcopy(model), copy.deepcopy(model)
    compress(one, recipe, tokens, seed=3, progress=False)
    compress(two, recipe, tokens, seed=3, progress=False)
    a, b = linear_weights(one), linear_weights(two)
    assert all(torch.equal(a[n], b[n]) for n in a)
    ids = tokens[:2]
    assert torch.equal(one(ids).logits, two(ids).logits)


def test_quantize_then_prune_decides_on_quantized_activations(model, tokens) -> None:
    seen: dict = {}
    recipe = Recipe((parse_recipe("rtn:w=4,a=4").stages[0], Probe(seen, p=0.5)))
    reference = copy.deepcopy(model)
    compress(model, recipe, tokens, progress=False)
    with torch.no_grad():
        block0 = decoder_blocks(reference)[0]
        x = block0.input_layernorm(reference.model.embed_tokens(tokens))
        expected = fake_quant_symmetric(x, 4).pow(2).sum(dim=(0, 1))
        unquantized = x.pow(2).sum(dim=(0, 1))
    got = seen[0]["self_attn.q_proj"]
    assert torch.allclose(got, expected, rtol=1e-5)
    assert not torch.allclose(got, unquantized, rtol=1e-3)


@pytest.mark.parametrize("schedule", ["staged", "fused"])
@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_each_block_is_calibrated_on_the_outputs_of_the_compressed_blocks_before_it(build, schedule, tokens) -> None:
    """Fused: a stage's statistics see the blocks before compressed by the whole run (probe, then RTN). Staged:
    by the stages up to its own (the probe's pass ends before RTN's starts)."""
    model = build()
    seen: dict = {}
    recipe = Recipe((Probe(seen, p=0.5), parse_recipe("rtn:w=4,a=4,kv=4").stages[0]))
    states = []
    compress(model, recipe, tokens, progress=False, schedule=schedule, at_cut=lambda s: states.append(s.clone()))
    if schedule == "staged":
        model = states[0].model  # the model after the probe's pass
    with torch.no_grad():
        hidden = model(tokens, output_hidden_states=True).hidden_states
    blocks = decoder_blocks(model)
    for index in range(1, len(blocks)):  # Gemma 3 alternates sliding-window and global attention blocks
        x = blocks[index].input_layernorm(hidden[index])
        assert torch.allclose(seen[index]["self_attn.q_proj"], x.pow(2).sum(dim=(0, 1)), rtol=1e-4), index


def test_kv_quantization_acts_in_the_forward_pass(model, tokens) -> None:
    before = model(tokens[:2]).logits
    compress(model, parse_recipe("rtn:kv=3"), progress=False)
    assert model.config._attn_implementation == KV_ATTENTION
    after = model(tokens[:2]).logits
    assert not torch.allclose(before, after, atol=1e-4)
    assert all(torch.equal(w, decoder_weights(model)[n]) for n, w in decoder_weights(model).items())


def test_kv_error_falls_as_bits_rise(tokens) -> None:
    dense = tiny_llama()(tokens[:2]).logits
    errors = []
    for bits in (2, 4, 8):
        model = tiny_llama()
        compress(model, parse_recipe(f"rtn:kv={bits}"), progress=False)
        errors.append((model(tokens[:2]).logits - dense).abs().mean().item())
    assert errors[0] > errors[1] > errors[2]


def test_dense_recipe_changes_nothing_and_calibration_is_required_when_needed(model, tokens) -> None:
    before = linear_weights(model)
    report = compress(model, parse_recipe("dense"), progress=False)
    assert report.achieved()["total"] == 1.0
    assert all(torch.equal(before[n], w) for n, w in linear_weights(model).items())
    with pytest.raises(PqqpError, match="needs calibration samples"):
        compress(model, parse_recipe("wanda:p=0.5"), None, progress=False)


def test_report_records_every_decoder_linear(model, tokens) -> None:
    report = compress(model, parse_recipe("magnitude:p=0.25 > rtn:w=8"), progress=False)
    expected = sum(len(block_linears(b)) for b in decoder_blocks(model))
    assert len(report.linears) == expected
    assert {r.mask_sparsity for r in report.linears} == {0.25}
    assert {r.w_bits for r in report.linears} == {8}
    assert report.requested == {"prune": 4 / 3, "quant": 2.0, "total": 8 / 3}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_compress_runs_block_by_block_on_cuda(model, tokens) -> None:
    report = compress(model, parse_recipe("wanda:p=0.5 > rtn:w=4,a=4,kv=4"), tokens, device="cuda", progress=False)
    assert next(model.parameters()).device.type == "cpu"
    assert report.achieved()["sparsity"] == pytest.approx(0.5)
