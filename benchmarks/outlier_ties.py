"""How much one rounding tie per weight group moves a W4 model: the full symmetric grid (`grid=full`, scale
2·absmax/(2^B-1), levels -2^(B-1)..2^(B-1)-1, as GPTQ's reference, llm-compressor and compressed-tensors) puts
every group's largest weight at exactly ±(2^(B-1) - 1/2) steps, a tie between two levels. Which way it rounds is
decided by the last bit of w / scale: a positive maximum always ends on the top level 2^(B-1)-1 (the level above
does not exist), a negative one on -2^(B-1) or -(2^(B-1)-1). The two choices differ by one step (absmax/7.5 at
B = 4) on the group's largest weight, which on a model with outlier weights is a large change.

    python benchmarks/outlier_ties.py [--recipes "rtn:w=4,g=64,clip=none,grid=full; gptq:..."] \
        [--eval-tokens 8192] [--json docs/outlier-ties-smollm2.json]

For each recipe it measures perplexity three times on the same windows: as computed, with every group's scale
one float32 ulp larger (every tie rounds towards zero: negative maxima on -(2^(B-1)-1)), and one ulp smaller
(every tie away from zero: negative maxima on -2^(B-1)). The restricted grid (absmax/(2^(B-1)-1), levels ±7) has
no such tie and is shown beside. It prints the perplexities, the paired log-perplexity differences with their
standard errors over the windows, and how many groups have a negative maximum (the ties that can go either way).
Settings: the implementations suite's (embedded model, pydoc, 8 calibration windows of 512 tokens, seed 0).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from tabulate import tabulate

from pqqp_bench.environment import numbers_environment
from pqqp_bench.experiment import Experiment, Settings
from pqqp_bench.methods import quantize

RECIPES = "rtn:w=4,g=64,clip=none,grid=full; gptq:w=4,g=64,clip=none,grid=full,actorder=true"
NUDGES = {"as computed": 1.0, "ties towards zero (scale +1 ulp)": 1.0 + 2.0 ** -23,
          "ties away from zero (scale -1 ulp)": 1.0 - 2.0 ** -23}


@contextmanager
def nudged_scales(factor: float) -> Iterator[None]:
    """Every symmetric grid step multiplied by `factor` (1 ± one float32 ulp) while the context is open."""
    real = quantize.symmetric_scale

    def scaled(absmax: torch.Tensor, bits: int, ratio: float, grid: str = "restricted") -> torch.Tensor:
        return real(absmax, bits, ratio, grid) * factor

    quantize.symmetric_scale = scaled
    try:
        yield
    finally:
        quantize.symmetric_scale = real


def negative_maxima(model: torch.nn.Module, group: int) -> tuple[int, int]:
    """(groups whose largest |w| is negative, all groups) over the decoder's Linear weights."""
    negative = total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            w = module.weight.detach().float().reshape(module.weight.shape[0], -1, group)
            top = w.gather(-1, w.abs().argmax(dim=-1, keepdim=True))
            negative += int((top < 0).sum())
            total += top.numel()
    return negative, total


def paired(a: list[float], b: list[float], tokens: float) -> tuple[float, float]:
    """Mean per-token log-perplexity difference a - b over the windows, and its standard error."""
    d = [(x - y) / tokens for x, y in zip(a, b)]
    return statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=RECIPES, help=f"';'-separated recipes (default {RECIPES!r})")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    experiment = Experiment(Settings(model=args.model, corpus="pydoc", seqlen=512, calib_samples=args.calib_samples,
                                     eval_tokens=args.eval_tokens, device="cpu", progress=False))
    negative, total = negative_maxima(experiment.loaded.model, 64)
    print(f"groups of 64 whose largest weight is negative: {negative} of {total} ({negative / total:.1%})", flush=True)
    rows, figures = [], []
    for recipe in [r.strip() for r in args.recipes.split(";") if r.strip()]:
        results = {}
        for label, factor in NUDGES.items():
            with nudged_scales(factor):
                results[label] = experiment.run(recipe)
            print(f"{recipe}  {label}: ppl {results[label].perplexity.ppl:.4f}", flush=True)
        restricted = experiment.run(recipe.replace("grid=full", "grid=restricted"))
        base = results["as computed"].perplexity
        tokens = base.tokens / base.windows
        for label, case in [*results.items(), ("restricted grid (no tie)", restricted)]:
            diff, se = paired(case.perplexity.window_nll, base.window_nll, tokens)
            rows.append((recipe, label, f"{case.perplexity.ppl:.4f}", f"{diff:+.5f} ± {se:.5f}"))
            figures.append({"recipe": recipe, "variant": label, "ppl": case.perplexity.ppl,
                            "log_ppl_minus_as_computed": diff, "stderr": se})
    print(tabulate(rows, headers=["recipe", "variant", "ppl", "log ppl - as computed (± se)"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "eval_tokens": args.eval_tokens,
                                               "negative_maxima": negative, "groups": total, "rows": figures,
                                               "environment": numbers_environment()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
