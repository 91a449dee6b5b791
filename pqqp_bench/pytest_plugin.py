"""The pytest plugin (registered through the `pytest11` entry point): the grid as parametrized tests.

A suite YAML (`--pqqp-suite`, default `suites/default.yaml` under the rootdir) names the grid; every key of it
has a `--pqqp-*` option that overrides it. Test functions ask for one of three parameters and are
parametrized over the grid with readable ids:

* `pqqp_case`: one measurement (dense, a method alone, a joint recipe in one order), e.g.
  `smollm2-135m-sparsegpt:p=0.2-rtn:w=4,a=4,kv=4-Q>P`;
* `pqqp_hypothesis`: Hypothesis 1 for one (model, pruner, quantizer, p), e.g. `smollm2-135m-wanda:p=0.3-rtn`;
* `pqqp_pooled`: the pooled view of Figs. 3 and 4, Hypothesis 1 for one (model, pruner, quantizer) over every
  (p, B) of the grid (suites with several p), e.g. `smollm2-135m-sparsegpt-quarot>rtn-pooled`;
* `pqqp_interference`: Table 1 for one pruner (suites with `interference: true`);
* `pqqp_throughput`: the generation tokens/s of one recipe (suites with a `throughput` section), e.g.
  `smollm2-135m-sleb:p=0.2`; dense first, since every speed-up divides by it.

Session fixtures: `pqqp_suite`, `pqqp_store` (the results store, `--pqqp-store`), `pqqp_bench` (measures
through the store, so nothing is computed twice, across tests, sessions and xdist workers) and
`pqqp_experiment` (the model and corpus, loaded once). With `--pqqp-ray [ADDRESS]` the `pqqp_bench` fixture
first computes the suite's missing measurements on Ray workers into the store (`ray_runner.py`), and the tests
then read them from there. With `--pqqp-gate BASELINE` the session ends with the regression gate on the store
(`gate.py`): a regressed case fails the session. Heavy imports happen inside the fixtures, so the plugin costs
nothing in sessions that do not use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from .ray_runner import ADDRESSES, LOCAL, RAY_OPTIONS, ray_address
from . import sections
from .settings import KNOBS

if TYPE_CHECKING:
    from .analysis import Analysis
    from .experiment import Experiment
    from .measure import Bench
    from .store import Store
    from .suite import Suite

SUITE = pytest.StashKey["Suite"]()
GATE_REPORT = pytest.StashKey[str]()
GATE_FAILED = pytest.StashKey[bool]()
RAY_SUMMARY = pytest.StashKey[str]()


def grid_options() -> dict[str, str]:
    """Option -> help; each overrides the suite key of the same name (lists: comma-separated, e.g. --pqqp-seed 0,1,2;
    templates with parameters: separated by ';'): the settings (settings.py), then the grid's and sections' keys
    (sections/__init__.py)."""
    return {**{knob.key: knob.help for knob in KNOBS}, **sections.options()}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pqqp", "pqqp-bench: compression-order benchmark")
    group.addoption("--pqqp-suite", default=None, help="suite YAML (default: suites/default.yaml under the rootdir)")
    aliases = {"models": ["--pqqp-model"], "seeds": ["--pqqp-seed"]}
    for name, text in grid_options().items():
        group.addoption(f"--pqqp-{name.replace('_', '-')}", *aliases.get(name, []), dest=f"pqqp_{name}",
                        default=None, help=f"{text} (default: the suite's)")
    group.addoption("--pqqp-store", default=None,
                    help="results store, SQLite (default: $PQQP_STORE or results/pqqp.sqlite under the rootdir)")
    group.addoption("--pqqp-refresh", action="store_true", default=False,
                    help="recompute (and replace) stored measurements instead of reusing them")
    group.addoption("--pqqp-cache-dir", default=None, help="where converted models are cached")
    group.addoption("--pqqp-vllm-venv", default=None,
                    help="the venv with vLLM for throughput tests (default: $PQQP_VLLM_VENV or ~/.cache/pqqp-bench/venvs/vllm)")
    group.addoption("--pqqp-threads", type=int, default=None, metavar="N",
                    help="torch threads per process (default: all cores; under pytest-xdist -n W: cores // W per worker)")
    group.addoption("--pqqp-trust-remote-code", action="store_true", default=False,
                    help="allow model code from the hub (off by default)")
    group.addoption("--pqqp-ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                    help=f"first compute the suite's missing cases on Ray workers into the store, then run the tests "
                         f"on the stored results (needs pqqp-bench[ray]; not with -n). ADDRESS: {ADDRESSES}; default "
                         f"local; before test paths write --pqqp-ray=ADDRESS")
    for option in RAY_OPTIONS:
        group.addoption(option.flag("--pqqp-ray-"), type=option.kind, default=option.default, metavar="N",
                        help=f"with --pqqp-ray: {option.help}")
    group.addoption("--pqqp-gate", default=None, metavar="BASELINE",
                    help="at the end of the session compare the store with this baseline JSON; the session fails "
                         "when a case regressed")
    group.addoption("--pqqp-update-baseline", action="store_true", default=False,
                    help="with --pqqp-gate: write the store's values as the new baseline instead of comparing")
    group.addoption("--pqqp-rel-tol", type=float, default=None,
                    help="gate: allowed relative worsening per case, e.g. 0.02 (default: the suite's gate rule)")
    group.addoption("--pqqp-min-recovery", type=float, default=None,
                    help="gate: fraction of the dense quality a case must keep, e.g. 0.5 (default: the suite's)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pqqp: a test of the pqqp-bench compression-order grid")
    config.addinivalue_line("markers", "pqqp_case: one measurement of the grid (a recipe on a model)")
    config.addinivalue_line("markers", "pqqp_hypothesis: a hypothesis verdict over measured points")
    config.addinivalue_line("markers", "pqqp_throughput: generation tokens/s of a recipe (the suite's throughput section)")
    config.addinivalue_line("markers", "slow: calibration-heavy (sparsegpt, gptq, sleb): minutes on a CPU")
    config.addinivalue_line("markers", "xdist_group(name): cases of one model shard, kept on one worker by --dist loadgroup")
    config.addinivalue_line("markers", "pqqp_absent: a test kind the suite has no section for (deselected)")
    place_worker(config)
    if config.getoption("pqqp_update_baseline") and not config.getoption("pqqp_gate"):
        raise pytest.UsageError("pqqp: --pqqp-update-baseline needs --pqqp-gate BASELINE: the file to write")
    if config.getoption("pqqp_ray") is not None:
        from .errors import PqqpError

        if config.getoption("numprocesses", None) or getattr(config, "workerinput", None) is not None:
            raise pytest.UsageError("pqqp: --pqqp-ray computes the grid on Ray workers; it does not combine with -n "
                                    "(pytest-xdist): drop one of them")
        try:
            ray_address(config.getoption("pqqp_ray"))
        except PqqpError as exc:
            raise pytest.UsageError(f"pqqp: {exc}") from None
    if config.getoption("pqqp_suite") or any(config.getoption(f"pqqp_{name}") is not None for name in grid_options()):
        suite_of(config)  # a bad suite or override is a usage error now, in one line, not a collection error
    if config.getoption("pqqp_store"):
        from .errors import PqqpError
        from .store import check_store_file

        try:
            check_store_file(config.getoption("pqqp_store"))
        except PqqpError as exc:
            raise pytest.UsageError(f"pqqp: {exc}") from None
    if config.getoption("pqqp_gate") and not config.getoption("pqqp_update_baseline"):
        from .errors import PqqpError
        from .gate import load_baseline

        try:  # a bad baseline fails now, not after the whole grid has run
            load_baseline(config.getoption("pqqp_gate"))
        except PqqpError as exc:
            raise pytest.UsageError(f"pqqp: {exc}") from None


def place_worker(config: pytest.Config) -> None:
    """Pin a pytest-xdist worker to its GPU and its share of the CPU threads (`workers.py`); `--pqqp-threads`
    alone sets the threads of a single process."""
    from .errors import PqqpError
    from .workers import apply, placement, xdist_placement

    threads, workerinput = config.getoption("pqqp_threads"), getattr(config, "workerinput", None)
    try:
        if workerinput is not None:
            apply(xdist_placement(workerinput, threads))
        elif threads is not None:
            apply(placement(0, 1, [], os.cpu_count() or 1, threads))
    except PqqpError as exc:
        raise pytest.UsageError(f"pqqp: {exc}") from None


def worker_count(config: pytest.Config) -> int:
    workerinput = getattr(config, "workerinput", None)
    return int(workerinput["workercount"]) if workerinput is not None else 1


def case_groups(cases: list, workers: int) -> list[str]:
    """The xdist group of each case: `<model>#<shard>`, the cases of a model cut into `workers // models` shards
    (at least one) of consecutive cases. With `--dist loadgroup` a shard runs on one worker, so a worker loads few
    models, a one-model grid still spreads over every worker, and the cases of one prefix family (consecutive in the
    suite's order, `suite.scheduled`) mostly share a worker and its prefix cache."""
    models = list(dict.fromkeys(c.model for c in cases))
    shards = max(1, workers // max(1, len(models)))
    sizes = {m: sum(1 for c in cases if c.model == m) for m in models}
    seen: dict[str, int] = {}
    groups = []
    for case in cases:
        index = seen[case.model] = seen.get(case.model, -1) + 1
        groups.append(f"{case.model}#{index * shards // sizes[case.model]}")
    return groups


def suite_of(config: pytest.Config) -> "Suite":
    """The session's suite: the YAML with the command-line overrides, read once."""
    if SUITE not in config.stash:
        from .errors import PqqpError
        from .sections import load_suite

        path = config.getoption("pqqp_suite") or Path(config.rootpath) / "suites" / "default.yaml"
        overrides = {name: config.getoption(f"pqqp_{name}") for name in grid_options()}
        try:
            config.stash[SUITE] = load_suite(path, **overrides)
        except PqqpError as exc:
            raise pytest.UsageError(f"pqqp: {exc}") from None
    return config.stash[SUITE]


def marks_for(recipe) -> list:
    slow = any(s.slow for s in recipe.stages)
    return [pytest.mark.pqqp, *([pytest.mark.slow] if slow else [])]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `pqqp_case` over the suite's cases, and each section's test parameters (sections/) over what the
    section gives; a parameter whose section the suite lacks gets one deselected placeholder."""
    names = metafunc.fixturenames
    if "pqqp_case" not in names and not any(name in names for name in sections.fixtures()):
        return
    suite = suite_of(metafunc.config)
    if "pqqp_case" in names:
        cases = suite.cases()
        groups = case_groups(cases, worker_count(metafunc.config))
        metafunc.parametrize("pqqp_case", [
            pytest.param(c, id=c.id, marks=[*marks_for(c.recipe), pytest.mark.pqqp_case, pytest.mark.xdist_group(g)])
            for c, g in zip(cases, groups)])
    given = {}
    for section in sections.active(suite):
        for name, values in section.tests(suite).items():
            given[name] = [pytest.param(v, id=getattr(v, "id", v), marks=[
                *(marks_for(v.recipe) if hasattr(v, "recipe") else [pytest.mark.pqqp]), getattr(pytest.mark, section.mark)])
                for v in values]
    for registration in sections.SECTIONS:
        for name in registration.fixtures:
            if name in names:
                metafunc.parametrize(name, given.get(name) or [pytest.param(None, marks=ABSENT)])


ABSENT = pytest.mark.pqqp_absent
"""The placeholder of a test kind the suite has no section for: deselected, so a run prints no skip line for it."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    absent = [item for item in items if item.get_closest_marker("pqqp_absent")]
    if absent:
        config.hook.pytest_deselected(items=absent)
        items[:] = [item for item in items if not item.get_closest_marker("pqqp_absent")]


def store_path(config: pytest.Config) -> Path:
    from .store import default_store_path

    given = config.getoption("pqqp_store")
    return Path(given) if given else default_store_path(Path(config.rootpath))


@pytest.fixture(scope="session")
def pqqp_suite(pytestconfig: pytest.Config) -> "Suite":
    """The session's suite (YAML plus `--pqqp-*` overrides)."""
    return suite_of(pytestconfig)


@pytest.fixture(scope="session")
def pqqp_store(pytestconfig: pytest.Config) -> Iterator["Store"]:
    """The results store (`--pqqp-store`), opened once per session; a foreign or corrupt file is refused."""
    from .errors import PqqpError
    from .store import Store

    try:
        store = Store(store_path(pytestconfig))
    except PqqpError as exc:
        raise pytest.UsageError(f"pqqp: {exc}") from None
    yield store
    store.close()


@pytest.fixture(scope="session")
def pqqp_bench(pytestconfig: pytest.Config, pqqp_suite: "Suite", pqqp_store: "Store") -> "Bench":
    """Measurements through the results store, computed on demand (each model loaded at most once); with
    `--pqqp-ray`, the suite's missing measurements are first computed on Ray workers into the store."""
    from .errors import PqqpError
    from .measure import Bench

    bench = Bench(pqqp_suite, pqqp_store, refresh=pytestconfig.getoption("pqqp_refresh"), progress=False,
                  cache_dir=pytestconfig.getoption("pqqp_cache_dir"),
                  trust_remote_code=pytestconfig.getoption("pqqp_trust_remote_code"),
                  vllm_venv=pytestconfig.getoption("pqqp_vllm_venv"))
    address = pytestconfig.getoption("pqqp_ray")
    if address is not None:
        from .ray_runner import run_on_ray

        workers = {o.name: pytestconfig.getoption(f"pqqp_ray_{o.name}") for o in RAY_OPTIONS}
        try:
            done = run_on_ray(pqqp_suite, pqqp_store, address=address, **workers, refresh=bench.refresh,
                              cache_dir=bench.cache_dir, trust_remote_code=bench.trust_remote_code, progress=False)
        except PqqpError as exc:
            raise pytest.UsageError(f"pqqp: {exc}") from None
        bench.computed.extend(done.digests)  # refreshed already: not again
        pytestconfig.stash[RAY_SUMMARY] = done.line()
    return bench


@pytest.fixture(scope="session")
def pqqp_analysis(pqqp_bench: "Bench") -> "Analysis":
    """The paper's quantities (CER, A, verdicts, order outcomes) from `pqqp_bench`'s measurements (analysis.py)."""
    from .analysis import Analysis

    return Analysis(pqqp_bench)


@pytest.fixture(scope="session")
def pqqp_experiment(pqqp_bench: "Bench") -> "Experiment":
    """The suite's first model with its corpus, calibration samples and evaluation windows, loaded once per
    session and shared with `pqqp_bench` (for tests of one's own: `pqqp_experiment.run(recipe)`)."""
    from .errors import PqqpError

    try:
        return pqqp_bench.experiment(pqqp_bench.suite.models[0])
    except PqqpError as exc:
        raise pytest.UsageError(f"pqqp: {exc}") from None


def gate(config: pytest.Config) -> tuple[int, str]:
    """The regression gate (`--pqqp-gate`) on the session's store: (exit code, report); bad input exits 4."""
    from .errors import PqqpError
    from .gate import run_gate, with_overrides
    from .measure import Bench
    from .store import Store

    try:
        suite = with_overrides(suite_of(config), config.getoption("pqqp_rel_tol"), config.getoption("pqqp_min_recovery"))
        path = store_path(config)
        if not path.is_file():
            raise PqqpError(f"store {str(path)!r} does not exist: the gate needs the results of `pytest suites/`")
        with Store(path) as store:
            bench = Bench(suite, store, lookup_only=True, progress=False, cache_dir=config.getoption("pqqp_cache_dir"))
            return run_gate(bench, config.getoption("pqqp_gate"), update=config.getoption("pqqp_update_baseline"))
    except PqqpError as exc:
        return pytest.ExitCode.USAGE_ERROR, f"pqqp: error: {exc}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Run the gate once the grid is stored; a regression turns a passing session into a failing one."""
    config = session.config
    if not config.getoption("pqqp_gate") or getattr(config, "workerinput", None) is not None:
        return
    code, config.stash[GATE_REPORT] = gate(config)
    config.stash[GATE_FAILED] = bool(code)
    if code == pytest.ExitCode.USAGE_ERROR or (code and session.exitstatus == pytest.ExitCode.OK):
        session.exitstatus = code


class GateFailure:
    """The gate's entry in pytest's outcome counts (a report-like object pytest counts in its last line)."""

    count_towards_summary = True
    when = "session"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The Ray run's line where `--pqqp-ray` was given, the case table and the hypothesis verdicts, read from the
    store (so `-n 2` workers' results show too), then the gate's report where `--pqqp-gate` was given."""
    if RAY_SUMMARY in config.stash:
        terminalreporter.write_line(f"pqqp-bench: {config.stash[RAY_SUMMARY]}")
    if exitstatus == pytest.ExitCode.INTERRUPTED and SUITE in config.stash:
        terminalreporter.write_line(f"pqqp: interrupted: every measurement finished before is stored in "
                                    f"{store_path(config)}; the same command resumes from them")
        return
    summary(terminalreporter, config)
    if GATE_REPORT in config.stash:
        terminalreporter.write_sep("=", "pqqp-bench: regression gate")
        terminalreporter.write_line(config.stash[GATE_REPORT])
        if config.stash.get(GATE_FAILED, False):  # so pytest's last line says it too: "1 gate failed, 29 passed"
            terminalreporter.stats.setdefault("gate failed", []).append(GateFailure())


def summary(terminalreporter, config: pytest.Config) -> None:
    ran_grid = any("pqqp" in (getattr(r, "keywords", None) or {}) for reports in terminalreporter.stats.values()
                   for r in reports)
    if not ran_grid or getattr(config, "workerinput", None) is not None:
        return
    path = store_path(config)
    if not path.exists():
        return
    from .analysis import Analysis
    from .measure import Bench
    from .sections import full_report
    from .store import Store

    try:
        with Store(path) as store:
            bench = Bench(suite_of(config), store, lookup_only=True, cache_dir=config.getoption("pqqp_cache_dir"))
            text = full_report(Analysis(bench))
    except Exception as exc:  # a summary must never hide the test outcome
        terminalreporter.write_line(f"pqqp: no summary: {type(exc).__name__}: {exc}")
        return
    if text:
        terminalreporter.write_sep("=", f"pqqp-bench: suite {suite_of(config).name}, store {path}")
        terminalreporter.write_line(text)
