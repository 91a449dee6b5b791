"""SLEB's block search with every candidate scored over the full vocabulary vs the bounded search (the default).

    python benchmarks/sleb_search.py                                  # embedded model, p=0.2, 8 x 512 tokens
    python benchmarks/sleb_search.py --model FOLDER --p 0.2 --json out.json

Both searches run on the same loaded model and calibration windows, one after the other, in one process; the
script prints their seconds, the ratio, the candidates that needed the full-vocabulary head per round, and
checks that both removed the same blocks with the same calibration perplexities (exits 1 if not).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from pqqp_bench.blocks import decoder_blocks
from pqqp_bench.experiment import Experiment, Settings
from pqqp_bench.methods.sleb import select_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="embedded name, HF id or folder (default smollm2-135m)")
    parser.add_argument("--corpus", default="pydoc")
    parser.add_argument("--p", type=float, default=0.2, help="fraction of blocks removed (default 0.2)")
    parser.add_argument("--samples", type=int, default=8, help="calibration windows scoring the candidates (SLEB's 8)")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    experiment = Experiment(Settings(model=args.model, corpus=args.corpus, seqlen=args.seqlen,
                                     calib_samples=args.samples, eval_tokens=args.seqlen, device=args.device,
                                     progress=False))
    model = experiment.loaded.model.to(experiment.device)
    blocks = decoder_blocks(model)
    count = round(args.p * len(blocks))
    samples = experiment.calibration_for(0).to(experiment.device)
    figures: dict = {"model": args.model, "blocks": len(blocks), "vocab": model.config.vocab_size,
                     "removed": count, "samples": args.samples, "seqlen": args.seqlen, "device": experiment.device,
                     "threads": torch.get_num_threads()}
    results = {}
    with torch.no_grad():
        for name, top in (("full", None), ("bounded", 16)):
            counts: list[tuple[int, int]] = []
            start = time.perf_counter()
            chosen, ppl = select_blocks(model, blocks, samples, count, progress=True, top=top, counts=counts)
            seconds = time.perf_counter() - start
            results[name] = (chosen, ppl)
            figures[name] = {"seconds": seconds, "chosen": chosen, "calibration_ppl": ppl,
                             "full_head_candidates": [e for e, _ in counts], "candidates": [t for _, t in counts]}
            print(f"{name:8s} {seconds:8.1f} s  removed {chosen}  ppl {[round(p, 4) for p in ppl]}  "
                  f"full-vocabulary heads per round {[f'{e}/{t}' for e, t in counts]}", flush=True)
    same = results["full"][0] == results["bounded"][0] and all(
        math.isclose(a, b, rel_tol=0, abs_tol=0) for a, b in zip(results["full"][1], results["bounded"][1]))
    figures["speedup"] = figures["full"]["seconds"] / figures["bounded"]["seconds"]
    figures["identical"] = same
    print(f"speed-up {figures['speedup']:.2f}x; same blocks and perplexities: {same}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1)
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
