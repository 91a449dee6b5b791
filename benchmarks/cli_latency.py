"""How long the command line takes to answer: the median wall time of fresh `pqqp` processes.

    python benchmarks/cli_latency.py [--runs 7]

Each command runs `--runs` times in a new process (`python -m pqqp_bench.cli ...`, as the `pqqp` script does);
the table gives the median and the fastest, in seconds. `--help`, argument errors and the model and corpus
listings import neither torch nor transformers. `pqqp methods` reads its table from the cache (listing.py); the
`cold` row gives it an empty cache folder each time, so it imports every method module, and with them torch.
"""

from __future__ import annotations

import argparse
import statistics
import os
import subprocess
import sys
import tempfile
import time

from tabulate import tabulate

COMMANDS = (["--help"], ["run", "--help"], ["run", "--seqlen", "abc"], ["corpora"], ["models"], ["methods"])


def seconds(argv: list[str], cold: bool = False) -> float:
    with tempfile.TemporaryDirectory() as empty:
        env = {**os.environ, **({"PQQP_CACHE_DIR": empty} if cold else {})}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pqqp_bench.cli", *argv], capture_output=True, check=False, env=env)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rows = []
    for argv, cold in [(argv, False) for argv in COMMANDS] + [(["methods"], True)]:
        times = [seconds(argv, cold) for _ in range(args.runs)]
        rows.append(("pqqp " + " ".join(argv) + (" (cold cache)" if cold else ""), f"{statistics.median(times):.3f}",
                     f"{min(times):.3f}"))
    print(tabulate(rows, headers=["command", "median s", "fastest s"]))


if __name__ == "__main__":
    main()
