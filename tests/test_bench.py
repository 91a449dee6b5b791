"""Measuring through the store on a tiny model: computed once, reused, refreshed on demand, and turned into
hypothesis points with the paper's definitions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pqqp_bench.analysis import Analysis
from pqqp_bench.hypothesis import metric_from_ppl
from pqqp_bench.measure import Bench, Missing, uses_seed
from pqqp_bench.spec import parse_recipe
from pqqp_bench.store import Store
from pqqp_bench.suite import Suite


@pytest.fixture
def suite(model_dir: Path, text_file: Path) -> Suite:
    return Suite(models=(str(model_dir),), corpus=str(text_file), seqlen=32, calib_samples=4, eval_tokens=128,
                 pruners=("wanda",), quantizers=("rtn",), ratios=(0.3,), bits=(4, 8), curve_bits=(3, 4, 8),
                 bootstrap=200, device="cpu")


def bench_on(suite: Suite, path: Path, **kw) -> Bench:
    return Bench(suite, Store(path), progress=False, **kw)


def test_measured_once_then_reused_from_the_store(suite: Suite, tmp_path: Path) -> None:
    bench = bench_on(suite, tmp_path / "s.sqlite")
    first = bench.measure(suite.models[0], "wanda:p=0.3 > rtn:w=4,a=4,kv=4")
    again = bench.measure(suite.models[0], "wanda:p=0.3 > rtn:w=4,a=4,kv=4")
    assert len(bench.computed) == 1 and again.value == first.value and again.created == first.created
    assert len(first.details["window_nll"]) == 4 and math.isfinite(first.value)
    assert first.details["achieved"]["w_bits"] == 4 and first.details["order"] == "P>Q"

    later = bench_on(suite, tmp_path / "s.sqlite", lookup_only=True)  # a new session: nothing is computed
    assert later.measure(suite.models[0], "wanda:p=0.3 > rtn:w=4,a=4,kv=4").value == first.value
    assert later.experiments == {} and later.computed == []
    with pytest.raises(Missing):
        later.measure(suite.models[0], "dense")


def test_refresh_recomputes_each_measurement_once(suite: Suite, tmp_path: Path) -> None:
    bench_on(suite, tmp_path / "s.sqlite").measure(suite.models[0], "dense")
    refreshing = bench_on(suite, tmp_path / "s.sqlite", refresh=True)
    a = refreshing.measure(suite.models[0], "dense")
    b = refreshing.measure(suite.models[0], "dense")
    assert len(refreshing.computed) == 1 and a.created == b.created
    assert len(refreshing.store) == 1


def test_seed_only_keys_recipes_it_can_change(suite: Suite, tmp_path: Path) -> None:
    assert not uses_seed(parse_recipe("rtn:w=4")) and not uses_seed(parse_recipe("magnitude:p=0.5"))
    assert uses_seed(parse_recipe("wanda:p=0.5")) and uses_seed(parse_recipe("quarot > rtn:w=4"))
    bench = bench_on(suite, tmp_path / "s.sqlite")
    assert bench.key(suite.models[0], parse_recipe("rtn:w=4"), 3).seed == -1
    assert bench.key(suite.models[0], parse_recipe("wanda:p=0.5"), 3).seed == 3


def test_point_follows_the_paper_definitions(suite: Suite, tmp_path: Path) -> None:
    bench = bench_on(suite, tmp_path / "s.sqlite")
    spec = suite.hypotheses()[0].points()[0]  # wanda p=0.3, 4 bits
    point, extra = Analysis(bench).point(spec)
    qp = bench.measure(spec.model, "rtn:w=4,a=4,kv=4 > wanda:p=0.3").value
    pq = bench.measure(spec.model, "wanda:p=0.3 > rtn:w=4,a=4,kv=4").value
    assert point.advantage == pytest.approx(metric_from_ppl(qp) - metric_from_ppl(pq), rel=1e-9)  # A(Q->P), Def. 4
    assert point.c_q == 4.0 and point.stderr >= 0.0
    curve = Analysis(bench).curve(spec.model, "rtn")
    assert [c for c, _ in curve] == [1.0, 2.0, 4.0, 16 / 3]  # dense at C_Q = 1, then 8, 4, 3 bits
    pruned = metric_from_ppl(bench.measure(spec.model, "wanda:p=0.3").value)
    ms = [m for _, m in curve]
    if point.cer_p.bound == "exact":  # the pruned model's M lies on the curve between two measured points
        assert min(ms) <= pruned <= max(ms)
    else:
        assert pruned > max(ms) if point.cer_p.bound == "below" else pruned < min(ms)
    assert extra["dense_ppl"] == bench.measure(spec.model, "dense").value
