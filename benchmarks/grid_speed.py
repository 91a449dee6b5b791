"""Cases per hour of the harness on a small grid, against a naive loop that does each point from scratch.

    python benchmarks/grid_speed.py [--suite suites/default.yaml] [--pruners magnitude,wanda] [--ratios 0.2,0.3]
                                    [--bits 6,8] [--curve-bits 4,6,8] [--eval-tokens 1024] [--calib-samples 4]
    python benchmarks/grid_speed.py --suite suites/paper-fig3.yaml     # Fig. 3's grid at the reduced sizes
    python benchmarks/grid_speed.py --counts     # measurements each approach needs, for the shipped suites

Both produce the same thing: for every point (model, pruner, quantizer, p, B) of the grid, A(Q->P) and the CER
difference C*_P - C_Q (paper §3). That needs, per point, the dense model, the pruner alone, the quantizer's
curve (every curve bit width) and the joint recipe in both orders.

* harness: `Bench` over a fresh results store: the model is loaded once, and each distinct measurement (the
  dense model, each single-method point, each curve point, each joint recipe) is computed once and reused by
  every point that needs it;
  every case starts from the longest compressed prefix it shares with a case before it (prefixes.py);
* naive loop: for each point, load the model and the corpus, then compress and evaluate everything the point
  needs, with nothing shared between points (what a script per point does; no prefix cache).

Measured in one run, one after the other, on the same machine; the script checks that both give identical
metric values for every point, and prints the wall times, cases (points) per hour and the speed-up.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pqqp_bench.analysis import Analysis
from pqqp_bench.experiment import Experiment
from pqqp_bench.hypothesis import cer, metric_from_ppl, quant_ratio
from pqqp_bench.measure import Bench
from pqqp_bench.spec import Recipe
from pqqp_bench.store import Store
from pqqp_bench.sections import load_suite
from pqqp_bench.suite import PointSpec, Suite

REPO = Path(__file__).resolve().parents[1]


def harness(suite: Suite) -> tuple[dict, float, int]:
    """The grid as `pytest suites/` runs it: every case in the suite's order (each recipe after the prefixes it
    starts from, which the prefix cache holds), then the points read from the store."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "grid.sqlite") as store:
        bench = Bench(suite, store, progress=False)
        for case in suite.cases():
            bench.measure_case(case)
        values = {}
        for spec in suite.points():
            point, extra = Analysis(bench).point(spec)
            values[key(spec)] = (extra["ppl_qp"][0], extra["ppl_pq"][0], point.cer_p.value)
        cache = next(iter(bench.experiments.values())).prefixes
        print(f"prefix cache: {cache.hits} cases started from a cached prefix, {cache.misses} from the dense model, "
              f"{cache.stored} prefixes stored", flush=True)
        return values, time.perf_counter() - start, len(bench.computed)


def naive(suite: Suite) -> tuple[dict, float, int]:
    start = time.perf_counter()
    values, measured = {}, 0
    for spec in suite.points():
        experiment = Experiment(suite.settings(spec.model, progress=False, prefix_cache=0.0))  # from scratch, no reuse
        ppl = lambda recipe: experiment.run(recipe).perplexity.ppl  # noqa: E731
        curve = [(1.0, metric_from_ppl(ppl(Recipe(()))))]
        curve += [(quant_ratio(b), metric_from_ppl(ppl(r))) for b, r in suite.curve(spec.quantizer).items()]
        c_star = cer(metric_from_ppl(ppl(suite.pruner(spec.pruner, spec.p))), curve)
        values[key(spec)] = (ppl(spec.recipe("Q>P")), ppl(spec.recipe("P>Q")), c_star.value)
        measured += len(curve) + 3
    return values, time.perf_counter() - start, measured


def measurement_counts(suite: Suite) -> tuple[int, int]:
    """(harness, naive) numbers of compress-and-evaluate runs the suite's points need: the harness measures each
    distinct recipe once; the naive loop measures, per point, the dense model, the curve, the pruner alone and
    both orders."""
    per_point = 1 + len(suite.curve(suite.quantizers[0])) + 1 + 2
    return len(suite.cases()), len(suite.points()) * per_point


def key(spec: PointSpec) -> tuple:
    return spec.model, spec.pruner, spec.quantizer, spec.p, spec.bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(REPO / "suites" / "default.yaml"))
    parser.add_argument("--pruners", default=None, help="pruner templates (default: the suite's)")
    parser.add_argument("--quantizers", default=None, help="quantizer templates, ';' between them (default: the suite's)")
    parser.add_argument("--ratios", default=None, help="pruning ratios (default: the suite's)")
    parser.add_argument("--bits", default=None, help="bit widths (default: the suite's)")
    parser.add_argument("--curve-bits", default=None, help="curve bit widths (default: the suite's)")
    parser.add_argument("--schedule", default=None, choices=("staged", "fused"), help="(default: the suite's)")
    parser.add_argument("--eval-tokens", type=int, default=1024)
    parser.add_argument("--calib-samples", type=int, default=4)
    parser.add_argument("--counts", action="store_true",
                        help="only print, for each shipped suite, how many measurements each approach needs")
    args = parser.parse_args()
    if args.counts:
        for path in sorted((REPO / "suites").glob("*.yaml")):
            ours, theirs = measurement_counts(load_suite(path))
            print(f"{path.name:18s} points {len(load_suite(path).points()):4d}  measurements: harness {ours:4d}, "
                  f"naive loop {theirs:5d} ({theirs / ours:.1f}x)")
        return
    suite = load_suite(args.suite, pruners=args.pruners, quantizers=args.quantizers, ratios=args.ratios,
                       bits=args.bits, curve_bits=args.curve_bits, eval_tokens=args.eval_tokens,
                       calib_samples=args.calib_samples, seeds="0", schedule=args.schedule)
    points = len(suite.points())
    print(f"grid: {points} points ({','.join(suite.pruners)} x {';'.join(suite.quantizers)} x p {suite.ratios} x "
          f"B {suite.bits}; curve {suite.curve_bits}; schedule {suite.schedule}); {args.eval_tokens} evaluation "
          f"tokens, {args.calib_samples} calibration windows", flush=True)
    ours, ours_s, ours_n = harness(suite)
    print(f"harness    : {ours_s:7.1f} s, {ours_n} measurements, {points / ours_s * 3600:7.1f} points/hour", flush=True)
    theirs, theirs_s, theirs_n = naive(suite)
    print(f"naive loop : {theirs_s:7.1f} s, {theirs_n} measurements, {points / theirs_s * 3600:7.1f} points/hour")
    same = all(ours[k] == theirs[k] for k in ours)
    print(f"speed-up   : {theirs_s / ours_s:.2f}x; identical metric values at every point: {same}")
    if not same:
        for k in ours:
            if ours[k] != theirs[k]:
                print(f"  differs at {k}: harness {ours[k]} naive {theirs[k]}")


if __name__ == "__main__":
    main()
