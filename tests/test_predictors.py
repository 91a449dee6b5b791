"""Order predictors (predictors.py) and their scoring (ordering.score_predictor): the probe compresses a sampled
block exactly as the engine does, each predictor returns an order with its cost, the scores' arithmetic, and the
predictor reaching `pqqp order`, the suite and the pytest grid."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CHARS, tiny_gemma3, tiny_llama
from pqqp_bench.analysis import Analysis
from pqqp_bench.blocks import decoder_blocks
from pqqp_bench.cli import main
from pqqp_bench.compress import compress
from pqqp_bench.errors import PqqpError
from pqqp_bench.measure import Bench
from pqqp_bench.ordering import MeasuredSet, parse_method_set, regrets, score_predictor, score_random, within_noise
from pqqp_bench.predictors import (Cost, ProbeContext, block_error, compressed_block, exhaustive_cost, predictor,
                                   run_cost, sample_blocks)
from pqqp_bench.sections.order_search import order_evidence, order_outcome
from pqqp_bench.spec import parse_recipe
from pqqp_bench.store import Store
from pqqp_bench.suite import Suite
from pqqp_bench.sections import load_suite
from pqqp_bench.sections.order_search import OrderSearch, OrderSpec

SET3 = "wanda:p=0.3; rtn:w=4,a=4,kv=4; magnitude:p=0.1"


@pytest.fixture
def calibration() -> torch.Tensor:
    return torch.randint(1, len(CHARS) + 1, (4, 32), generator=torch.Generator().manual_seed(1))


def context(model, calibration, blocks=2) -> ProbeContext:
    return ProbeContext(model, calibration, blocks=blocks)


@pytest.mark.parametrize("recipe", ["wanda:p=0.3 > rtn:w=4,a=4,kv=4 > magnitude:p=0.1",
                                    "gptq:w=4,g=32 > sparsegpt:p=0.3", "sparsegpt:nm=2:4 > rtn:w=4,g=32"])
@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_probe_compresses_a_block_as_the_engine_does(recipe: str, build, calibration: torch.Tensor) -> None:
    """Block 0 sees the dense inputs in both: its weights after the probe equal the engine's bit for bit."""
    model, parsed = build(), parse_recipe(recipe)
    probes, _ = sample_blocks(model, calibration, (0,), (), 0, torch.device("cpu"))
    engine = tiny_llama() if build is tiny_llama else tiny_gemma3()
    torch.manual_seed(0)
    compress(engine, parsed, calibration, progress=False)
    ours = probes[0].block
    assert block_error(probes[0], parsed.stages, 0)[0] > 0
    # block_error works on a copy: the sampled block itself is still dense
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), decoder_blocks(model)[0].parameters()))
    block, _ = compressed_block(probes[0], parsed.stages, 0)
    assert not all(torch.equal(a, b) for a, b in zip(block.parameters(), ours.parameters()))  # it was compressed
    for (name, a), (_, b) in zip(block.named_parameters(), decoder_blocks(engine)[0].named_parameters()):
        assert torch.equal(a, b), name


def test_dense_block_has_no_error_and_errors_grow_with_intensity(calibration: torch.Tensor) -> None:
    model = tiny_llama(layers=4)
    probes, cost = sample_blocks(model, calibration, (1, 3), (), 0, torch.device("cpu"))
    assert [p.index for p in probes] == [1, 3] and cost.forward_tokens == 4 * calibration.numel()
    assert block_error(probes[0], (), 0)[0] == 0.0
    errors = [block_error(probes[0], parse_recipe(f"magnitude:p={p}").stages, 0)[0] for p in (0.1, 0.3, 0.6)]
    assert errors == sorted(errors) and errors[0] > 0


def test_every_predictor_returns_an_order_with_its_cost(calibration: torch.Tensor) -> None:
    methods = parse_method_set(SET3)
    ctx = context(tiny_llama(layers=4), calibration)
    ctx.single_metric = lambda m, i: [-20.0, -30.0, -15.0][i]
    assert ctx.sample() == (1, 3)
    found = {name: predictor(name).predict(methods, ctx) for name in ("intensity", "probe", "pairwise", "probe-intensity")}
    for name, p in found.items():
        assert sorted(p.order) == [0, 1, 2], name
    assert found["intensity"].order == (2, 0, 1)  # highest M (weakest) first
    probe = found["probe"]
    assert len(probe.scores) == 6 and probe.order == min(
        ((tuple(methods.units.index(parse_recipe(u)) for u in k.split(" > ")), v) for k, v in probe.scores.items()),
        key=lambda kv: kv[1])[0]
    assert len(found["pairwise"].scores) == 6 and len(found["probe-intensity"].scores) == 3
    # block compressions: n! orders x n stages, n(n-1) pairs x 2 stages, n singles, on 2 blocks
    assert (probe.cost.compressions, found["pairwise"].cost.compressions, found["probe-intensity"].cost.compressions) \
        == (36, 24, 6)
    full = exhaustive_cost(methods, 4, calibration.numel(), 256)
    assert full.compressions == 6 * 3 * 4 and full.full_runs == 6
    assert all(p.cost.forward_tokens < full.forward_tokens for n, p in found.items() if n != "intensity")


def test_two_methods_pairwise_is_the_probe() -> None:
    model, cal = tiny_llama(layers=3), torch.randint(1, 50, (2, 32), generator=torch.Generator().manual_seed(3))
    methods = parse_method_set("sparsegpt:p=0.3; gptq:w=4,g=32")
    a = predictor("probe").predict(methods, context(model, cal))
    b = predictor("pairwise").predict(methods, context(model, cal))
    assert a.order == b.order and a.scores == b.scores  # the same two probes, bit for bit


def test_model_scope_units_go_first_and_a_rotation_is_the_basis(calibration: torch.Tensor) -> None:
    model = tiny_llama(layers=4)
    ctx = context(model, calibration)
    sleb = predictor("probe").predict(parse_method_set("wanda:p=0.3; sleb:p=0.25,samples=2; rtn:w=4"), ctx)
    assert sleb.order[0] == 1 and len(sleb.scores) == 2  # only the two layer-scope units are probed
    plain = predictor("probe").predict(parse_method_set("rtn:w=4,a=8,kv=8; wanda:p=0.3"), ctx)
    rotated = predictor("probe").predict(parse_method_set("quarot > rtn:w=4,a=8,kv=8; wanda:p=0.3"), ctx)
    assert len(ctx._probes) == 2  # one sample of the dense blocks per basis
    assert plain.scores != rotated.scores and rotated.cost.compressions > plain.cost.compressions
    dense = [p.block for p in ctx._probes[()][0]]
    assert all(torch.equal(a, b) for a, b in zip(dense[0].parameters(), decoder_blocks(model)[1].parameters()))


def test_unknown_predictor_and_missing_inputs_are_one_line() -> None:
    with pytest.raises(PqqpError, match="unknown order predictor 'oracle': accepted intensity, probe"):
        predictor("oracle")
    with pytest.raises(PqqpError, match="single-run metric"):
        predictor("intensity").predict(parse_method_set(SET3), ProbeContext())
    with pytest.raises(PqqpError, match="dense model and calibration"):
        predictor("probe").predict(parse_method_set(SET3), ProbeContext())


# --- scoring ---------------------------------------------------------------------------------------------


def measured(name: str, offsets: list[float], noise: float, windows: int = 8, seed: int = 0) -> MeasuredSet:
    """Orders whose per-window NLLs are a base plus an order offset plus window noise shared by every order."""
    rng = np.random.default_rng(seed)
    base = 3.0 * 31 + rng.normal(0.0, 3.0, size=windows)
    nll = np.array([base + off * 31 + rng.normal(0.0, noise, size=windows) for off in offsets])
    orders = [(0, 1), (1, 0)] if len(offsets) == 2 else list(itertools.permutations(range(3)))
    return MeasuredSet(name, tuple(orders), nll, 31)


def test_within_noise_and_regret_arithmetic() -> None:
    clear = measured("clear", [0.0, 0.5], noise=0.01)
    reps = np.random.default_rng(0).integers(0, 8, size=(500, 8))
    assert within_noise(clear, (0, 1), reps, 0.95) and not within_noise(clear, (1, 0), reps, 0.95)
    base = np.linspace(90.0, 96.0, 8)
    swing = np.array([2.0, -2.0] * 4)  # order 1 is better on half the windows and worse on the other half
    tied = MeasuredSet("tied", ((0, 1), (1, 0)), np.stack([base, base + swing + 0.01]), 31)
    assert within_noise(tied, (1, 0), reps, 0.95) and within_noise(tied, (0, 1), reps, 0.95)
    ppl = clear.ppl()
    assert regrets(clear, np.array([1]))[0] == pytest.approx(ppl[1] - ppl[0]) and regrets(clear, np.array([0]))[0] == 0
    assert np.allclose(clear.ppl(np.tile(np.arange(8), (3, 1))), ppl)  # the identity resample is the full data


def test_score_counts_hits_and_bounds_the_regret() -> None:
    sets = [measured(f"s{i}", [0.0, 0.4], noise=0.01, seed=i) for i in range(4)]
    good = score_predictor(sets, [(0, 1)] * 4, resamples=300)
    bad = score_predictor(sets, [(1, 0)] * 4, resamples=300)
    assert (good.within_noise, good.exact, good.mean_regret.value) == (4, 4, 0.0)
    assert (bad.within_noise, bad.exact) == (0, 0)
    assert bad.mean_regret.low <= bad.mean_regret.value <= bad.mean_regret.high and bad.mean_regret.value > 0
    rate, random = score_random(sets, resamples=300)
    assert rate == 0.5 and random.value == pytest.approx(bad.mean_regret.value / 2)
    with pytest.raises(PqqpError, match="one pick per measured set"):
        score_predictor(sets, [(0, 1)])
    with pytest.raises(PqqpError, match="was not measured"):
        score_predictor(sets[:1], [(2, 0)])


def test_costs_add_and_count_calibrated_passes() -> None:
    assert Cost(1, 2, 0.5, 0) + Cost(3, 4, 1.0, 1) == Cost(4, 6, 1.5, 1)
    rtn, wanda = run_cost(parse_recipe("rtn:w=4").stages, 10, 100, 50), run_cost(parse_recipe("wanda:p=0.2").stages, 10, 100, 50)
    assert rtn == Cost(10, 500, 0.0, 1) and wanda == Cost(10, 500 + 100 * 19, 0.0, 1)


# --- through the bench, `pqqp order` and the suite -------------------------------------------------------


def test_bench_and_cli_use_the_probe(model_dir: Path, text_file: Path, tmp_path: Path, capsys) -> None:
    suite = Suite(models=(str(model_dir),), corpus=str(text_file), seqlen=32, calib_samples=4, eval_tokens=128,
                  pruners=(), quantizers=(), ratios=(), bits=(), curve_bits=(4, 8), device="cpu", max_ppl_ratio=1000,
                  sections=(OrderSearch((parse_method_set("wanda:p=0.3; rtn:w=4"),), predictor="probe", probe_blocks=1),))
    with Store(tmp_path / "s.sqlite") as store:
        bench = Bench(suite, store, progress=False)
        spec = OrderSpec(suite, suite.models[0], suite.section("order_search").sets[0])
        analysis = Analysis(bench)
        result, details = order_outcome(analysis, spec)
        assert details["predictor"] == "probe" and "singles" not in details and len(details["scores"]) == 2
        assert result.recommended == details["recommended"]
        assert len(store) == 2  # the two orders; the probe measured nothing
        text = order_evidence(analysis, spec, result, details)
        assert "recommended (probe: smallest error" in text and "the exhaustive search: 2 whole-model runs" in text
    args = ["order", "--model", str(model_dir), "--corpus", str(text_file), "--seqlen", "32", "--calib-samples", "4",
            "--eval-tokens", "128", "--device", "cpu", "--no-progress", "--store", str(tmp_path / "o.sqlite"),
            "--methods", "wanda:p=0.3, rtn:w=4, magnitude:p=0.1", "--predictor", "pairwise", "--probe-blocks", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "recommended (pairwise" in out and "block compressions" in out
    with Store(tmp_path / "o.sqlite") as store:
        assert len(store) == 0  # the probe measures nothing on the whole model
    assert main([*args[:-4], "--predictor", "oracle"]) == 2
    assert "--predictor" in capsys.readouterr().err
    assert main([*args[:-2], "--probe-blocks", "0"]) == 2
    assert "--probe-blocks 0 is not accepted" in capsys.readouterr().err


def test_suite_key_and_option_choose_the_predictor(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("order_search:\n  sets: ['wanda:p=0.3; rtn:w=4']\n  predictor: pairwise\n  probe_blocks: 3\n")
    search = load_suite(path).section("order_search")
    assert (search.predictor, search.probe_blocks) == ("pairwise", 3)
    over = load_suite(path, order_predictor="probe", order_probe_blocks="2").section("order_search")
    assert (over.predictor, over.probe_blocks) == ("probe", 2)
    for bad, match in (("predictor: oracle", "order_search.predictor='oracle'"), ("probe_blocks: 0", "probe_blocks=0"),
                       ("probe_blocks: true", "probe_blocks=True")):
        path.write_text(f"order_search:\n  sets: ['wanda:p=0.3; rtn:w=4']\n  {bad}\n")
        with pytest.raises(PqqpError, match=match):
            load_suite(path)


def test_a_recipe_the_blocks_cannot_take_is_refused_before_probing(calibration: torch.Tensor) -> None:
    with pytest.raises(PqqpError, match="group size g=48 does not divide in_features=64"):
        predictor("probe").predict(parse_method_set("rtn:w=4,g=48; wanda:p=0.2"), context(tiny_llama(), calibration))
