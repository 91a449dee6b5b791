"""Where a parallel worker runs: its GPU and its CPU threads (pytest-xdist workers here; Ray sets its own).

Each xdist worker is pinned to one GPU through `CUDA_VISIBLE_DEVICES` (round-robin over the GPUs the parent
process sees, so `-n 8` on an 8-GPU box gives one GPU each) and, on CPU, to its share of the cores
(`cores // workers` torch threads), so N workers do not each start `cores` threads and fight over them.
The environment is set before the worker touches CUDA, which reads `CUDA_VISIBLE_DEVICES` once, at its start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from .errors import PqqpError


@dataclass(frozen=True)
class Placement:
    """One worker's share of the machine: a GPU id (None on a CPU-only machine) and torch threads."""

    index: int
    count: int
    gpu: str | None
    threads: int

    def describe(self) -> str:
        where = f"GPU {self.gpu}" if self.gpu is not None else "CPU"
        return f"worker {self.index + 1}/{self.count}: {where}, {self.threads} torch thread(s)"


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, without initialising CUDA: `CUDA_VISIBLE_DEVICES` where set,
    else the GPUs `nvidia-smi -L` lists (none where it is missing)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def placement(index: int, count: int, gpus: list[str], cores: int, threads: int | None = None) -> Placement:
    """Worker `index` of `count`: GPU `gpus[index % len(gpus)]`, and `threads` torch threads (default: its share
    of `cores`, at least one)."""
    if count < 1 or not 0 <= index < count:
        raise PqqpError(f"worker {index} of {count} is not accepted: use 0 <= index < count, count >= 1")
    if threads is not None and threads < 1:
        raise PqqpError(f"threads={threads} is not accepted: use a positive integer")
    gpu = gpus[index % len(gpus)] if gpus else None
    return Placement(index, count, gpu, threads or max(1, cores // count))


def apply(place: Placement) -> None:
    """Pin this process: its GPU (before CUDA starts) and its thread count (env for libraries not yet loaded,
    torch's setting where torch is)."""
    if place.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = place.gpu
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(place.threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(place.threads)


def xdist_placement(workerinput: dict, threads: int | None = None) -> Placement:
    """The placement of the pytest-xdist worker described by `workerinput` (`gw<i>` of `workercount`)."""
    index = int(str(workerinput["workerid"]).removeprefix("gw"))
    return placement(index, int(workerinput["workercount"]), visible_gpus(), os.cpu_count() or 1, threads)
