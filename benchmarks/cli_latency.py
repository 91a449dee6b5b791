"""How long the command line takes to answer: the median wall time of fresh `pqqp` processes.

    python benchmarks/cli_latency.py [--runs 7]

Each command runs `--runs` times in a new process (`python -m pqqp_bench.cli ...`, as the `pqqp` script does);
the table gives the median and the fastest, in seconds. `--help` and argument errors import neither torch nor
transformers; listing the methods imports the method modules, and with them torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from tabulate import tabulate

COMMANDS = (["--help"], ["run", "--help"], ["run", "--seqlen", "abc"], ["corpora"], ["models"], ["methods"])


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pqqp_bench.cli", *argv], capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rows = []
    for argv in COMMANDS:
        times = [seconds(argv) for _ in range(args.runs)]
        rows.append(("pqqp " + " ".join(argv), f"{statistics.median(times):.3f}", f"{min(times):.3f}"))
    print(tabulate(rows, headers=["command", "median s", "fastest s"]))


if __name__ == "__main__":
    main()
