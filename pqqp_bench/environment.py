"""The software and hardware a set of numbers was computed in, for publishing them beside the numbers.

Perplexities of quantized models move with library versions and CPU kernels (the quantizers amplify last-bit
differences), so a published table names the versions of everything that computes them, the CPU and its kernel
capability, and the GPU where one was used.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("pqqp-bench", "torch", "transformers", "tokenizers", "safetensors", "numpy", "scipy", "lm-eval",
            "compressed-tensors", "peft", "accelerate")
"""The distributions whose versions can move a stored number."""


def versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(folder: Path) -> str | None:
    """The commit of the checkout `folder` is in, with `+changes` where the tree differs from it; None outside git."""
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)  # noqa: E731
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Versions, platform, CPU (with torch's kernel capability), GPU and commit (`+changes`: a working tree that
    differs from it) of this process."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "versions": versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": gpu,
        "commit": git_commit(Path(__file__).resolve().parent),
    }
