"""General pipelines and order selection (paper §5.4, App. D.7): the suite sections, the intensity rule and its
rank/regret arithmetic, the measured path on a tiny model, `pqqp order`, and the suite tests end to end."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import outcomes
from pqqp_bench.analysis import Analysis
from pqqp_bench.cli import main
from pqqp_bench.errors import PqqpError
from pqqp_bench.hypothesis import VERDICTS
from pqqp_bench.measure import Bench
from pqqp_bench.ordering import cost_ratio, outcome, parse_method_set, recommend, split_methods, summarize
from pqqp_bench.pipelines import pipelines_section
from pqqp_bench.sections.order_search import order_evidence, order_outcome
from pqqp_bench.sections.pipelines import Pipelines, pipeline_verdict
from pqqp_bench.spec import parse_recipe
from pqqp_bench.store import Store
from pqqp_bench.suite import Suite
from pqqp_bench.sections import load_suite
from pqqp_bench.sections.order_search import OrderSearch, OrderSpec

REPO = Path(__file__).resolve().parents[1]

MULTISTAGE = {"multistage": {
    "x": "p2 - p1", "figure": "Fig. 7",
    "first": "wanda:p={p1} > rtn:w=4 > wanda:p={p2}", "second": "wanda:p={p2} > rtn:w=4 > wanda:p={p1}",
    "points": [{"x": 0.0, "p1": 0.2, "p2": 0.2}, {"x": 0.2, "p1": 0.1, "p2": 0.3}, {"x": 0.4, "p1": 0.0, "p2": 0.4}],
    "alone": ["wanda:p={p2}"],
}}


# --- parsing ---------------------------------------------------------------------------------------------


def test_method_sets_split_between_methods_not_parameters() -> None:
    assert split_methods("wanda:p=0.3, rtn:w=4,a=4,kv=4, sparsegpt:p=0.1") == [
        "wanda:p=0.3", "rtn:w=4,a=4,kv=4", "sparsegpt:p=0.1"]
    assert split_methods("rtn:w=4,a=4 > quarot; magnitude:p=0.2") == ["rtn:w=4,a=4 > quarot", "magnitude:p=0.2"]
    rotated = parse_method_set("quarot > rtn:w=4,a=4, wanda:p=0.2")
    assert [str(s) for s in rotated.basis] == ["quarot"]
    assert str(rotated.recipe((1, 0))) == "quarot > wanda:p=0.2 > rtn:w=4,a=4"
    assert str(rotated.single(1)) == "quarot > wanda:p=0.2"


@pytest.mark.parametrize("text, message", [
    ("wanda:p=0.3", "at least 2"),
    ("wanda:p=0.3, wanda:p=0.3", "twice"),
    ("wanda:p=0.3, foo:p=1", "unknown method 'foo'"),
    ("wanda:p=0.3, quarot", "compresses nothing"),
    ("", "empty"),
])
def test_bad_method_sets_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(PqqpError, match=message) as info:
        parse_method_set(text)
    assert "\n" not in str(info.value)


def test_pipeline_section_fills_templates_and_refuses_bad_families() -> None:
    (family,) = pipelines_section(MULTISTAGE)
    assert [str(pt.first) for pt in family.points][1] == "wanda:p=0.1 > rtn:w=4 > wanda:p=0.3"
    assert family.points[0].first == family.points[0].second  # the x = 0 anchor
    assert len(family.recipes()) == 8  # 5 pipelines and 3 single stages measured alone
    assert [str(r) for pt in family.points for r in pt.alone] == ["wanda:p=0.2", "wanda:p=0.3", "wanda:p=0.4"]
    bad = {"f": {**MULTISTAGE["multistage"], "first": "wanda:p={q}"}}
    with pytest.raises(PqqpError, match=r"uses \{q\}"):
        pipelines_section(bad)
    with pytest.raises(PqqpError, match="has no x"):
        pipelines_section({"f": {**MULTISTAGE["multistage"], "points": [{"p1": 0.1, "p2": 0.2}]}})
    with pytest.raises(PqqpError, match="same recipe"):
        pipelines_section({"f": {**MULTISTAGE["multistage"], "points": [{"x": 1, "p1": 0.2, "p2": 0.2}]}})
    with pytest.raises(PqqpError, match="unknown key 'colour'"):
        pipelines_section({"f": {**MULTISTAGE["multistage"], "colour": "red"}})


def test_recipe_orders_name_every_kind() -> None:
    assert parse_recipe("sparsegpt:p=0.1 > rtn:w=4 > sparsegpt:p=0.2").order == "P>Q>P"
    assert parse_recipe("sparsegpt:p=0.1 > rtn:w=4 > sparsegpt:p=0.2").ratios()["prune"] == pytest.approx(1 / 0.7)


# --- the rule's arithmetic ----------------------------------------------------------------------------------


def test_recommendation_is_weakest_first_and_stable() -> None:
    assert recommend([-20.0, -10.0, -15.0]) == (1, 2, 0)
    assert recommend([-10.0, -10.0, -30.0]) == (0, 1, 2)
    with pytest.raises(PqqpError, match="nan"):
        recommend([math.nan, 1.0])


def test_rank_regret_and_random_baseline() -> None:
    metrics = {(0, 1): -10.0, (1, 0): -12.0}
    hit = outcome((0, 1), metrics)
    assert (hit.rank, hit.regret, hit.hit) == (1, 0.0, True)
    miss = outcome((1, 0), metrics)
    assert (miss.rank, miss.regret, miss.hit) == (2, 2.0, False)
    assert miss.random_regret == pytest.approx(1.0) and miss.random_hit_rate == pytest.approx(0.5)
    summary = summarize([hit, miss])
    assert (summary.hit_rate, summary.mean_regret, summary.random_regret, summary.mean_rank) == (0.5, 1.0, 1.0, 1.5)
    assert cost_ratio(3) == 2.0 and cost_ratio(4) == 6.0
    with pytest.raises(PqqpError, match="no metric"):
        outcome((0, 1, 2), {(0, 1, 2): 1.0})


# --- measured on a tiny model ----------------------------------------------------------------------------


@pytest.fixture
def suite(model_dir: Path, text_file: Path) -> Suite:
    return Suite(models=(str(model_dir),), corpus=str(text_file), seqlen=32, calib_samples=4, eval_tokens=128,
                 pruners=(), quantizers=(), ratios=(), bits=(), curve_bits=(3, 4, 8), bootstrap=200, device="cpu",
                 max_ppl_ratio=1000, sections=(
                     Pipelines.parse(MULTISTAGE),
                     OrderSearch((parse_method_set("wanda:p=0.3, rtn:w=4,a=4,kv=4, magnitude:p=0.1"),))))


def test_pipeline_points_are_paired_advantages(suite: Suite, tmp_path: Path) -> None:
    bench = Bench(suite, Store(tmp_path / "s.sqlite"), progress=False)
    spec = suite.section("pipelines").specs(suite)[0]
    verdict = pipeline_verdict(Analysis(bench), spec)
    anchor, *rest = verdict.rows
    assert anchor[4] == 0.0 and anchor[5] == 0.0  # x = 0: one recipe compared with itself
    for label, x, first, second, a, se, _, _ in rest:
        assert a == pytest.approx(second - first, rel=1e-9)  # M = -ppl: A = ppl(second) - ppl(first)
        assert se > 0
    assert verdict.status in VERDICTS and "Fig. 7" in verdict.evidence() and "verdict: " in verdict.evidence()
    assert anchor[7].startswith("wanda:p=0.2 ") and verdict.rows[2][7].startswith("wanda:p=0.4 ")


def test_order_outcome_ranks_the_recommendation_among_all_orders(suite: Suite, tmp_path: Path) -> None:
    bench = Bench(suite, Store(tmp_path / "s.sqlite"), progress=False)
    spec = OrderSpec(suite, suite.models[0], suite.section("order_search").sets[0])
    analysis = Analysis(bench)
    result, details = order_outcome(analysis, spec)
    ppl = {o: bench.measure(spec.model, spec.methods.recipe(o)).value for o in spec.methods.orders()}
    singles = [bench.measure(spec.model, spec.methods.single(i)).value for i in range(3)]
    assert details["recommended"] == tuple(sorted(range(3), key=lambda i: singles[i]))
    best = min(ppl.values())
    assert result.regret == pytest.approx(ppl[result.recommended] - best)
    assert result.rank == 1 + sum(v < ppl[result.recommended] for v in ppl.values())
    assert result.random_regret == pytest.approx(sum(v - best for v in ppl.values()) / 6)
    text = order_evidence(analysis, spec, result, details)
    assert "recommended" in text and "2x more joint compressions" in text


def test_pqqp_order_cli(model_dir: Path, text_file: Path, tmp_path: Path, capsys) -> None:
    store = tmp_path / "o.sqlite"
    args = ["order", "--model", str(model_dir), "--corpus", str(text_file), "--seqlen", "32", "--calib-samples", "4",
            "--eval-tokens", "128", "--device", "cpu", "--no-progress", "--store", str(store), "--curve-bits", "3,4,8",
            "--methods", "wanda:p=0.3, rtn:w=4,a=4,kv=4, magnitude:p=0.1"]
    assert main(args) == 0
    quick = capsys.readouterr().out
    assert "recommended (increasing CER, weakest first)" in quick and "rank" not in quick.split("recommended")[-1]
    assert main([*args, "--exhaustive"]) == 0
    full = capsys.readouterr().out
    table = [line for line in full.splitlines() if " > " in line and line.split()[0].isdigit()]
    assert len(table) == 6, full  # all 3! orders, ranked
    assert "recommended order: rank" in full and "regret" in full
    assert main(["order", "--methods", "wanda:p=0.3"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_suite_tests_run_end_to_end(tmp_path: Path, model_dir: Path, text_file: Path) -> None:
    folder = tmp_path / "grid"
    folder.mkdir()
    shutil.copy(REPO / "suites" / "test_grid.py", folder / "test_grid.py")
    (folder / "s.yaml").write_text(
        f"models: ['{model_dir}']\ncorpus: '{text_file}'\nseqlen: 32\ncalib_samples: 4\neval_tokens: 128\n"
        "device: cpu\npruners: []\nquantizers: []\nratios: []\nbits: []\ncurve_bits: [3, 4, 8]\nbootstrap: 100\n"
        "max_ppl_ratio: 1000\n"
        "pipelines:\n  multistage:\n    x: p2 - p1\n    first: 'wanda:p={p1} > rtn:w=4 > wanda:p={p2}'\n"
        "    second: 'wanda:p={p2} > rtn:w=4 > wanda:p={p1}'\n    points:\n"
        "      - {x: 0.0, p1: 0.2, p2: 0.2}\n      - {x: 0.2, p1: 0.1, p2: 0.3}\n"
        "  mpq:\n    x: 16/avg\n    first: 'mpq:avg={avg},bits=2:4:8,order=prog,samples=1,probes=1,seqlen=16'\n"
        "    second: 'mpq:avg={avg},bits=2:4:8,order=regr,samples=1,probes=1,seqlen=16'\n"
        "    points: [{x: 2.0, avg: 8}, {x: 4.0, avg: 4}]\n"
        "  sharing:\n    x: C_P\n    first: 'share:r=0.9 > magnitude:p={p}'\n    second: 'magnitude:p={p} > share:r=0.9'\n"
        "    alone: ['share:r=0.9']\n    points: [{x: 1.25, p: 0.2}, {x: 2.0, p: 0.5}]\n"
        "order_search:\n  sets: ['wanda:p=0.3; rtn:w=4,a=4,kv=4']\n")
    assert load_suite(folder / "s.yaml").section("order_search").sets[0].id == "wanda:p=0.3+rtn:w=4,a=4,kv=4"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "test_grid.py", "--pqqp-suite", "s.yaml", "--pqqp-store",
                           str(folder / "st.sqlite"), "-p", "no:cacheprovider", "-rA", "-v"],
                          cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    for test in ("test_order_search", "test_order_rule"):
        assert set(outcomes(out, test)) <= {"PASSED", "FAILED"} and outcomes(out, test), out
    assert f"test_order_rule[{model_dir.name}]" in out, out  # the model's short name, not its path
    cases = outcomes(out, "test_case")
    assert len(cases) == len(load_suite(folder / "s.yaml").cases()) and set(cases) == {"PASSED"}, out  # all achieved
    pipelines = outcomes(out, "test_pipeline")  # supported, violated or inconclusive (skipped with its evidence)
    assert len(pipelines) == 3 and set(pipelines) <= {"PASSED", "FAILED", "SKIPPED"}, out
    assert "Order search: the intensity rule" in out and "Pipeline " in out, out
    assert "ERROR" not in out.split("short test summary")[-1], out


def test_leaderboard_shows_pipelines_and_the_order_search(suite: Suite, tmp_path: Path) -> None:
    from pqqp_bench.leaderboard import build

    with Store(tmp_path / "s.sqlite") as store:
        bench = Bench(suite, store, progress=False)
        for case in suite.cases():
            bench.measure_case(case)
        lookup = Bench(suite, store, lookup_only=True, progress=False)
        first = {p.name: p.read_bytes() for p in build(lookup, tmp_path / "a", "cmd")}
        second = {p.name: p.read_bytes() for p in build(lookup, tmp_path / "b", "cmd")}
    assert first == second  # byte-identical rebuilds
    text = first["leaderboard.md"].decode()
    assert "Pipeline multistage (Fig. 7)" in text and "Verdict: **" in text
    assert "Order search: the intensity rule against every order" in text and "intensity rule over 1 method sets" in text
    pngs = [name for name in first if name.endswith(".png")]
    assert sorted(name.split("-")[0] for name in pngs) == ["orders", "pipelines"]
    assert all(first[name][:8] == b"\x89PNG\r\n\x1a\n" and len(first[name]) > 5000 for name in pngs)


def test_order_search_options_override_the_suite(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("pruners: [wanda]\nquantizers: [rtn]\n")
    suite = load_suite(path, order_sets="wanda:p=0.3; rtn:w=8,a=8,kv=8 | magnitude:p=0.2, rtn:w=6", order_reference="gptq")
    assert [m.id for m in suite.section("order_search").sets] == ["wanda:p=0.3+rtn:w=8,a=8,kv=8", "magnitude:p=0.2+rtn:w=6"]
    assert suite.section("order_search").reference == "gptq"
    with pytest.raises(PqqpError, match="order_search.sets"):
        load_suite(path, order_reference="gptq")


def test_a_set_and_its_rotated_twin_are_two_sets() -> None:
    plain, rotated = parse_method_set("rtn:w=4,a=8; wanda:p=0.3"), parse_method_set("quarot > rtn:w=4,a=8; wanda:p=0.3")
    assert rotated.name == "quarot > rtn:w=4,a=8 ; wanda:p=0.3" and plain.name == "rtn:w=4,a=8 ; wanda:p=0.3"
    assert rotated.id == "quarot>rtn:w=4,a=8+wanda:p=0.3" and plain.id != rotated.id
    assert str(rotated.recipe((1, 0))) == "quarot > wanda:p=0.3 > rtn:w=4,a=8"
