"""Basis Sharing: the fit against exact SVD facts (numpy), a basis that is really shared, the parameter budget,
whitening against plain SVD on correlated inputs, and the order with magnitude pruning in both directions."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from pqqp_bench.blocks import block_linears, decoder_blocks
from pqqp_bench.compress import compress
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods import METHODS
from pqqp_bench.methods.share import TYPES, Share, fit_shared_basis, linear_type, shared_rank, whitening
from pqqp_bench.spec import parse_recipe

from conftest import tiny_llama


def shared(recipe: str, tokens: torch.Tensor | None, model=None):
    """`recipe` applied to a copy of `model` (default: a fresh 4-block tiny Llama): the model and its report."""
    model = copy.deepcopy(model) if model is not None else tiny_llama(layers=4)
    report = compress(model, parse_recipe(recipe), tokens, progress=False)
    return model, report


def by_type(model) -> dict[str, list[torch.Tensor]]:
    """Each Linear type's weights (out x in), block by block."""
    weights: dict[str, list[torch.Tensor]] = {t: [] for t in TYPES}
    for block in decoder_blocks(model):
        for name, linear in block_linears(block).items():
            weights[linear_type(name)].append(linear.weight.detach().double())
    return weights


def linear_inputs(model, tokens: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
    """Every block Linear's input over the tokens ([tokens, in]), from one forward of `model`."""
    inputs, handles = {}, []
    for index, block in enumerate(decoder_blocks(model)):
        for name, linear in block_linears(block).items():
            def hook(module, args, output, key=(index, linear_type(name))):
                inputs[key] = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            handles.append(linear.register_forward_hook(hook))
    with torch.no_grad():
        model(tokens, use_cache=False)
    for handle in handles:
        handle.remove()
    return inputs


def output_error(dense, compressed, inputs: dict[tuple[int, str], torch.Tensor]) -> float:
    """sum over every Linear of ||X (W - W')^T||_F^2 on the dense model's inputs X: what the fit minimises."""
    before, after = by_type(dense), by_type(compressed)
    return sum(float((x @ (before[t][i] - after[t][i]).T).pow(2).sum()) for (i, t), x in inputs.items())


def correlated_llama(seed: int = 0):
    """A tiny Llama whose token embeddings span 6 of 64 directions: every Linear sees strongly correlated inputs."""
    model = tiny_llama(seed, layers=4)
    gen = torch.Generator().manual_seed(seed)
    embed = model.get_input_embeddings().weight
    with torch.no_grad():
        embed.copy_(torch.randn(embed.shape[0], 6, generator=gen) @ torch.randn(6, embed.shape[1], generator=gen)
                    + 0.01 * torch.randn(embed.shape, generator=gen))
    return model


def test_registered_with_kind_scope_ratio_and_parameters() -> None:
    cls = METHODS["share"]
    assert cls is Share and (cls.kind, cls.scope) == ("share", "model")
    stage = parse_recipe("share").stages[0]
    assert stage.values == {"r": 0.8, "group": 2, "whiten": True, "damp": 0.01, "targets": TYPES}
    assert stage.needs_calibration and not parse_recipe("share:whiten=false").stages[0].needs_calibration
    recipe = parse_recipe("magnitude:p=0.2 > share:r=0.5")
    assert recipe.order == "P>S" and recipe.reversed().order == "S>P"
    assert recipe.ratios() == pytest.approx({"prune": 1.25, "quant": 1.0, "share": 2.0, "total": 2.5})
    assert str(parse_recipe("share:targets=up+q:gate,group=4")) == "share:group=4,targets=q:gate:up"
    assert parse_recipe("share:targets=all") == parse_recipe("share")


@pytest.mark.parametrize("recipe, message", [
    ("share:r=0", "bad value r='0'"), ("share:r=1.5", "bad value r='1.5'"), ("share:group=0", "bad value group='0'"),
    ("share:targets=q:attn", "bad value targets='q:attn'"), ("share:whiten=maybe", "bad value whiten='maybe'"),
    ("share:damp=1", "bad value damp='1'"), ("share:rank=3", "unknown parameter 'rank'"),
])
def test_bad_parameters_are_refused_in_one_line(recipe: str, message: str) -> None:
    with pytest.raises(PqqpError, match=message) as error:
        parse_recipe(recipe)
    assert "\n" not in str(error.value) and "accepted" in str(error.value)


@pytest.mark.parametrize("recipe, message", [
    ("share:group=5", "group=5 is larger than the model's 4 decoder blocks: accepted group <= 4"),
    ("share:r=0.005", r"share:r=0.005 leaves no basis vector for q \(64 x 64, 2 blocks\): accepted r >= 0.0234"),
])
def test_parameters_the_model_cannot_take_are_refused_before_any_change(recipe: str, message: str, tokens) -> None:
    model = tiny_llama(layers=4)
    dense = copy.deepcopy(model.state_dict())
    with pytest.raises(PqqpError, match=message) as error:
        compress(model, parse_recipe(recipe), tokens, progress=False)
    assert "\n" not in str(error.value)
    assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())


def test_a_missing_target_type_is_refused(tokens) -> None:
    model = tiny_llama(layers=2)
    for block in decoder_blocks(model):
        block.mlp.fc_in = block.mlp.up_proj
        del block.mlp.up_proj
    with pytest.raises(PqqpError, match="no up Linear in the decoder blocks"):
        compress(model, parse_recipe("share:targets=q:up"), tokens, progress=False)


@pytest.mark.parametrize("out", [24, 16])  # stacked 40 x 48 (wide) and 40 x 32 (tall): both Gram sides
def test_plain_fit_is_the_truncated_svd_of_the_stacked_weights(out: int) -> None:
    """Eckart-Young on [W_1^T, W_2^T]: B C is numpy's U_k S_k V_k^T, its squared error the discarded S^2."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(out, 40, generator=gen, dtype=torch.float64) for _ in range(2)]
    stacked = np.concatenate([w.numpy().T for w in weights], axis=1)
    u, sigma, vh = np.linalg.svd(stacked, full_matrices=False)
    for rank in (5, 17, len(sigma)):
        basis, coefficients = fit_shared_basis(weights, rank)
        assert basis.shape == (40, rank) and [c.shape for c in coefficients] == [(rank, out)] * 2
        approx = torch.cat([basis @ c for c in coefficients], dim=1).numpy()
        assert np.allclose(approx, (u[:, :rank] * sigma[:rank]) @ vh[:rank], atol=1e-9)
        assert np.sum((stacked - approx) ** 2) == pytest.approx(np.sum(sigma[rank:] ** 2), rel=1e-9, abs=1e-9)
    assert np.allclose(approx, stacked, atol=1e-9)  # rank min(in, 2 out): exact


def test_whitened_fit_minimises_the_output_error_on_correlated_inputs() -> None:
    """With S^T S = X^T X for the group's pooled inputs X (damp=0), sum_i ||X (W_i^T - B C_i)||_F^2 is the
    discarded tail of the SVD of S W (Basis Sharing's objective); each layer's own output error is lower than
    with the plain SVD of the same rank; at full rank the reconstruction is exact."""
    gen = torch.Generator().manual_seed(1)
    mixing = torch.randn(40, 40, generator=gen, dtype=torch.float64) * torch.logspace(0, -3, 40, dtype=torch.float64)
    xs = [torch.randn(200, 40, generator=gen, dtype=torch.float64) @ mixing.T for _ in range(2)]
    weights = [torch.randn(24, 40, generator=gen, dtype=torch.float64) for _ in range(2)]
    hessian = sum(x.T @ x for x in xs)
    scale = whitening(hessian, 0.0)
    assert torch.allclose(scale.T @ scale, hessian) and torch.equal(scale, scale.triu())
    stacked = torch.cat([w.T for w in weights], dim=1)
    tail = np.linalg.svd(np.linalg.cholesky(hessian.numpy()).T @ stacked.numpy(), compute_uv=False)

    def error(basis, coefficients, pooled: bool = False) -> float:
        return sum(float(((torch.cat(xs) if pooled else x) @ (w.T - basis @ c)).pow(2).sum())
                   for x, w, c in zip(xs, weights, coefficients))

    rank = 8
    whitened, plain = fit_shared_basis(weights, rank, scale), fit_shared_basis(weights, rank)
    assert error(*whitened, pooled=True) == pytest.approx(np.sum(tail[rank:] ** 2), rel=1e-9)
    assert error(*whitened) < 0.2 * error(*plain)
    basis, coefficients = fit_shared_basis(weights, 40, scale)
    assert torch.allclose(torch.cat([basis @ c for c in coefficients], dim=1), stacked, atol=1e-8)


def test_every_group_shares_one_basis_of_the_planned_rank(tokens) -> None:
    model, report = shared("share:r=0.6", tokens)
    structure = report.structure[0]
    assert structure["groups"] == [[0, 1], [2, 3]]
    weights = by_type(model)
    for t, entry in structure["types"].items():
        for group, rank in zip(structure["groups"], entry["rank"]):
            stacked = torch.cat([weights[t][i].T for i in group], dim=1)
            assert torch.linalg.matrix_rank(stacked, rtol=1e-6) == rank  # two unshared rank-k layers would give 2k
            assert all(torch.linalg.matrix_rank(weights[t][i], rtol=1e-6) == rank for i in group)


@pytest.mark.parametrize("r, group, blocks", [(0.8, 2, 4), (0.37, 2, 3), (0.5, 3, 4), (0.9, 1, 2)])
def test_achieved_parameter_ratio_matches_the_formula(r: float, group: int, blocks: int, tokens) -> None:
    model, report = shared(f"share:r={r},group={group}", tokens, tiny_llama(layers=blocks))
    structure, stored, dense = report.structure[0], 0, 0
    weights = by_type(model)
    for t, entry in structure["types"].items():
        d_out, d_in = weights[t][0].shape
        for members, rank in zip(structure["groups"], entry["rank"]):
            n = len(members)
            assert rank == math.floor(r * n * d_in * d_out / (d_in + n * d_out) + 1e-9) == shared_rank(r, n, d_in, d_out)
            stored, dense = stored + rank * (d_in + n * d_out), dense + n * d_in * d_out
        assert r - (d_in + d_out) / d_out / d_in < entry["ratio"] <= r
    assert (structure["stored"], structure["dense"]) == (stored, dense)
    assert structure["groups"][-1] == list(range(group * ((blocks - 1) // group), blocks))  # the remainder shares too
    assert r - 0.05 < structure["ratio"] <= r
    achieved = report.achieved()
    assert achieved["share"] == pytest.approx(dense / stored) and achieved["total"] == pytest.approx(dense / stored)


def test_only_the_targets_change_and_they_count_alone(tokens) -> None:
    dense = tiny_llama(layers=4)
    model, report = shared("share:r=0.5,targets=q:down", tokens, dense)
    before, after = by_type(dense), by_type(model)
    for t in TYPES:
        changed = [not torch.equal(a, b) for a, b in zip(before[t], after[t])]
        assert all(changed) if t in ("q", "down") else not any(changed)
    types = report.structure[0]["types"]
    assert sorted(types) == ["down", "q"]
    saved = sum(e["dense"] - e["stored"] for e in types.values())
    assert report.achieved()["share"] == pytest.approx(report.structure[0]["dense"] / (report.structure[0]["dense"] - saved))


def low_rank_llama(rank: int = 6):
    """A tiny Llama where each Linear type's weights in blocks (0, 1) and (2, 3) are W_i^T = A C_i, A of `rank`."""
    model = tiny_llama(layers=4)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for start in (0, 2):
            for name, linear in block_linears(decoder_blocks(model)[start]).items():
                basis = torch.randn(linear.in_features, rank, generator=gen) / rank
                for index in (start, start + 1):
                    coefficient = torch.randn(rank, linear.out_features, generator=gen)
                    block_linears(decoder_blocks(model)[index])[name].weight.copy_((basis @ coefficient).T)
    return model


@pytest.mark.parametrize("whiten", ["true", "false"])
def test_weights_within_the_rank_are_reconstructed(whiten: str, tokens) -> None:
    dense = low_rank_llama()
    model, report = shared(f"share:r=0.4,whiten={whiten}", tokens, dense)
    assert min(min(e["rank"]) for e in report.structure[0]["types"].values()) >= 6
    for a, b in zip(dense.parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-5 * float(a.detach().abs().max()))
    with torch.no_grad():
        assert torch.allclose(model(tokens).logits, dense(tokens).logits, atol=1e-4)


def test_r_one_leaves_the_model_unchanged_and_needs_no_calibration() -> None:
    dense = tiny_llama(layers=4)
    model, report = shared("share:r=1", None, dense)
    assert all(torch.equal(a, b) for a, b in zip(dense.parameters(), model.parameters()))
    assert report.structure[0]["ratio"] == 1.0 and "share" not in report.achieved()


def test_output_error_falls_as_r_rises(tokens) -> None:
    dense = correlated_llama()
    inputs = linear_inputs(dense, tokens)
    errors = [output_error(dense, shared(f"share:r={r}", tokens, dense)[0], inputs) for r in (0.2, 0.4, 0.6, 0.8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]
    with torch.no_grad():
        logits = [(shared(f"share:r={r}", tokens, dense)[0](tokens).logits - dense(tokens).logits).pow(2).mean()
                  for r in (0.2, 0.8)]
    assert logits[1] < logits[0]


def test_whitening_gives_a_lower_output_error_than_plain_svd_on_correlated_inputs(tokens) -> None:
    dense = correlated_llama()
    inputs = linear_inputs(dense, tokens)
    whitened, plain = (shared(f"share:r=0.4,whiten={w}", tokens, dense)[0] for w in ("true", "false"))
    assert output_error(dense, whitened, inputs) < 0.5 * output_error(dense, plain, inputs)
    with torch.no_grad():
        reference = dense(tokens).logits
        assert (whitened(tokens).logits - reference).pow(2).mean() < (plain(tokens).logits - reference).pow(2).mean()


def test_pruning_then_sharing_keeps_the_mask(tokens) -> None:
    """P>S: the engine's record() would raise if a pruned weight came back; the other weights are B C_i."""
    dense = tiny_llama(layers=4)
    pruned, _ = shared("magnitude:p=0.3", tokens, dense)
    model, report = shared("magnitude:p=0.3 > share:r=0.6", tokens, dense)
    zeros = sum(int((w == 0).sum()) for ws in by_type(pruned).values() for w in ws)
    assert report.structure[0]["kept_zeros"] == zeros > 0
    achieved = report.achieved()
    assert achieved["sparsity"] == pytest.approx(0.3, abs=0.5 / 64)
    assert achieved["total"] == pytest.approx(achieved["prune"] * achieved["share"])
    for before, after in zip(by_type(pruned)["q"], by_type(model)["q"]):
        assert torch.equal(after == 0, before == 0)


def test_sharing_then_pruning_reaches_the_requested_sparsity(tokens) -> None:
    dense = tiny_llama(layers=4)
    alone, _ = shared("share:r=0.6", tokens, dense)
    model, report = shared("share:r=0.6 > magnitude:p=0.3", tokens, dense)
    assert report.achieved()["sparsity"] == pytest.approx(0.3, abs=0.5 / 64)
    assert report.structure[0]["kept_zeros"] == 0
    for before, after in zip(by_type(alone)["up"], by_type(model)["up"]):  # magnitude pruning of B C_i, per row
        kept = after != 0
        assert torch.equal(after[kept], before[kept])
        magnitude = before.abs()
        assert (magnitude.masked_fill(kept, 0).amax(1) <= magnitude.masked_fill(~kept, math.inf).amin(1)).all()


def test_deterministic_and_whiten_false_needs_no_calibration(tokens) -> None:
    dense = tiny_llama(layers=4)
    runs = [shared("share:r=0.5", tokens, dense) for _ in range(2)]
    assert runs[0][1].structure == runs[1][1].structure
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters()))
    plain, _ = shared("share:r=0.5,whiten=false", None, dense)
    assert not all(torch.equal(a, b) for a, b in zip(plain.parameters(), runs[0][0].parameters()))
    with pytest.raises(PqqpError, match="needs calibration samples"):
        shared("share:r=0.5", None, dense)


def test_the_whitened_fit_does_not_depend_on_a_rotation_before_it(tokens) -> None:
    """QuaRot rotates every block's inputs by one orthogonal Q (the tiny Llama's norms are 1, so folding them is
    the identity), and ||X Q (Q^T W - W')||_F does not depend on Q: `quarot > share` computes what `share` does,
    provided the statistics see down_proj's inputs after QuaRot's online Hadamard, as the layer does."""
    dense = tiny_llama(layers=4)
    plain, _ = shared("share:r=0.5,damp=0", tokens, dense)
    rotated, _ = shared("quarot > share:r=0.5,damp=0", tokens, dense)
    unshared, _ = shared("quarot", tokens, dense)
    with torch.no_grad():
        reference, expected = plain(tokens).logits, rotated(tokens).logits
        assert torch.allclose(expected, reference, atol=1e-4)
        assert not torch.allclose(unshared(tokens).logits, reference, atol=1e-2)
