"""A model larger than memory, in miniature: the embedded model compressed and evaluated under a memory cap
that the in-memory path cannot live in, with `--offload disk` (decoder blocks read from safetensors one at a
time), and the same perplexity as without a cap.

    python benchmarks/offload_memory.py [--cap-mib 950] [--recipe "wanda:p=0.5 > rtn:w=4,g=64"]
                                        [--eval-tokens 512] [--calib-samples 4] [--json FILE]

Three runs of `pqqp run --recipe R`: in memory without a cap (the reference), in memory under the cap, and
`--offload disk` under the cap. The cap is a Linux memory cgroup (v1 `memory.limit_in_bytes` or v2
`memory.max`, no swap counted in: `memory.memsw.limit_in_bytes` too where it exists) created for each capped
run; it needs write access to /sys/fs/cgroup (root in a container). On the embedded model the fixed costs are
large beside the 540 MB of fp32 weights (~400 MB of torch and transformers, the 113 MB tied embedding, the
lm_head's logits over a 49152-token vocabulary), so the cap that separates the two paths is narrow: measured
here, 950 MiB with 512 evaluation tokens (at 1000 MiB with 1024 tokens both were killed; at 1400 MiB both ran).
The cgroup's peak counts page cache too (the disk path's block reads and scratch writes). Printed: exit
status, whether the kernel's OOM killer ended the run, the cgroup's peak usage, wall time, perplexity.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

CGROUP = Path("/sys/fs/cgroup")


class MemoryCap:
    """A memory cgroup of its own (v1 or v2) limited to `limit` bytes; processes join it with `enter`."""

    def __init__(self, name: str, limit: int) -> None:
        v1 = CGROUP / "memory"
        self.v1 = v1.is_dir()
        self.path = (v1 if self.v1 else CGROUP) / name
        self.path.mkdir()
        if self.v1:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            swap = self.path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(limit))
        else:
            (self.path / "memory.max").write_text(str(limit))
            (self.path / "memory.swap.max").write_text("0")

    def enter(self) -> None:
        """Called in the child before exec: the child joins the cgroup."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int:
        name = "memory.max_usage_in_bytes" if self.v1 else "memory.peak"
        return int((self.path / name).read_text()) if (self.path / name).exists() else -1

    def oom_kills(self) -> int:
        text = (self.path / ("memory.oom_control" if self.v1 else "memory.events")).read_text()
        return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill ")), -1)

    def remove(self) -> None:
        self.path.rmdir()


def run(name: str, offload: str, cap: MemoryCap | None, args: argparse.Namespace, out: Path) -> dict:
    stem = "-".join(name.replace(",", "").split())
    result_json = out / f"{stem}.json"
    command = [sys.executable, "-m", "pqqp_bench.cli", "run", "--recipe", args.recipe, "--offload", offload,
               "--eval-tokens", str(args.eval_tokens), "--calib-samples", str(args.calib_samples),
               "--device", "cpu", "--json", str(result_json)]
    print(f"== {name}: {' '.join(command[3:])}", flush=True)
    start = time.perf_counter()
    with open(out / f"{stem}.log", "w") as log:
        rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=cap.enter if cap else None).returncode
    row = {"run": name, "offload": offload, "cap_mib": args.cap_mib if cap else None, "exit": rc,
           "oom_killed": cap.oom_kills() > 0 if cap else False, "peak_mib": cap.peak() / 2**20 if cap else None,
           "wall_s": time.perf_counter() - start, "ppl": None}
    if rc == 0:
        row["ppl"] = json.loads(result_json.read_text())["results"][0]["ppl"]
    print(f"   exit {rc}, {row['wall_s']:.0f} s, ppl {row['ppl']}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap-mib", type=int, default=950, help="the memory cap of the capped runs (default 950)")
    parser.add_argument("--recipe", default="wanda:p=0.5 > rtn:w=4,g=64")
    parser.add_argument("--eval-tokens", type=int, default=512)
    parser.add_argument("--calib-samples", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("offload_memory: terminated"))  # so the cgroups are removed
    if not os.access(CGROUP / "memory" if (CGROUP / "memory").is_dir() else CGROUP, os.W_OK):
        sys.exit(f"offload_memory: {CGROUP} is not writable here, so no memory cap can be set: run as root")
    out = Path(tempfile.mkdtemp(prefix="pqqp-offload-memory-"))
    rows = [run("in memory, no cap", "none", None, args, out)]
    for name, offload in (("in memory, capped", "none"), ("offload disk, capped", "disk")):
        cap = MemoryCap(f"pqqp-offload-{os.getpid()}-{offload}", args.cap_mib << 20)
        try:
            rows.append(run(name, offload, cap, args, out))
        finally:
            cap.remove()
    print(tabulate(rows, headers="keys", floatfmt=".4f"))
    reference, disk = rows[0]["ppl"], rows[2]["ppl"]
    print(f"logs: {out}\noffload disk under {args.cap_mib} MiB: "
          + ("same perplexity as in memory" if disk is not None and disk == reference else f"ppl {disk} vs {reference}"))
    if args.json:
        args.json.write_text(json.dumps({"recipe": args.recipe, "cap_mib": args.cap_mib, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
