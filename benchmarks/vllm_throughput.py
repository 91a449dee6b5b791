"""The harness's vLLM throughput against `vllm bench throughput`, and the throughput table, in one session.

    python benchmarks/vllm_throughput.py                          # suites/throughput.yaml's settings and recipes
    python benchmarks/vllm_throughput.py --num-prompts 64 --prompt-len 256 --output-len 256

1. Exports the dense model (as the harness does) and runs vLLM's own `vllm bench throughput` on it (the venv's
   `vllm` CLI: random dataset, `--input-len --output-len --num-prompts --seed --dtype`), reading its
   "total tokens/s".
2. Measures the suite's throughput recipes (dense first) through the harness into a fresh store, so every figure
   is of this session: tokens/s, speed-up over dense, the format vLLM served and the kernels it reported.
3. Prints the ratio harness / `vllm bench` for the dense model (the target is within 5%) and the table.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pqqp_bench.evaluate.throughput import resolve_backend, worker_env  # noqa: E402
from pqqp_bench.export import export  # noqa: E402
from pqqp_bench.measure import Bench  # noqa: E402
from pqqp_bench.spec import Recipe  # noqa: E402
from pqqp_bench.store import Store  # noqa: E402
from pqqp_bench.sections import load_suite  # noqa: E402

TOTAL = re.compile(r"Throughput: [\d.]+ requests/s, ([\d.]+) total tokens/s")


def vllm_bench(python: str, folder: Path, s, seed: int) -> float:
    """`vllm bench throughput` on `folder` with the harness's settings: its total tokens/s."""
    cli = Path(python).with_name("vllm")
    command = [str(cli) if cli.exists() else python, *([] if cli.exists() else ["-m", "vllm.entrypoints.cli.main"]),
               "bench", "throughput", "--model", str(folder), "--dataset-name", "random",
               "--input-len", str(s.prompt_len), "--output-len", str(s.output_len), "--num-prompts", str(s.num_prompts),
               "--seed", str(seed), "--dtype", s.dtype, *(["--enforce-eager"] if s.enforce_eager else [])]
    done = subprocess.run(command, capture_output=True, text=True, env=worker_env(python), timeout=s.timeout)
    found = TOTAL.findall(done.stdout + done.stderr)
    if done.returncode or not found:
        sys.exit(f"vllm bench throughput failed (exit {done.returncode}): {(done.stderr or done.stdout)[-1500:]}")
    return float(found[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(ROOT / "suites" / "throughput.yaml"))
    for flag in ("prompt_len", "output_len", "num_prompts", "enforce_eager"):
        parser.add_argument(f"--{flag.replace('_', '-')}", default=None, help="default: the suite's throughput section")
    parser.add_argument("--seqlen", default=None, help="default: the suite's (windows of the ppl and of SLEB's search)")
    parser.add_argument("--vllm-venv", default=None, help="default $PQQP_VLLM_VENV or ~/.cache/pqqp-bench/venvs/vllm")
    args = parser.parse_args()
    suite = load_suite(args.suite, seqlen=args.seqlen, throughput_backend="vllm",
                       **{f"throughput_{k}": getattr(args, k)
                          for k in ("prompt_len", "output_len", "num_prompts", "enforce_eager")})
    backend = resolve_backend("vllm", args.vllm_venv)
    model, seed, s = suite.models[0], suite.seeds[0], suite.section("throughput").settings
    with tempfile.TemporaryDirectory(prefix="pqqp-vllm-bench-") as tmp:
        bench = Bench(suite, Store(Path(tmp) / "store.sqlite"), progress=False, vllm_venv=args.vllm_venv)
        experiment = bench.experiment(model)
        dense, report, _ = experiment.compressed(Recipe(()))
        folder = export(dense, experiment.loaded.tokenizer, report, Path(tmp) / "dense", s.dtype).folder
        start = time.perf_counter()
        theirs = vllm_bench(backend.python, folder, s, seed)
        print(f"vllm bench throughput (dense, {time.perf_counter() - start:.0f} s with engine start): "
              f"{theirs:.1f} total tokens/s", flush=True)
        rows = []
        for case in suite.section("throughput").speed_cases(suite):
            start = time.perf_counter()
            quality, m = bench.throughput_case(case.model, case.recipe)
            rows.append((case.recipe, quality.value, m, time.perf_counter() - start))
            print(f"  {case.recipe}: {m.value:.1f} tokens/s ({rows[-1][3]:.0f} s)", flush=True)
    ours = rows[0][2].value
    print(f"\n{model}, {s.num_prompts} prompts x ({s.prompt_len} in + {s.output_len} out), {s.dtype}"
          f"{', enforce_eager' if s.enforce_eager else ''}, ppl windows of {suite.seqlen} tokens, vLLM "
          f"{rows[0][2].details['version']} ({backend.reason})")
    print(f"dense: harness {ours:.1f} tokens/s, vllm bench throughput {theirs:.1f} tokens/s, "
          f"ratio {ours / theirs:.3f} (target 0.95 .. 1.05)\n")
    print("| recipe | ppl | tokens/s | speed-up | served as | kernels vLLM reported |\n|---|---|---|---|---|---|")
    for recipe, ppl, m, _ in rows:
        d = m.details
        print(f"| {recipe} | {ppl:.3f} | {m.value:.1f} | {d['speedup']:.2f}x | {d['served_as']} | "
              f"{'; '.join(d['kernels']) or 'unquantized'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
