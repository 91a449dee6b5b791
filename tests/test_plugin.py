"""The pytest plugin end to end, on a tiny model in a subprocess: the suite's grid as tests with readable ids,
stored results reused by a second run, SIGKILL in the middle of the grid, two xdist workers, a foreign store.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import outcomes

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


@pytest.fixture
def grid(tmp_path: Path, model_dir: Path, text_file: Path) -> Path:
    """A folder holding the shipped suite test file and a tiny grid over the tiny model."""
    folder = tmp_path / "grid"
    folder.mkdir()
    shutil.copy(REPO / "suites" / "test_grid.py", folder / "test_grid.py")
    (folder / "tiny.yaml").write_text(
        f"models: ['{model_dir}']\ncorpus: '{text_file}'\nseqlen: 32\ncalib_samples: 4\neval_tokens: 256\n"
        "device: cpu\npruners: [magnitude, wanda]\nquantizers: [rtn]\nratios: [0.2, 0.4]\nbits: [3, 4, 6, 8]\n"
        "curve_bits: [2, 3, 4, 6, 8]\nbootstrap: 100\nmax_ppl_ratio: 1000\n")
    return folder


def pytest_args(folder: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "test_grid.py", "--pqqp-suite", "tiny.yaml", "--pqqp-store", str(store),
            "-p", "no:cacheprovider", "-rA", "-v", *extra]


def run(folder: Path, store: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(pytest_args(folder, store, *extra), cwd=folder, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)


def rows(store: Path) -> dict[str, tuple[float, str]]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return {d: (v, c) for d, v, c in db.execute("SELECT digest, value, created FROM measurements")}


def test_grid_runs_stores_and_reuses(grid: Path, model_dir: Path) -> None:
    store = grid / "store.sqlite"
    first = run(grid, store)
    out = first.stdout + first.stderr
    cases = outcomes(out, "test_case")
    assert cases and set(cases) == {"PASSED"}, out[-3000:]
    assert "test_case[tiny-llama-wanda:p=0.2-rtn:w=4,a=4,kv=4-Q>P]" in out  # readable ids: the folder's name
    assert "asks for no" not in out and "has no throughput section" not in out  # absent sections: deselected
    assert "deselected" in out.splitlines()[-1]
    verdicts = outcomes(out, "test_progressive_intensity")
    assert len(verdicts) == 4, out[-3000:]  # 2 pruners x 1 quantizer x 2 ratios
    if "FAILED" in verdicts:  # a hypothesis may fail on a random model: then with its evidence
        assert "violated:" in out and "x = C*_P - C_Q" in out
    if "SKIPPED" in verdicts:  # inconclusive: skipped with the smallest slope the data could detect
        assert "the smallest slope these data detect" in out
    assert len(outcomes(out, "test_progressive_intensity_pooled")) == 2  # per pruner: pooled over the two ratios
    assert "Progressive Intensity Hypothesis" in out and "cases: token-level perplexity" in out
    stored = rows(store)
    assert len(stored) == len(cases)  # one row per measurement: seeds only where they matter (one seed here)

    second = run(grid, store)
    assert outcomes(second.stdout, "test_case") == cases
    assert outcomes(second.stdout, "test_progressive_intensity") == verdicts
    assert rows(store) == stored  # nothing recomputed: the same rows with their original timestamps


def test_sigkill_mid_grid_then_resume(grid: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.sqlite"
    run(grid, reference, "-k", "test_case")
    expected = {d: v for d, (v, _) in rows(reference).items()}

    store = tmp_path / "killed.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(pytest_args(grid, store, "-k", "test_case"), cwd=grid, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if store.exists() and len(rows(store)) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = rows(store)
    assert 3 <= len(at_kill) < len(expected), "the run was not killed in the middle of the grid"

    run(grid, store, "-k", "test_case")
    final = rows(store)
    assert {d: v for d, (v, _) in final.items()} == expected  # nothing lost, nothing duplicated, same numbers
    assert all(final[d] == at_kill[d] for d in at_kill)  # measurements stored before the kill were kept as they were


def test_two_workers_store_what_one_does(grid: Path, tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    run(grid, one, "-k", "test_case")
    result = run(grid, two, "-k", "test_case", "-n", "2")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    a, b = rows(one), rows(two)
    assert a.keys() == b.keys()
    for digest in a:
        assert b[digest][0] == pytest.approx(a[digest][0], rel=1e-6)


def test_foreign_store_is_refused_and_kept(grid: Path) -> None:
    store = grid / "notes.sqlite"
    store.write_text("my notes, not a results store\n")
    result = run(grid, store, "-k", "test_case")
    assert result.returncode != 0
    assert "pqqp:" in result.stdout + result.stderr and str(store) in result.stdout + result.stderr
    assert store.read_text() == "my notes, not a results store\n"


def test_structured_pruning_shows_no_interference(grid: Path, model_dir: Path, text_file: Path) -> None:
    """Table 1 on the tiny model: where both orders remove the same blocks, SLEB's A(Q->P) is exactly zero."""
    (grid / "tiny.yaml").write_text(
        f"models: ['{model_dir}']\ncorpus: '{text_file}'\nseqlen: 32\ncalib_samples: 4\neval_tokens: 256\n"
        "device: cpu\npruners: [sleb]\nquantizers: [rtn]\nratios: [0.5]\nbits: [4, 8]\ncurve_bits: [4, 8]\n"
        "bootstrap: 100\ninterference: true\n")
    result = run(grid, grid / "store.sqlite", "-k", "interference", "-s")
    out = result.stdout + result.stderr
    assert outcomes(out, "test_interference") == ["PASSED"], out[-3000:]
    assert out.count("same blocks removed: True") == 2 and "A(Q->P) = +0 ±" in out
    assert "Interference (Table 1)" in out
