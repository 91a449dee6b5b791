"""QuaRot-style rotation: exact on the dense model, fewer activation-quantization errors, composable."""

from __future__ import annotations

import copy

import pytest
import torch

from pqqp_bench.compress import compress
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods.hadamard import hadamard, random_rotation
from pqqp_bench.methods.quarot import OnlineHadamard
from pqqp_bench.spec import parse_recipe

from conftest import tiny_gemma3, tiny_llama


@pytest.mark.parametrize("n", [1, 2, 12, 20, 28, 36, 64, 96, 576, 1536, 14336])
def test_hadamard_matrices_are_hadamard(n: int) -> None:
    h = hadamard(n)
    assert h.abs().eq(1).all()
    assert torch.allclose(h @ h.T, n * torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("n", [576, 688])
def test_random_rotations_are_orthogonal_and_seeded(n: int) -> None:
    q, kind = random_rotation(n, 3)
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-10)
    assert torch.equal(q, random_rotation(n, 3)[0]) and not torch.equal(q, random_rotation(n, 4)[0])
    assert kind.startswith("random Hadamard") == (n == 576)  # 688 = 172 * 4 (like Llama-2's 11008 = 172 * 64) has none here


def test_online_hadamard_equals_the_dense_product() -> None:
    a, b = hadamard(12) / 12**0.5, hadamard(8) / 8**0.5
    x = torch.randn(3, 5, 96, dtype=torch.float64)
    (y,) = OnlineHadamard(a, b)(None, (x,))
    assert torch.allclose(y, x @ torch.kron(a, b))


def test_rotation_leaves_the_dense_model_unchanged(tokens) -> None:
    model = tiny_llama(layers=3)
    dense = model(tokens).logits
    report = compress(model, parse_recipe("quarot"), progress=False)
    assert torch.allclose(model(tokens).logits, dense, atol=1e-5)
    assert report.structure[0]["residual"].startswith("random Hadamard")
    assert not model.config.tie_word_embeddings and model.lm_head.weight is not model.get_input_embeddings().weight


def with_outliers(seed: int = 0):
    """A tiny Llama whose residual stream carries a few huge channels, as real LLMs do."""
    model = tiny_llama(seed, layers=2)
    with torch.no_grad():
        model.get_input_embeddings().weight[:, :3] *= 40.0
    return model


def quantization_error(recipe: str, tokens: torch.Tensor) -> float:
    dense = with_outliers()(tokens).logits
    model = with_outliers()
    compress(model, parse_recipe(recipe), tokens, progress=False)
    return (model(tokens).logits - dense).pow(2).mean().item()


def test_rotation_at_least_halves_the_activation_quantization_error_under_outliers(tokens) -> None:
    plain, rotated = quantization_error("rtn:a=4", tokens), quantization_error("quarot > rtn:a=4", tokens)
    assert rotated < 0.5 * plain, (rotated, plain)


@pytest.mark.parametrize("recipe", ["rtn:w=4,a=4,kv=4", "gptq:w=4,a=4,kv=4"])
def test_rotation_lowers_the_joint_quantization_error_under_outliers(tokens, recipe: str) -> None:
    plain, rotated = quantization_error(recipe, tokens), quantization_error("quarot > " + recipe, tokens)
    assert rotated < plain, (rotated, plain)


def test_rotation_is_the_shared_basis_of_both_orders(tokens) -> None:
    recipe = parse_recipe("quarot > rtn:w=4,a=4,kv=4 > sparsegpt:p=0.5")
    assert str(recipe.reversed()) == "quarot > sparsegpt:p=0.5 > rtn:w=4,a=4,kv=4"
    assert (recipe.order, recipe.reversed().order) == ("Q>P", "P>Q")
    models = {}
    for r in (recipe, recipe.reversed()):
        models[r.order] = tiny_llama()
        report = compress(models[r.order], r, tokens, progress=False)  # engine checks masks and grids
        assert report.achieved()["sparsity"] == pytest.approx(0.5, abs=0.5 / 64)
        assert report.achieved()["w_bits"] == 4
    assert not torch.equal(models["Q>P"](tokens).logits, models["P>Q"](tokens).logits)


def test_pruning_after_rotation_is_valid_and_changes_the_decisions(tokens) -> None:
    plain, rotated = tiny_llama(), tiny_llama()
    compress(plain, parse_recipe("wanda:p=0.5"), tokens, progress=False)
    compress(rotated, parse_recipe("quarot > wanda:p=0.5"), tokens, progress=False)
    assert not torch.allclose(plain(tokens).logits, rotated(tokens).logits, atol=1e-4)


def test_a_rotation_after_pruning_or_quantization_is_refused() -> None:
    for text in ("sparsegpt:p=0.5 > quarot > rtn:w=4", "rtn:w=4 > quarot"):
        with pytest.raises(PqqpError, match="accepted: rotations first"):
            parse_recipe(text)


def test_post_norm_models_are_refused_with_the_reason(tokens) -> None:
    model = copy.deepcopy(tiny_gemma3())
    with pytest.raises(PqqpError, match="do not commute with a rotation"):
        compress(model, parse_recipe("quarot > rtn:w=4"), tokens, progress=False)
