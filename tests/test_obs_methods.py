"""SparseGPT and GPTQ on single layers: better than their one-shot counterparts, masks and grids kept."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pqqp_bench.compress import compress
from pqqp_bench.methods import LayerWork
from pqqp_bench.methods.gptq import GPTQ
from pqqp_bench.methods.prune import Magnitude, Wanda
from pqqp_bench.methods.rtn import RTN
from pqqp_bench.methods.sparsegpt import SparseGPT
from pqqp_bench.spec import parse_recipe


def correlated_inputs(n: int = 512, features: int = 64, seed: int = 0) -> torch.Tensor:
    """Inputs with correlated features and a few loud channels, like LLM activations."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=gen) / features**0.5
    x = torch.randn(n, features, generator=gen) @ (torch.eye(features) + mix)
    x[:, :4] *= 8.0
    return x


def layer_work(linear: nn.Linear, x: torch.Tensor, statistic: str | None) -> LayerWork:
    stats = {}
    if statistic == "hessian":
        stats = {"l": x.T @ x}
    elif statistic == "sqnorm":
        stats = {"l": x.pow(2).sum(dim=0)}
    return LayerWork(0, linear, {"l": linear}, None, {"l": linear.weight.data.clone()}, stats=stats)


def output_error(method, x: torch.Tensor, seed: int = 0, prior: list | None = None) -> tuple[float, LayerWork]:
    torch.manual_seed(seed)
    linear = nn.Linear(x.shape[1], 48, bias=False)
    dense = linear.weight.data.clone()
    work = layer_work(linear, x, None)
    for stage in (prior or []) + [method]:
        work.stats = layer_work(linear, x, stage.statistic).stats
        stage.apply(work)
    return (x @ (linear.weight.data - dense).T).pow(2).mean().item(), work


@pytest.mark.parametrize("p", [0.3, 0.5, 0.7])
def test_sparsegpt_output_error_is_below_magnitude_and_wanda(p: float) -> None:
    x = correlated_inputs()
    sparsegpt, work = output_error(SparseGPT(p=p, block=16), x)
    assert sparsegpt < output_error(Magnitude(p=p), x)[0]
    assert sparsegpt < output_error(Wanda(p=p), x)[0]
    assert (~work.masks["l"]).float().mean().item() == pytest.approx(p, abs=0.5 / 64)
    assert (work.linears["l"].weight.data[~work.masks["l"]] == 0).all()


def test_sparsegpt_n_of_m_is_exact_and_better_than_magnitude() -> None:
    x = correlated_inputs()
    error, work = output_error(SparseGPT(nm=(2, 4)), x)
    kept = work.masks["l"].reshape(48, -1, 4).sum(dim=-1)
    assert kept.eq(2).all()
    assert error < output_error(Magnitude(nm=(2, 4)), x)[0]


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("options", [{}, {"g": 16}, {"actorder": True}, {"actorder": True, "g": 16}, {"sym": False}])
def test_gptq_output_error_is_below_rtn(bits: int, options: dict) -> None:
    x = correlated_inputs()
    rtn_options = {k: v for k, v in options.items() if k == "g"}
    gptq, work = output_error(GPTQ(w=bits, **options), x)
    assert gptq < output_error(RTN(w=bits, **rtn_options), x)[0]
    grid = work.grids["l"]
    assert grid.bits == bits and grid.holds(work.linears["l"].weight.data)


def test_gptq_after_a_two_four_mask_keeps_the_mask() -> None:
    x = correlated_inputs()
    _, work = output_error(GPTQ(w=4), x, prior=[SparseGPT(nm=(2, 4))])
    weight = work.linears["l"].weight.data
    assert (weight[~work.masks["l"]] == 0).all()
    assert (weight == 0).reshape(48, -1, 4).sum(dim=-1).ge(2).all()
    assert work.grids["l"].holds(weight)


def test_sparsegpt_after_quantization_stays_on_the_grid() -> None:
    x = correlated_inputs()
    _, work = output_error(SparseGPT(p=0.5, block=16), x, prior=[RTN(w=4)])
    weight = work.linears["l"].weight.data
    assert work.grids["l"].holds(weight)
    assert (~work.masks["l"]).float().mean().item() == pytest.approx(0.5, abs=0.5 / 64)
    assert (weight[~work.masks["l"]] == 0).all()


@pytest.mark.parametrize("recipe", ["sparsegpt:p=0.5 > gptq:w=4,a=8", "gptq:w=4,a=8 > sparsegpt:p=0.5",
                                    "sparsegpt:nm=2:4 > gptq:w=4,g=16,actorder=true"])
def test_joint_recipes_run_through_the_engine(model, tokens, recipe: str) -> None:
    reference = copy.deepcopy(model)
    report = compress(model, parse_recipe(recipe), tokens, progress=False)  # the engine checks masks and grids
    achieved = report.achieved()
    assert achieved["sparsity"] == pytest.approx(0.5, abs=0.5 / 64) and achieved["w_bits"] == 4
    assert torch.isfinite(model(tokens[:2]).logits).all()
    assert not torch.equal(model(tokens[:2]).logits, reference(tokens[:2]).logits)
