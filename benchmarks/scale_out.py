"""The same grid, cold, in one process, with pytest-xdist and with Ray: wall times as ratios from one run, and
whether every mode stored the same results.

    python benchmarks/scale_out.py [--suite suites/default.yaml] [--workers 2] [--modes one,xdist,ray]
                                   [--work DIR] [--json FILE] [-- EXTRA PYTEST ARGS]

Each mode starts from an empty store in its own folder under --work and runs
`pytest suites/ --pqqp-suite SUITE --pqqp-store STORE` with `-n W --dist loadgroup` (xdist) or
`--pqqp-ray --pqqp-ray-workers W` (Ray, a local instance) added; the converted model cache is shared, so no
mode pays the one-time GGUF conversion (it is done before the first timed run). The stores are then compared
measurement by measurement: same keys, same value and same per-window NLLs. Timing-based measurements
(throughput) are listed but not compared. A hypothesis test failing on real data does not stop the benchmark:
the pytest exit status of each mode is printed beside its time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from pqqp_bench.store import Store

ROOT = Path(__file__).resolve().parents[1]
MODE_ARGS = {
    "one": lambda w: [],
    "xdist": lambda w: ["-n", str(w), "--dist", "loadgroup"],
    "ray": lambda w: ["--pqqp-ray", "--pqqp-ray-workers", str(w)],
}
TIMED_METRICS = ("throughput",)  # measurements of speed differ from run to run by nature


def run_mode(mode: str, workers: int, suite: Path, folder: Path, extra: list[str]) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "store.sqlite"
    command = [sys.executable, "-m", "pytest", "suites/", "-q", "-p", "no:cacheprovider", "--pqqp-suite", str(suite),
               "--pqqp-store", str(store), *MODE_ARGS[mode](workers), *extra]
    print(f"== {mode}: {' '.join(command[2:])}", flush=True)
    start = time.perf_counter()
    with open(folder / "pytest.log", "w") as log:
        rc = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    tail = (folder / "pytest.log").read_text().strip().splitlines()[-1:]
    print(f"   {wall:.0f} s, pytest exit {rc}: {tail[0] if tail else ''}", flush=True)
    return {"mode": mode, "workers": 1 if mode == "one" else workers, "wall_s": wall, "exit": rc, "store": str(store)}


def stored(path: str) -> dict[str, tuple[str, float, list | None]]:
    with Store(path) as store:
        return {m.key.digest(): (m.key.metric, m.value, m.details.get("window_nll")) for m in store.query()}


def compare(reference: dict, other: dict) -> dict:
    """Counts of measurements in both stores that are identical, that differ, and that only one store has."""
    same = differ = 0
    for digest in reference.keys() & other.keys():
        metric, value, windows = reference[digest]
        if metric.startswith(TIMED_METRICS):
            continue
        _, value2, windows2 = other[digest]
        if value == value2 and windows == windows2:
            same += 1
        else:
            differ += 1
    return {"identical": same, "different": differ, "missing": len(reference.keys() ^ other.keys())}


def warm_model_cache(suite: Path) -> None:
    """Convert the suite's models once (the GGUF conversion is cached), so that no mode's time includes it."""
    from pqqp_bench.experiment import Experiment, Settings
    from pqqp_bench.sections import load_suite

    for model in load_suite(suite).models:
        Experiment(Settings(model=model, device="cpu", progress=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=ROOT / "suites" / "default.yaml")
    parser.add_argument("--workers", type=int, default=2, help="xdist and Ray workers (default 2)")
    parser.add_argument("--modes", default="one,xdist,ray", help="comma-separated subset of one, xdist, ray")
    parser.add_argument("--work", type=Path, default=None, help="folder for the stores and logs (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("extra", nargs="*", help="after --: more pytest arguments for every mode, e.g. --pqqp-eval-tokens 1024")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODE_ARGS]
    if bad:
        parser.error(f"unknown mode {bad[0]!r}: accepted {', '.join(MODE_ARGS)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="pqqp-scale-out-"))
    warm_model_cache(args.suite.resolve())
    runs = [run_mode(m, args.workers, args.suite.resolve(), work / m, args.extra) for m in modes]
    stores = [stored(run["store"]) for run in runs]
    for run, rows in zip(runs, stores):
        run["ratio"] = run["wall_s"] / runs[0]["wall_s"]
        run["stored"] = len(rows)
        run |= compare(stores[0], rows)
    print(tabulate([{k: r[k] for k in ("mode", "workers", "wall_s", "ratio", "exit", "stored", "identical",
                                       "different", "missing")} for r in runs], headers="keys", floatfmt=".2f"))
    print(f"stores and pytest logs: {work}")
    if args.json:
        args.json.write_text(json.dumps({"suite": str(args.suite), "extra": args.extra, "runs": runs}, indent=1))
    if any(r["different"] or r["missing"] for r in runs):
        sys.exit("the modes stored different results (see the table above)")


if __name__ == "__main__":
    main()
