"""Mixed-precision quantization (mpq): Hutchinson traces against the exact Hessian, the knapsack allocation
against brute force, the iterative order (prog 8 -> 2, regr 2 -> 8) as recorded and as it changes the traces,
the budget, the grids the engine records, determinism, composition with pruning, and parameter errors."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from pqqp_bench.blocks import block_linears, decoder_blocks
from pqqp_bench.compress import compress
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods import METHODS
from pqqp_bench.methods.mpq import MPQ, allocate, hutchinson_traces, size_units
from pqqp_bench.methods.quantize import fit_grid
from pqqp_bench.spec import parse_recipe

from conftest import tiny_llama


@pytest.fixture(scope="module")
def shared() -> tuple[torch.nn.Module, torch.Tensor]:
    return tiny_llama(layers=2), torch.randint(1, 100, (6, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def llama(shared) -> tuple[torch.nn.Module, torch.Tensor]:
    """A 2-block tiny Llama (a fresh copy) and six calibration windows of 32 tokens."""
    return copy.deepcopy(shared[0]), shared[1]


def run(model, tokens, recipe: str, seed: int = 0):
    report = compress(model, parse_recipe(recipe), tokens, seed=seed, progress=False)
    return report, next(s for s in report.structure if s["stage"].startswith("mpq"))


def weights(model) -> dict[str, torch.Tensor]:
    return {f"blocks.{i}.{n}": lin.weight.data.clone() for i, b in enumerate(decoder_blocks(model))
            for n, lin in block_linears(b).items()}


def test_registered_with_kind_scope_ratio_and_parameters() -> None:
    cls = METHODS["mpq"]
    assert cls is MPQ and (cls.kind, cls.scope, cls.needs_calibration) == ("quant", "model", True)
    recipe = parse_recipe("mpq:avg=4.5,bits=3:4:6:8,order=regr")
    assert recipe.ratios() == pytest.approx({"prune": 1.0, "quant": 16 / 4.5, "total": 16 / 4.5})
    assert recipe.order == "Q" and str(recipe) == "mpq:avg=4.5,bits=3:4:6:8,order=regr"
    stage = parse_recipe("mpq:avg=4").stages[0]
    assert stage.values["bits"] == (2, 3, 4, 5, 6, 7, 8) and stage.values["order"] == "prog"
    assert (stage.values["base"], stage.values["g"], stage.values["clip"]) == ("rtn", None, "mse")
    assert stage.sequence == (8, 7, 6, 5, 4, 3, 2) and recipe.stages[0].sequence == (3, 4, 6, 8)


@pytest.mark.parametrize("text, named", [
    ("mpq", "avg="), ("mpq:avg=9", "avg=9"), ("mpq:avg=1.5", "avg=1.5"), ("mpq:avg=2.5,bits=3:4", "avg=2.5"),
    ("mpq:avg=4,bits=4:3", "bits='4:3'"), ("mpq:avg=4,bits=3:3:4", "bits='3:3:4'"), ("mpq:avg=4,bits=1:4", "bits='1:4'"),
    ("mpq:avg=4,bits=4:17", "bits='4:17'"), ("mpq:avg=4,bits=four", "bits='four'"), ("mpq:avg=4,order=up", "order='up'"),
    ("mpq:avg=4,base=awq", "base='awq'"), ("mpq:avg=-1", "avg='-1'"), ("mpq:avg=4,probes=0", "probes='0'"),
])
def test_bad_parameters_give_one_line_errors(text: str, named: str) -> None:
    with pytest.raises(PqqpError) as error:
        parse_recipe(text)
    message = str(error.value)
    assert "\n" not in message and named in message and "accepted" in message


def test_bad_group_size_is_refused_before_any_work(llama) -> None:
    model, tokens = llama
    with pytest.raises(PqqpError, match="g=48"):
        run(model, tokens, "mpq:avg=4,g=48")


def test_hutchinson_matches_the_exact_hessian_trace() -> None:
    """Three Linears of a tiny Llama, one window: the estimate is within 5 standard errors of the exact trace,
    the standard error computed from the exact joint Hessian (Var v_iᵀ(Hv)_i = 2 Σ_{a≠b in i} H_ab² + Σ_{a in i,
    b not in i} H_ab² per probe)."""
    model = tiny_llama(layers=1, hidden=16, heads=2).double()
    ids = torch.randint(1, 100, (1, 12), generator=torch.Generator().manual_seed(1))
    params = dict(model.named_parameters())
    names = [f"model.layers.0.{n}.weight" for n in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")]
    sizes = [params[n].numel() for n in names]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        chosen = {n: w.view(params[n].shape) for n, w in zip(names, flat.split(sizes))}
        return functional_call(model, chosen, (ids,), {"labels": ids, "use_cache": False}).loss

    with sdpa_kernel(SDPBackend.MATH):
        hessian = torch.autograd.functional.hessian(loss, torch.cat([params[n].detach().reshape(-1) for n in names]))
    probes = 400
    estimate = hutchinson_traces(model, {n: params[n] for n in names}, ids, probes, seed=0)
    bounds = [0, *itertools.accumulate(sizes)]
    for name, start, stop in zip(names, bounds, bounds[1:]):
        exact, error = float(torch.trace(hessian[start:stop, start:stop])), five_standard_errors(hessian, start, stop, probes)
        assert estimate[name] == pytest.approx(exact, abs=error), name
        if name.endswith("v_proj.weight"):
            assert abs(exact) > 3 * error  # the tolerance can tell a wrong scale of the estimate


def five_standard_errors(hessian: torch.Tensor, start: int, stop: int, probes: int) -> float:
    rows, inside = hessian[start:stop], hessian[start:stop, start:stop]
    off = inside - torch.diag(torch.diag(inside))
    return 5 * float((2 * off.pow(2).sum() + rows.pow(2).sum() - inside.pow(2).sum()).sqrt()) / probes**0.5


@pytest.mark.parametrize("trial", range(6))
def test_allocation_is_the_exact_knapsack_optimum_within_budget(trial: int) -> None:
    gen = torch.Generator().manual_seed(trial)
    sizes = torch.randint(1, 5, (5,), generator=gen).tolist()
    choices = (2, 3, 5, 8)
    sensitivity = torch.rand(5, 4, generator=gen, dtype=torch.float64).sort(dim=1, descending=True).values
    budget = int(sum(sizes) * (2 + 6 * torch.rand(1, generator=gen).item()))
    chosen = allocate(sizes, sensitivity, choices, budget)
    assert set(chosen) <= set(choices) and sum(s * b for s, b in zip(sizes, chosen)) <= budget
    feasible = [bits for bits in itertools.product(choices, repeat=5) if sum(s * b for s, b in zip(sizes, bits)) <= budget]
    best = min(sum(float(sensitivity[i, choices.index(b)]) for i, b in enumerate(bits)) for bits in feasible)
    assert sum(float(sensitivity[i, choices.index(b)]) for i, b in enumerate(chosen)) == pytest.approx(best)
    assert allocate(sizes, sensitivity, choices, 2 * sum(sizes) - 1) is None


def test_more_sensitive_layer_gets_more_bits() -> None:
    """Two equal layers with equal rounding errors, one with ten times the trace: at a mean of 5 bits over
    choices 2, 4, 8 it gets the 8 bits (Ω_i(b) = Tr(H_i)/n_i · ||Q_b(W_i) - W_i||²)."""
    errors = torch.tensor([16.0, 4.0, 1.0], dtype=torch.float64)
    for sensitive in (0, 1):
        traces = torch.tensor([1.0, 1.0], dtype=torch.float64)
        traces[sensitive] = 10.0
        chosen = allocate([3, 3], traces[:, None] * errors[None, :], (2, 4, 8), 30)
        assert chosen[sensitive] == 8 and chosen[1 - sensitive] == 2


def test_size_units_are_exact_or_rounded_up() -> None:
    assert size_units([4096, 2048, 8192]) == (2048, [2, 1, 4])
    unit, units = size_units([1001, 999, 5003], limit=10)
    assert unit == 701 and all(u * unit >= n for u, n in zip(units, [1001, 999, 5003]))


def test_prog_and_regr_quantize_in_opposite_orders_and_can_differ(llama) -> None:
    model, tokens = llama
    recipes = ("mpq:avg=4.5,bits=3:4:6:8,order=prog", "mpq:avg=4.5,bits=3:4:6:8,order=regr")
    allocations = []
    for recipe in recipes:
        report, record = run(copy.deepcopy(model), tokens, recipe)
        steps = [s["bits"] for s in record["steps"]]
        assert steps == record["sequence"][: len(steps)]
        flat = [b for block in record["allocation"] for b in block]
        assert [s["linears"] for s in record["steps"]] == [flat.count(b) for b in steps]
        assert sum(s["linears"] for s in record["steps"]) == len(flat) == len(report.linears)
        allocations.append(record["allocation"])
    assert record["sequence"] == [3, 4, 6, 8] and run(copy.deepcopy(model), tokens, recipes[0])[1]["sequence"] == [8, 6, 4, 3]
    assert allocations[0] != allocations[1]


def test_traces_are_estimated_on_the_partially_quantized_model(llama) -> None:
    """regr with bits 2:3:8: the second step's traces are those of the model whose 2-bit Linears are already
    quantized (reproduced here with the same Rademacher draws), not those of the dense model."""
    model, tokens = llama
    dense = copy.deepcopy(model)
    _, record = run(model, tokens, "mpq:avg=3,bits=2:3:8,order=regr")
    names = record["linears"]
    paths = [f"blocks.{i}.{n}" for i in range(2) for n in names]
    bits = dict(zip(paths, (b for block in record["allocation"] for b in block)))
    recorded = dict(zip(paths, (t for block in record["traces"] for t in block)))
    first = [p for p in paths if bits[p] == 2]
    assert 0 < len(first) < len(paths)
    linears = {f"blocks.{i}.{n}": lin for i, b in enumerate(decoder_blocks(dense)) for n, lin in block_linears(b).items()}
    remaining = {p: linears[p].weight for p in paths if p not in first}
    before = hutchinson_traces(dense, remaining, tokens[:4], 2, seed=1)
    with torch.no_grad():
        for path in first:
            weight = linears[path].weight.data
            weight.copy_(fit_grid(weight, 2, None, "mse").round(weight))
    after = hutchinson_traces(dense, remaining, tokens[:4], 2, seed=1)
    assert all(recorded[p] == pytest.approx(after[p], rel=1e-3, abs=1e-9) for p in remaining)
    assert any(abs(after[p] - before[p]) > 1e-2 * abs(before[p]) for p in remaining)


@pytest.mark.parametrize("base", ["rtn", "gptq"])
def test_mean_bits_meet_the_budget_and_weights_sit_on_their_grids(llama, base: str) -> None:
    model, tokens = llama
    report, record = run(model, tokens, f"mpq:avg=4.5,bits=3:4:6:8,base={base}")
    achieved = report.achieved()
    assert 4.5 - 0.25 <= achieved["w_bits"] <= 4.5 and achieved["quant"] >= 16 / 4.5
    assert achieved["w_bits"] == record["mean_bits"]
    linears = {f"blocks.{i}.{n}": lin for i, b in enumerate(decoder_blocks(model)) for n, lin in block_linears(b).items()}
    assert set(report.grids) == set(linears) and "bits" not in record and "grids" not in record
    for row in report.linears:
        grid = report.grids[row.name]
        assert row.w_bits == grid.bits in (3, 4, 6, 8) and grid.holds(linears[row.name].weight.data)
    flat = [b for block in record["allocation"] for b in block]
    assert [r.w_bits for r in report.linears] == flat


def test_deterministic_given_seed(llama) -> None:
    model, tokens = llama
    results = []
    for seed in (0, 0, 1):
        copy_ = copy.deepcopy(model)
        _, record = run(copy_, tokens, "mpq:avg=4,bits=2:4:8", seed=seed)
        results.append((record, weights(copy_)))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(results[0][1][p], results[1][1][p]) for p in results[0][1])
    assert results[0][0]["traces"] != results[2][0]["traces"]  # other Rademacher draws


def test_pruning_mask_kept_by_gptq_and_grids_kept_by_a_later_pruner(llama) -> None:
    """P>Q: GPTQ at each step keeps the pruned weights zero (the engine would raise otherwise); Q>P:
    SparseGPT after mpq keeps every weight on its mixed-precision grid (the engine checks)."""
    model, tokens = llama
    report = compress(copy.deepcopy(model), parse_recipe("wanda:p=0.5 > mpq:avg=4,bits=2:4:8,base=gptq"), tokens,
                      progress=False)
    assert report.achieved()["sparsity"] == pytest.approx(0.5) and report.achieved()["w_bits"] <= 4
    report = compress(model, parse_recipe("mpq:avg=4,bits=2:4:8 > sparsegpt:p=0.5"), tokens, progress=False)
    assert report.achieved()["sparsity"] == pytest.approx(0.5) and {r.w_bits for r in report.linears} <= {2, 4, 8}
    assert len(report.grids) == len(report.linears)
