"""How far one machine's CPU kernels move the harness's numbers: the same recipes, code and libraries, each run in
a fresh process with other kernels forced (`ATEN_CPU_CAPABILITY` for torch's own vectorised ops,
`MKL_ENABLE_INSTRUCTIONS` for MKL's matrix products), and the spread of every perplexity across them.

    python benchmarks/kernel_spread.py [--recipes "dense; rtn:w=8,a=8,kv=8; ..."] [--eval-tokens 8192] \
        [--json docs/kernel-spread.json]

Prints one row per recipe: its perplexity under each kernel set and the spread (max - min) / median. The
default recipes separate the quantizer's parts (weights, activations, KV cache alone) and add the cases the
default suite judges. Settings are the default suite's (`suites/default.yaml`): 16 evaluation windows of 512
tokens, 4 calibration windows, seed 0. Every run uses one thread (`OMP_NUM_THREADS=1`), so the
summation order inside a kernel does not change with the thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

from pqqp_bench.spec import parse_recipe

KERNELS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "avx2+mkl-avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
RECIPES = ("dense; rtn:w=8; rtn:a=8; rtn:kv=8; rtn:w=8,a=8,kv=8; quarot > rtn:w=8,a=8,kv=8; "
           "quarot > rtn:w=6,a=6,kv=6; quarot > rtn:w=4,a=4,kv=4; wanda:p=0.2 > rtn:w=6,a=6,kv=6; "
           "quarot > wanda:p=0.2 > rtn:w=6,a=6,kv=6")

CHILD = """
import json, sys
import torch
from pqqp_bench.experiment import Experiment, Settings
args = json.loads(sys.argv[1])
e = Experiment(Settings(model=args["model"], eval_tokens=args["eval_tokens"], calib_samples=args["calib_samples"],
                        seqlen=args["seqlen"], device="cpu", progress=False, prefix_cache=0))
print("CAPABILITY " + torch.backends.cpu.get_cpu_capability(), flush=True)
for recipe in args["recipes"]:
    print("RESULT " + json.dumps([recipe, e.run(recipe).perplexity.ppl]), flush=True)
"""


def run(kernel: dict[str, str], args: argparse.Namespace, recipes: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **kernel}
    for name in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS"):
        if name not in kernel:
            env.pop(name, None)
    payload = json.dumps({"model": args.model, "eval_tokens": args.eval_tokens, "calib_samples": args.calib_samples,
                          "seqlen": args.seqlen, "recipes": recipes})
    done = subprocess.run([sys.executable, "-c", CHILD, payload], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"kernel set {kernel or 'native'} failed:\n{done.stderr[-2000:]}")
    lines = done.stdout.splitlines()
    capability = next(line.split(" ", 1)[1] for line in lines if line.startswith("CAPABILITY "))
    found = dict(json.loads(line.removeprefix("RESULT ")) for line in lines if line.startswith("RESULT "))
    return {"capability": capability, "ppl": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--recipes", default=RECIPES, help="';'-separated recipes")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--calib-samples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated, of {', '.join(KERNELS)}")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    recipes = [str(parse_recipe(r)) for r in args.recipes.split(";") if r.strip()]  # a bad recipe fails here
    names = [k.strip() for k in args.kernels.split(",")]
    results = {}
    for name in names:
        results[name] = run(KERNELS[name], args, recipes)
        print(f"{name}: torch capability {results[name]['capability']}", flush=True)
    rows, spreads = [], {}
    for recipe in recipes:
        values = [results[n]["ppl"][recipe] for n in names]
        spreads[recipe] = (max(values) - min(values)) / statistics.median(values)
        rows.append([recipe, *(f"{v:.4f}" for v in values), f"{100 * spreads[recipe]:.3f}%"])
    print(tabulate(rows, headers=["recipe", *names, "spread"], disable_numparse=True))
    if args.json:
        settings = {k: getattr(args, k) for k in ("model", "eval_tokens", "calib_samples", "seqlen")}
        Path(args.json).write_text(json.dumps({"settings": settings, "kernels": {n: KERNELS[n] for n in names},
                                               "results": results, "spread": spreads}, indent=1) + "\n")


if __name__ == "__main__":
    main()
