"""The regression gate on synthetic stores: a planted 5% regression fails and is named, small changes pass,
seed noise widens the allowance, a baseline of other weights or another corpus is refused, bad input is one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pqqp_bench.cli import main
from pqqp_bench.errors import PqqpError
from pqqp_bench.spec import Recipe
from pqqp_bench.sections import load_suite
from synthetic import fake_model, fill, open_bench, suite_yaml, toy_ppl

REPO = Path(__file__).resolve().parents[1]
PLANTED = "wanda:p=0.2 > rtn:w=6,a=6,kv=6"


def worse(recipe_text: str, factor: float):
    """toy_ppl with one recipe's perplexity multiplied by `factor` (every seed)."""
    return lambda recipe, seed: toy_ppl(recipe, seed) * (factor if str(recipe) == recipe_text else 1.0)


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    """A suite over a never-loaded model folder, its filled store, and a baseline written from that store."""
    suite = suite_yaml(tmp_path / "suite.yaml", fake_model(tmp_path / "toy"), ratios="[0.2]", bits="[6, 8]")
    store = tmp_path / "base.sqlite"
    fill(open_bench(load_suite(suite), store))
    baseline = tmp_path / "baseline.json"
    assert gate(suite, store, baseline, "--update-baseline")[0] == 0
    return {"suite": suite, "store": store, "baseline": baseline, "tmp": tmp_path}


def gate(suite: Path, store: Path, baseline: Path, *extra: str) -> tuple[int, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["gate", "--suite", str(suite), "--store", str(store), "--baseline", str(baseline), *extra])
    return code, out.getvalue() + err.getvalue()


def current_store(setup: dict, ppl, name: str = "current.sqlite", **suite_changes) -> Path:
    store = setup["tmp"] / name
    shutil.copy(setup["store"], store)
    fill(open_bench(load_suite(setup["suite"], **suite_changes), store), ppl)
    return store


def test_baseline_records_identity_and_every_case(setup: dict) -> None:
    data = json.loads(setup["baseline"].read_text())
    suite = load_suite(setup["suite"])
    assert re.fullmatch(r"pydoc:[0-9a-f]{16}", data["corpus"]) and data["split"] == "holdout=0.2,seqlen=32,tokens=256,start=none"
    assert re.fullmatch(r"\d+\.\d+\.\d+\+code\.[0-9a-f]{12}", data["harness_version"])
    assert data["environment"]["versions.torch"] == torch.__version__ and data["environment"]["cpu_capability"]
    assert list(data["models"]) == [suite.models[0]] and len(data["models"][suite.models[0]]) == 16
    recipes = {c["recipe"] for c in data["cases"]}
    assert {str(case.recipe) for case in suite.cases()} == recipes
    wanda = next(c for c in data["cases"] if c["recipe"] == "wanda:p=0.2")
    assert list(wanda["seeds"]) == ["0"] and wanda["mean"] == pytest.approx(toy_ppl(Recipe(()), 0) * 1.08)


def test_planted_regression_fails_and_names_the_case(setup: dict) -> None:
    store = current_store(setup, worse(PLANTED, 1.05))
    code, out = gate(setup["suite"], store, setup["baseline"])
    assert code == 1, out
    regressed = [line for line in out.splitlines() if "worse by" in line]
    assert len(regressed) == 1 and PLANTED in regressed[0] and "+5.00%" in regressed[0], out
    assert "pqqp gate FAILED: 1 of" in out


def test_within_tolerance_passes(setup: dict) -> None:
    store = current_store(setup, worse(PLANTED, 1.01))
    code, out = gate(setup["suite"], store, setup["baseline"])
    assert code == 0 and "pqqp gate passed: 0 of" in out, out
    assert gate(setup["suite"], store, setup["baseline"], "--rel-tol", "0.005")[0] == 1  # the flag overrides the suite


def test_kernel_noise_widens_the_allowance(setup: dict) -> None:
    """A 3% change fails at rel_tol 2%, and passes once 1% kernel noise on each side is allowed (2 sigma of
    sqrt(2) x 1%: 2.9% more)."""
    store = current_store(setup, worse(PLANTED, 1.03))
    assert gate(setup["suite"], store, setup["baseline"])[0] == 1
    code, out = gate(setup["suite"], store, setup["baseline"], "--kernel-noise", "0.01")
    assert code == 0 and "kernel noise 1%" in out, out
    assert gate(setup["suite"], store, setup["baseline"], "--kernel-noise", "-0.1")[0] == 2


def test_collapsed_cases_are_listed_not_gated(setup: dict) -> None:
    """A case beyond max_ppl_ratio x dense in the baseline is not gated (its value is rounding chaos): a 50% change
    there passes, and the report lists it."""
    store = current_store(setup, worse(PLANTED, 1.5))
    assert gate(setup["suite"], store, setup["baseline"])[0] == 1
    code, out = gate(setup["suite"], store, setup["baseline"], "--max-ppl-ratio", "2")
    assert code == 0, out
    listed = next(line for line in out.splitlines() if line.startswith("not gated, collapsed in the baseline"))
    assert PLANTED in listed and "collapsed (not gated)" in out.splitlines()[-1]


def test_improvement_is_not_a_regression(setup: dict) -> None:
    store = current_store(setup, worse(PLANTED, 0.8))
    assert gate(setup["suite"], store, setup["baseline"])[0] == 0


def test_seed_noise_widens_the_allowance(tmp_path: Path) -> None:
    suite = suite_yaml(tmp_path / "suite.yaml", fake_model(tmp_path / "toy"), ratios="[0.2]", bits="[8]",
                       seeds="[0, 1, 2]")
    noisy = lambda recipe, seed: toy_ppl(recipe, 0) * (1 + 0.04 * (seed - 1))  # ±4% across seeds  # noqa: E731
    store, baseline = tmp_path / "s.sqlite", tmp_path / "b.json"
    fill(open_bench(load_suite(suite), store), noisy)
    gate(suite, store, baseline, "--update-baseline")
    fill(open_bench(load_suite(suite), store), lambda r, s: noisy(r, s) * (1.03 if str(r) == "wanda:p=0.2" else 1))
    assert gate(suite, store, baseline)[0] == 0  # 3% is within 2% + 2 sigma of a 4% seed spread
    code, out = gate(suite, store, baseline, "--noise-sigmas", "0")
    assert code == 1 and "wanda:p=0.2 " in out and "0,1,2" in out


def test_min_recovery_flags_a_case_that_falls_below_it(setup: dict) -> None:
    # wanda p=0.2 > rtn 8 bits keeps dense/ppl = 10/13.5 = 74% in the baseline; 1.5x worse keeps 49%
    store = current_store(setup, worse("wanda:p=0.2 > rtn:w=8,a=8,kv=8", 1.5))
    code, out = gate(setup["suite"], store, setup["baseline"], "--rel-tol", "10", "--min-recovery", "0.6")
    assert code == 1 and "of dense < 60.0%" in out, out
    assert gate(setup["suite"], store, setup["baseline"], "--rel-tol", "10", "--min-recovery", "0.4")[0] == 0


def test_missing_cases_are_reported_not_failed(setup: dict) -> None:
    shorter = setup["tmp"] / "short.sqlite"
    fill(open_bench(load_suite(setup["suite"]), shorter), skip=lambda r: str(r) == PLANTED)
    code, out = gate(setup["suite"], shorter, setup["baseline"])
    assert code == 0 and "missing from the current store" in out and PLANTED in out and "1 missing" in out


def test_a_gate_that_compares_nothing_fails(setup: dict) -> None:
    empty = setup["tmp"] / "empty.sqlite"
    fill(open_bench(load_suite(setup["suite"]), empty), skip=lambda r: True)
    code, out = gate(setup["suite"], empty, setup["baseline"])
    assert code == 1 and "no case of the baseline is in the current store" in out and "0 of 0 compared" in out


@pytest.mark.parametrize("field, value, named", [
    ("models", {"smollm2-135m": "0123456789abcdef"}, "'smollm2-135m'"),
    ("corpus", "austen", "'austen'"),
])
def test_baseline_of_another_model_or_corpus_is_refused(setup: dict, field: str, value, named: str) -> None:
    data = json.loads(setup["baseline"].read_text())
    data[field] = value
    setup["baseline"].write_text(json.dumps(data))
    code, out = gate(setup["suite"], setup["store"], setup["baseline"])
    line = out.strip().splitlines()[-1]
    assert code == 2 and line.startswith("pqqp: error: baseline") and named in line and "not comparable" in line
    assert ("'pydoc:" if field == "corpus" else str(setup["tmp"] / "toy")) in line  # and the current value


def test_other_code_and_environment_are_compared_and_named(setup: dict) -> None:
    """A baseline computed by other code, other torch kernels and another torch: compared all the same, and the
    report names each difference with both values."""
    data = json.loads(setup["baseline"].read_text())
    data["harness_version"] = "0.0.9+code.000000000000"
    data["environment"]["cpu_capability"] = "AVX2"
    data["environment"]["versions.torch"] = "2.0.0"
    setup["baseline"].write_text(json.dumps(data))
    code, out = gate(setup["suite"], setup["store"], setup["baseline"])
    assert code == 0 and "pqqp gate passed" in out, out
    assert "harness: baseline 0.0.9+code.000000000000, current 0.1.0+code." in out
    assert f"cpu_capability: baseline AVX2, current {torch.backends.cpu.get_cpu_capability()}" in out
    assert f"versions.torch: baseline 2.0.0, current {torch.__version__}" in out


def test_other_weights_are_refused(setup: dict) -> None:
    data = json.loads(setup["baseline"].read_text())
    model = next(iter(data["models"]))
    data["models"][model] = "ffffffffffffffff"
    setup["baseline"].write_text(json.dumps(data))
    code, out = gate(setup["suite"], setup["store"], setup["baseline"])
    assert code == 2 and "'ffffffffffffffff'" in out and "not comparable" in out


@pytest.mark.parametrize("content, named", [
    (None, "does not exist"),
    ("{not json", "is not valid JSON"),
    ('{"format": "pqqp-baseline/2", "colour": 1}', "unknown key 'colour'"),
    ('{"format": "pqqp-baseline/1", "suite": "s", "harness_version": "0", "models": {}, "corpus": "c", "split": "s", '
     '"cases": []}', "has format 'pqqp-baseline/1', not 'pqqp-baseline/2'"),
    ("[1, 2]", "holds a list"),
    ('{"format": "other/9", "suite": "s", "harness_version": "0", "models": {}, "corpus": "c", "split": "s", '
     '"cases": []}', "format 'other/9'"),
    ('{"format": "pqqp-baseline/2", "suite": "s", "harness_version": "0", "environment": {}, "models": {}, "corpus": "c", "split": "s", '
     '"cases": []}', "has no cases (a gate against it would compare nothing)"),
    ('{"format": "pqqp-baseline/2", "suite": "s", "harness_version": "0", "environment": {}, "models": {}, "corpus": "c", "split": "s", '
     '"cases": [{"model": "m", "recipe": "dense", "metric": "ppl", "seeds": {"-1": 10.0}}, '
     '{"model": "m", "recipe": "dense", "metric": "ppl", "seeds": {"-1": 11.0}}]}', "case 1 repeats 'dense'"),
    ('{"format": "pqqp-baseline/2", "suite": "s", "harness_version": "0", "environment": {}, "models": {}, "corpus": "c", "split": "s", '
     '"cases": [{"model": "m", "recipe": "dense", "metric": "ppl", "seeds": {"-1": NaN}}]}', "case 0 needs"),
])
def test_bad_baseline_is_a_one_line_error(setup: dict, content: str | None, named: str) -> None:
    bad = setup["tmp"] / "bad.json"
    if content is not None:
        bad.write_text(content)
    code, out = gate(setup["suite"], setup["store"], bad)
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pqqp: error:") and named in lines[0], out
    assert str(bad) in lines[0] and "--update-baseline" in lines[0]


def test_bad_flags_and_missing_store_are_one_line_errors(setup: dict) -> None:
    code, out = gate(setup["suite"], setup["tmp"] / "nope.sqlite", setup["baseline"])
    assert code == 2 and "nope.sqlite" in out and "does not exist" in out
    code, out = gate(setup["suite"], setup["store"], setup["baseline"], "--min-recovery", "1.5")
    assert code == 2 and "min_recovery=1.5" in out and "(0, 1]" in out
    for flag, value, named in (("--noise-sigmas", "nan", "noise_sigmas=nan"), ("--noise-sigmas", "-1", "noise_sigmas=-1"),
                               ("--rel-tol", "inf", "rel_tol=inf"), ("--rel-tol", "nan", "rel_tol=nan")):
        code, out = gate(setup["suite"], setup["store"], setup["baseline"], flag, value)
        assert code == 2 and named in out and len(out.strip().splitlines()) == 1, out


def test_a_zero_baseline_value_is_compared_in_the_metrics_units() -> None:
    from pqqp_bench.gate import Values, judge
    from pqqp_bench.suite import GateRule

    case = ("m", "wanda:p=0.5", "lm-eval:pqqp_cloze/acc")
    same = judge(case, Values({-1: 0.0}), Values({-1: 0.0}), GateRule(0.02), 2.0, (None, None))
    assert same.reason == "" and same.worse == 0.0
    better = judge(case, Values({-1: 0.0}), Values({-1: 0.5}), GateRule(0.02), 2.0, (None, None))
    assert better.reason == "" and better.worse == -0.5
    worse = judge(("m", "r", "lm-eval:t/perplexity"), Values({-1: 0.0}), Values({-1: 0.5}), GateRule(0.02), 2.0,
                  (None, None))
    assert worse.reason.startswith("worse by 50.00%")


def test_suite_gate_rules(tmp_path: Path) -> None:
    suite = load_suite(suite_yaml(tmp_path / "a.yaml", "m", gate="{ppl: {rel_tol: 0.05, min_recovery: 0.3}}"))
    assert (suite.gate_rule("ppl").rel_tol, suite.gate_rule("ppl").min_recovery) == (0.05, 0.3)
    assert suite.gate_rule("acc").rel_tol == 0.02  # a metric the suite does not name gets the default
    with pytest.raises(PqqpError, match="unknown gate key 'tol'.*rel_tol, min_recovery"):
        load_suite(suite_yaml(tmp_path / "b.yaml", "m", gate="{ppl: {tol: 0.05}}"))
    with pytest.raises(PqqpError, match="rel_tol=-0.1"):
        load_suite(suite_yaml(tmp_path / "c.yaml", "m", gate="{ppl: {rel_tol: -0.1}}"))


def test_pytest_option_fails_the_session_on_a_regression(setup: dict) -> None:
    """`pytest suites/ --pqqp-gate`: the grid's tests pass from the store, then the gate fails the session."""
    folder = setup["tmp"] / "grid"
    folder.mkdir()
    shutil.copy(REPO / "suites" / "test_grid.py", folder)
    store = current_store(setup, worse(PLANTED, 1.05))

    def session(*extra: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "pytest", "test_grid.py", "-k", "test_case", "-q", "-p", "no:cacheprovider",
                "--pqqp-suite", str(setup["suite"]), "--pqqp-store", str(store), *extra]
        return subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=300)

    failed = session("--pqqp-gate", str(setup["baseline"]))
    last = failed.stdout.strip().splitlines()[-1]
    assert failed.returncode == 1 and "1 gate failed" in last and " passed" in last, failed.stdout[-2000:]
    assert "regression gate" in failed.stdout and PLANTED in failed.stdout and "+5.00%" in failed.stdout
    assert session("--pqqp-gate", str(setup["baseline"]), "--pqqp-rel-tol", "0.1").returncode == 0
    new = setup["tmp"] / "new.json"
    assert session("--pqqp-gate", str(new), "--pqqp-update-baseline").returncode == 0 and new.is_file()
    assert session("--pqqp-gate", str(new)).returncode == 0
    bad = session("--pqqp-gate", str(setup["tmp"] / "absent.json"))
    assert bad.returncode == 4 and "absent.json" in bad.stderr and "does not exist" in bad.stderr
