"""A suite's grid on Ray, on a local instance with two workers of one CPU each: the same rows (bit for bit) as one
process, a worker killed mid-run, resuming, `pqqp run --suite --ray` and `pytest --pqqp-ray`; and the errors
that need no Ray at all. One Ray instance serves the module."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from conftest import save_tiny_llama, write_corpus
from pqqp_bench.cli import main
from pqqp_bench.errors import PqqpError
from pqqp_bench.measure import Bench
from pqqp_bench.ray_runner import Task, checked_key, ray_address, run_on_ray
from pqqp_bench.store import KEY_FIELDS, Store
from pqqp_bench.suite import Suite
from pqqp_bench.sections import load_suite

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """magnitude and Wanda x RTN at p 0.2, 0.4 and B 4, 8 on the tiny model: 23 measurements of a second each."""
    folder = tmp_path_factory.mktemp("ray-grid")
    model, corpus = save_tiny_llama(folder / "tiny-llama"), write_corpus(folder / "corpus.txt")
    path = folder / "tiny.yaml"
    path.write_text(f"models: ['{model}']\ncorpus: '{corpus}'\nseqlen: 32\ncalib_samples: 4\neval_tokens: 256\n"
                    "device: cpu\npruners: [magnitude, wanda]\nquantizers: [rtn]\nratios: [0.2, 0.4]\nbits: [4, 8]\n"
                    "curve_bits: [4, 8]\nbootstrap: 100\nmax_ppl_ratio: 1000\n")
    return path


@pytest.fixture(scope="module")
def suite(suite_file: Path) -> Suite:
    return load_suite(suite_file)


@pytest.fixture(scope="module")
def plain(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of a plain single-process run (`Bench.measure_case` over the cases) on one thread, as each
    Ray worker computes (cpus_per_worker=1)."""
    path = tmp_path_factory.mktemp("plain") / "plain.sqlite"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Store(path) as store:
            bench = Bench(suite, store, progress=False)
            for case in suite.cases():
                bench.measure_case(case)
    finally:
        torch.set_num_threads(threads)
    return path


def values(path: Path) -> dict[str, float]:
    with Store(path) as store:
        return {m.key.digest(): m.value for m in store.query()}


def rows(path: Path) -> tuple[int, int]:
    """(rows, distinct keys over every key column) of a store."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        count = db.execute("SELECT count(*) FROM measurements").fetchone()[0]
        distinct = db.execute(f"SELECT count(*) FROM (SELECT DISTINCT {', '.join(KEY_FIELDS)} FROM measurements)")
        return count, distinct.fetchone()[0]


def test_two_workers_store_what_one_process_does(ray_instance: Any, suite: Suite, plain: Path, tmp_path: Path) -> None:
    expected = values(plain)
    path = tmp_path / "ray.sqlite"
    with Store(path) as store:
        summary = run_on_ray(suite, store, workers=2, cpus_per_worker=1, progress=False)
        assert (summary.computed, summary.already_stored, summary.restarts, summary.failed) == (len(expected), 0, 0, [])
        assert values(path) == expected  # the same keys and bit-identical values
        created = {m.key.digest(): m.created for m in store.query()}
        again = run_on_ray(suite, store, progress=False)
        assert (again.computed, again.already_stored) == (0, len(expected))  # resumed: nothing left to compute
        assert {m.key.digest(): m.created for m in store.query()} == created


def test_killed_worker_is_restarted_and_each_case_stored_once(ray_instance: Any, suite: Suite, plain: Path,
                                                              tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_once(measurement: object, pid: int) -> None:
        if not killed:  # this worker has just been handed its next case: it dies in the middle of it
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    path = tmp_path / "killed.sqlite"
    with Store(path) as store:
        summary = run_on_ray(suite, store, workers=2, progress=False, on_result=kill_once)
    expected = values(plain)
    assert killed and summary.restarts == 1 and summary.failed == []
    assert summary.computed == len(expected) and summary.already_stored == 0  # no case came back twice
    assert rows(path) == (len(expected), len(expected))
    assert values(path) == expected


def test_resume_computes_only_what_is_missing(ray_instance: Any, suite: Suite, plain: Path, tmp_path: Path) -> None:
    path = tmp_path / "resumed.sqlite"
    with Store(plain) as source, Store(path) as store:
        kept = source.query()[::2]
        for m in kept:
            store.put(m)
        summary = run_on_ray(suite, store, progress=False)
        assert (summary.computed, summary.already_stored) == (len(source) - len(kept), len(kept))
        assert all(store.get(m.key).created == m.created for m in kept)  # stored rows are never replaced
    assert values(path) == values(plain)


def test_cli_runs_the_suite_on_ray(suite_file: Path, plain: Path, tmp_path: Path) -> None:
    """`pqqp run --suite FILE --ray`: a Ray instance of its own, then the report from the store."""
    pytest.importorskip("ray")
    store = tmp_path / "cli.sqlite"
    env = {**os.environ, "PQQP_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "pqqp_bench.cli", "run", "--suite", str(suite_file), "--store",
                             str(store), "--ray", "--ray-workers", "2", "--no-progress"],
                            capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "ray: 23 computed on 2 workers, 0 already stored" in result.stdout
    assert "cases: token-level perplexity" in result.stdout  # the report, read from the store
    assert values(store) == values(plain)


def test_pytest_option_runs_the_grid_on_ray_first(ray_instance: Any, suite_file: Path, plain: Path,
                                                  tmp_path: Path) -> None:
    """`pytest --pqqp-ray=ADDRESS`: the grid is computed on the (already running) cluster, the tests read it."""
    shutil.copy(REPO / "suites" / "test_grid.py", tmp_path / "test_grid.py")
    store = tmp_path / "pytest.sqlite"
    address = ray_instance.get_runtime_context().gcs_address
    result = subprocess.run([sys.executable, "-m", "pytest", "test_grid.py", "--pqqp-suite", str(suite_file),
                             "--pqqp-store", str(store), f"--pqqp-ray={address}", "-k", "test_case", "-q",
                             "-p", "no:cacheprovider"], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "23 passed" in out and "pqqp-bench: ray: 23 computed on 2 workers" in out
    assert values(store) == values(plain)


def test_without_ray_the_error_says_how_to_install_it(suite_file: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    rc = main(["run", "--suite", str(suite_file), "--store", str(tmp_path / "s.sqlite"), "--ray", "--no-progress"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "pqqp: error: --ray needs Ray, which is not installed here: pip install 'pqqp-bench[ray]'"


@pytest.mark.parametrize("address", ["suites/", "http://head:8265", "head"])
def test_malformed_address_is_refused(address: str) -> None:
    with pytest.raises(PqqpError, match=f"Ray address '{address}' is not accepted: accepted local"):
        ray_address(address)


@pytest.mark.parametrize("address", [None, "local", "auto", "10.0.0.5:6379", "ray://head:10001", "[::1]:6379"])
def test_well_formed_address_is_kept(address: str | None) -> None:
    assert ray_address(address) == (address or "local")


def test_workers_must_fit_and_ray_is_not_combined_with_xdist(suite: Suite, tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(PqqpError, match="workers=0 is not accepted"):
        run_on_ray(suite, store, workers=0)
    pytest.importorskip("xdist")
    result = subprocess.run([sys.executable, "-m", "pytest", "--pqqp-ray", "-n", "2", "--co", "-q",
                             "-p", "no:cacheprovider", str(REPO / "suites" / "test_grid.py")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--pqqp-ray computes the grid on Ray workers; it does not combine with -n" in result.stderr


def test_workers_that_do_not_fit_the_cluster_are_refused(ray_instance: Any, suite: Suite, tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(PqqpError, match="needs 3 CPUs; the cluster has 2"):
        run_on_ray(suite, store, workers=3, progress=False)


def test_a_worker_keying_a_case_differently_is_an_error(suite: Suite, tmp_path: Path) -> None:
    """Other model files on a worker's node give another fingerprint: an error, never a row under that key."""
    with Store(tmp_path / "s.sqlite") as store:
        bench = Bench(suite, store, progress=False)
        case = suite.cases()[0]
        key = bench.key(case.model, case.recipe, suite.seeds[0])
    task = Task(case.model, case.recipe, suite.seeds[0], key)
    assert checked_key(key.as_dict(), task) == key
    with pytest.raises(PqqpError, match=f"with model_hash='elsewhere', the driver with '{key.model_hash}'"):
        checked_key({**key.as_dict(), "model_hash": "elsewhere"}, task)


def test_ray_options_are_declared_once_for_both_front_ends(pytester) -> None:
    from pqqp_bench.cli import build_parser
    from pqqp_bench.ray_runner import RAY_OPTIONS

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    flags = {a.option_strings[0]: a for a in run._actions if a.option_strings}
    helped = pytester.runpytest("--help").stdout.str()
    for option in RAY_OPTIONS:
        assert flags[option.flag()].default == option.default and flags[option.flag()].type is option.kind
        assert option.flag("--pqqp-ray-") in helped
