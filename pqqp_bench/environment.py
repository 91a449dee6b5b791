"""The software and hardware a set of numbers was computed in, for publishing them beside the numbers.

Perplexities of quantized models move with library versions and CPU kernels (the quantizers amplify last-bit
differences), so a published table names the versions of everything that computes them, the CPU and its kernel
capability, and the GPU where one was used. Every stored measurement carries the same (`numbers_environment`),
and its key carries a fingerprint of the code that computed it (`harness_identity`), so a store never serves a
value of older code as current.
"""

from __future__ import annotations

import ast
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("pqqp-bench", "torch", "transformers", "tokenizers", "safetensors", "numpy", "scipy", "lm-eval",
            "compressed-tensors", "peft", "accelerate")
"""The distributions whose versions can move a stored number."""


CODE = ("methods", "evaluate", "blocks.py", "compress.py", "data.py", "experiment.py", "metrics.py", "models.py",
        "offload.py", "prefix_files.py", "prefixes.py", "rdata.py", "spec.py")
"""The package's modules that compute a stored number (methods, the compression engine, evaluation, models and
data windows). Reporting, hypothesis tests, the store and the command line are left out: changing them does not
change a measurement."""

PACKAGE_DIR = Path(__file__).resolve().parent


def code_fingerprint(root: Path = PACKAGE_DIR, parts: tuple[str, ...] = CODE) -> str:
    """12 hex digits of sha256 over the path and the code of every Python file of `parts` under `root`, in path
    order. The code is the file's syntax tree without docstrings (`ast.dump`), so comments, docstrings and layout
    can change without making every stored measurement stale; any change to what runs does."""
    files = sorted(f for part in parts for f in ((root / part).rglob("*.py") if (root / part).is_dir() else [root / part]))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + code_of(path).encode() + b"\0")
    return digest.hexdigest()[:12]


def code_of(path: Path) -> str:
    """The file's syntax tree with every docstring removed, as text."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def harness_identity(version: str, code: str) -> str:
    """The harness field of a measurement key: the release and the computing code's fingerprint, `0.1.0+code.<12 hex>`."""
    return f"{version}+code.{code}"


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


def numbers_environment() -> dict[str, Any]:
    """What besides the code moves a stored number: the versions of `PACKAGES` (pqqp-bench's own left out: the key
    has its code), torch's CPU kernel capability and the GPU. Stored with every measurement."""
    import torch

    return {"versions": {k: v for k, v in versions().items() if k != "pqqp-bench"},
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


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
        "commit": git_commit(PACKAGE_DIR),
        "code": code_fingerprint(),
    }
