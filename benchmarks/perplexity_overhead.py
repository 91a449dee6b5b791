"""Harness perplexity time against a bare `model(input_ids)` loop over the same windows, in one run.

    python benchmarks/perplexity_overhead.py [--tokens 16384] [--seqlen 512] [--repeats 3]

Both sides see the same [n, seqlen] windows of the embedded model's evaluation text; the runs alternate
(bare, harness, bare, harness, ...) so machine noise hits both alike, and the medians are compared.
Target (issue 2): harness time / bare time <= 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pqqp_bench.data import load_corpus
from pqqp_bench.evaluate import perplexity
from pqqp_bench.models import load_model


@torch.inference_mode()
def bare_loop(model, windows: torch.Tensor) -> float:
    start = time.perf_counter()
    for window in windows:
        model(window.unsqueeze(0))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    loaded = load_model(args.model)
    windows = load_corpus("pydoc", loaded.tokenizer).evaluation_windows(args.seqlen, args.tokens)
    bare_loop(loaded.model, windows[:1])  # warm-up
    bare, harness = [], {b: [] for b in args.batch_size}
    ppl = {}
    for _ in range(args.repeats):
        bare.append(bare_loop(loaded.model, windows))
        for b in args.batch_size:
            result = perplexity(loaded.model, windows, batch_size=b, progress=False)
            harness[b].append(result.seconds)
            ppl[b] = result.ppl
    base = statistics.median(bare)
    print(f"{args.model}: {windows.shape[0]} windows x {args.seqlen} tokens, {torch.get_num_threads()} threads, "
          f"{args.repeats} alternating repeats (medians)")
    print(f"bare model(input_ids) loop : {base:7.2f} s")
    for b, times in harness.items():
        median = statistics.median(times)
        print(f"harness, batch {b:<3d}        : {median:7.2f} s  ratio {median / base:.3f}  (ppl {ppl[b]:.4f})")


if __name__ == "__main__":
    main()
