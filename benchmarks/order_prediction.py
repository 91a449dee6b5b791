"""Order predictors against the exhaustive search (paper Problem 1, App. D.7).

    python benchmarks/order_prediction.py [--suite suites/order-prediction.yaml] \
        [--store results/order-prediction.sqlite] [--out leaderboard/order-prediction] [--probe-blocks 2] \
        [--predictors intensity,probe,pairwise,probe-intensity] [--threads 1] \
        [--probes results/order-prediction-probes.json] [--predict-only]

Reads every order of every method set of the suite from the store (`pytest suites/ --pqqp-suite ... --pqqp-store
...` measures them; sets not yet complete are left out and counted), runs each predictor of predictors.py on each
set, and scores it (ordering.score_predictor): how often its order is within the bootstrap noise of the best
(the 95% paired interval of ppl(pick) - ppl(best) over the evaluation windows reaches 0), how often it is the
measured best, its mean and worst regret (ppl) with 95% bootstrap intervals, against a uniformly random order;
and its cost (block compressions, block-forward tokens, seconds) against the exhaustive search's. The target
(issue 23): within noise in >= 80% of the sets, mean regret <= a quarter of a random order's, at <= a fifth of the
exhaustive search's compute.

Writes README.md (tables), predictions.json (every set: each order's ppl, each predictor's order, scores and
cost), measurements.json (the stored measurements used, `pqqp export` form), environment.json and regret.png.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from pqqp_bench.blocks import decoder_blocks
from pqqp_bench.analysis import Analysis
from pqqp_bench.environment import environment
from pqqp_bench.measure import Bench, Missing
from pqqp_bench.ordering import MeasuredSet, MethodSet, resampling, score_predictor, score_random, within_noise
from pqqp_bench.paths import atomic_write, write_text
from pqqp_bench.predictors import PREDICTORS, Cost, ProbeContext, exhaustive_cost, predictor, run_cost
from pqqp_bench.store import Store, record
from pqqp_bench.sections import load_suite
from pqqp_bench.sections.order_search import measured_set

TARGET = {"within_noise": 0.8, "regret_fraction": 0.25, "cost_fraction": 0.2}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="suites/order-prediction.yaml")
    parser.add_argument("--store", default="results/order-prediction.sqlite")
    parser.add_argument("--out", default="leaderboard/order-prediction")
    parser.add_argument("--probe-blocks", type=int, default=2, help="decoder blocks the probes sample (default 2)")
    parser.add_argument("--predictors", default=",".join(PREDICTORS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--probes", default="results/order-prediction-probes.json",
                        help="where the probe predictors' predictions are kept (a re-run resumes)")
    parser.add_argument("--predict-only", action="store_true",
                        help="only run the probe predictors (no measurement needed: beside the suite's run)")
    return parser.parse_args()


def probe_predictions(args: argparse.Namespace, specs: list, context: ProbeContext, names: list[str]) -> dict:
    """Each probe predictor's prediction for every set, kept in `--probes` (a re-run resumes; they need no
    measurement, so they can run beside the suite)."""
    path = Path(args.probes)
    found = json.loads(path.read_text()) if path.exists() else {}
    for spec in specs:
        for name in names:
            key = f"{name}|{args.probe_blocks}|{spec.methods.name}"
            if name == "intensity" or key in found:
                continue
            begun = time.perf_counter()
            prediction = predictor(name).predict(spec.methods, context)
            found[key] = {"order": list(prediction.order), "text": spec.methods.describe(prediction.order),
                          "scores": prediction.scores, "cost": asdict(prediction.cost),
                          "wall_s": time.perf_counter() - begun}
            write_text(path, json.dumps(found, indent=1) + "\n")
            print(f"{name} on {spec.methods.name}: {found[key]['text']} ({found[key]['wall_s']:.0f} s)", flush=True)
    return found


def main() -> None:
    args = arguments()
    torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    bench = Bench(suite, Store(args.store), lookup_only=True, progress=False)
    analysis = Analysis(bench)
    specs = suite.section("order_search").specs(suite)
    model = specs[0].model
    experiment = bench.experiment(model)
    layers = len(decoder_blocks(experiment.loaded.model))
    calib_tokens, eval_tokens = suite.calib_samples * suite.seqlen, suite.eval_tokens

    def single_metric(methods: MethodSet, i: int) -> float:
        return analysis.oriented(model, methods.single(i))

    def single_cost(methods: MethodSet, i: int) -> Cost:
        seconds = bench.measure(model, methods.single(i)).details.get("seconds", {})
        cost = run_cost(methods.single(i).stages, layers, calib_tokens, eval_tokens)
        return Cost(cost.compressions, cost.forward_tokens, sum(seconds.values()), 1)

    context = ProbeContext(experiment.loaded.model, experiment.calibration, blocks=args.probe_blocks,
                           seed=suite.seeds[0], single_metric=single_metric, single_cost=single_cost)
    names = [n.strip() for n in args.predictors.split(",") if n.strip()]
    probes = probe_predictions(args, specs, context, names)
    if args.predict_only:
        return
    complete, sets, used = [], [], []
    for spec in specs:
        try:
            measured = measured_set(analysis, spec)
            singles = [bench.measure(spec.model, spec.methods.single(i)) for i in range(len(spec.methods.units))]
        except Missing:
            continue
        complete.append(spec)
        sets.append(measured)
        used += [bench.measure(spec.model, spec.methods.recipe(o)) for o in spec.methods.orders()] + singles
    print(f"{len(complete)} of {len(specs)} method sets have every order and every single method stored")
    if not complete:
        raise SystemExit("nothing to score: run the suite first")
    rows: list[dict] = []
    for spec, measured in zip(complete, sets):
        full = exhaustive_cost(spec.methods, layers, calib_tokens, eval_tokens)
        seconds = sum(sum(bench.measure(model, spec.methods.recipe(o)).details.get("seconds", {}).values())
                      for o in spec.methods.orders())
        row = {"set": spec.methods.name, "orders": {spec.methods.describe(o): float(p) for o, p in
                                                      zip(measured.orders, measured.ppl())},
               "exhaustive": asdict(Cost(full.compressions, full.forward_tokens, seconds, full.full_runs)),
               "predictions": {}}
        for name in names:
            if name == "intensity":
                prediction = predictor(name).predict(spec.methods, context)
                row["predictions"][name] = {"order": list(prediction.order),
                                            "text": spec.methods.describe(prediction.order),
                                            "scores": prediction.scores, "cost": asdict(prediction.cost)}
            else:
                row["predictions"][name] = probes[f"{name}|{args.probe_blocks}|{spec.methods.name}"]
        rows.append(row)
        print(f"{spec.methods.name}: best {min(row['orders'], key=row['orders'].get)}; "
              + "; ".join(f"{n} {row['predictions'][n]['text']}" for n in names))
    write(Path(args.out), args, suite, sets, rows, names, used, layers)


def totals(costs: list[dict]) -> dict[str, float]:
    return {field: float(sum(c[field] for c in costs)) for field in ("compressions", "forward_tokens", "seconds", "full_runs")}


def write(out: Path, args: argparse.Namespace, suite, sets: list[MeasuredSet], rows: list[dict], names: list[str],
          used: list, layers: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    exhaustive = totals([r["exhaustive"] for r in rows])
    rate, random_regret = score_random(sets, resamples=args.resamples)
    summary, scored = [], {}
    for name in names:
        picks = [tuple(r["predictions"][name]["order"]) for r in rows]
        score = score_predictor(sets, picks, resamples=args.resamples)
        cost = totals([r["predictions"][name]["cost"] for r in rows])
        fractions = {f: cost[f] / exhaustive[f] for f in ("compressions", "forward_tokens", "seconds")}
        met = (score.within_noise_rate >= TARGET["within_noise"]
               and score.mean_regret.value <= TARGET["regret_fraction"] * random_regret.value
               and max(fractions.values()) <= TARGET["cost_fraction"])
        scored[name] = {"within_noise": score.within_noise, "exact": score.exact, "sets": score.sets,
                        "mean_regret": asdict(score.mean_regret), "worst_regret": asdict(score.worst_regret),
                        "cost": cost, "cost_fraction": fractions, "target_met": met}
        summary.append([name, f"{score.within_noise}/{score.sets} ({score.within_noise_rate:.0%})",
                        f"{score.exact}/{score.sets}", score.mean_regret.text(), score.worst_regret.text(),
                        f"{score.mean_regret.value / random_regret.value:.2f}",
                        f"{fractions['compressions']:.3f}", f"{fractions['forward_tokens']:.3f}",
                        f"{fractions['seconds']:.3f}", "yes" if met else "no"])
    summary.append(["random order (expected)", f"{rate:.0%}", "", random_regret.text(), "", "1.00", "", "", "", ""])
    headers = ["predictor", "within noise", "best", "mean regret (ppl) [95%]", "worst regret [95%]",
               "regret / random", "compressions / exh.", "fwd tokens / exh.", "seconds / exh.", "target met"]
    replicates, _ = resampling(sets, args.resamples, 0)
    for r, s in zip(rows, sets):
        for n in names:
            r["predictions"][n]["within_noise"] = within_noise(s, tuple(r["predictions"][n]["order"]), replicates, 0.95)
    per_set = [[i, r["set"], f"{min(r['orders'].values()):.2f}", f"{max(r['orders'].values()):.2f}"]
               + [f"{r['orders'][r['predictions'][n]['text']] - min(r['orders'].values()):.2f}"
                  + ("" if r["predictions"][n]["within_noise"] else " †") for n in names]
               for i, r in enumerate(rows, 1)]
    payload = {"suite": suite.name, "probe_blocks": args.probe_blocks, "layers": layers, "resamples": args.resamples,
               "target": TARGET, "random": {"within_noise_rate": rate, "mean_regret": asdict(random_regret)},
               "exhaustive": exhaustive, "predictors": scored, "sets": rows}
    write_text(out / "predictions.json", json.dumps(payload, indent=1) + "\n")
    unique = {m.key.digest(): m for m in used}  # a single method shared by several sets once
    write_text(out / "measurements.json", json.dumps([record(m) for m in unique.values()], indent=1) + "\n")
    write_text(out / "environment.json", json.dumps(environment(), indent=1) + "\n")
    plot(out / "regret.png", rows, names)
    command = (f"python benchmarks/order_prediction.py --suite {args.suite} --store {args.store} --out {args.out} "
               f"--probe-blocks {args.probe_blocks} --predictors {','.join(names)}")
    text = (f"# Order prediction: suite `{suite.name}`\n\n{len(rows)} method sets with every order measured "
            f"({sum(len(r['orders']) for r in rows)} orders) on `{', '.join(suite.models)}`; probes on "
            f"{args.probe_blocks} of {layers} blocks. Built with\n\n```bash\n{command}\n```\n\n"
            f"A pick is *within noise* when the 95% paired bootstrap interval of ppl(pick) − ppl(best) over the "
            f"{sets[0].nll.shape[1]} evaluation windows reaches 0. Regret = ppl(pick) − ppl(best order), mean over the "
            f"sets, 95% bootstrap interval over windows and sets ({args.resamples} resamples). Costs are the "
            f"predictor's over all sets divided by the exhaustive search's (every order compressed and evaluated on "
            f"the whole model; its seconds as stored, with the harness's prefix reuse). Target: within noise in "
            f"≥ {TARGET['within_noise']:.0%} of the sets, mean regret ≤ {TARGET['regret_fraction']} × a random "
            f"order's, every cost ≤ {TARGET['cost_fraction']} × the exhaustive search's.\n\n"
            + tabulate(summary, headers=headers, tablefmt="github", disable_numparse=True)
            + "\n\n## Regret per set (ppl; † beyond the window noise of the best order)\n\n"
            + tabulate(per_set, headers=["#", "set", "best ppl", "worst ppl", *names], tablefmt="github")
            + "\n\n![regret per set](regret.png)\n\nData: [predictions.json](predictions.json) (every order's ppl, every "
              "prediction with its scores and cost), [measurements.json](measurements.json) (the stored measurements, "
              "`pqqp export` form), [environment.json](environment.json).\n")
    write_text(out / "README.md", text)
    print(tabulate(summary, headers=headers, disable_numparse=True))


def plot(path: Path, rows: list[dict], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / (len(names) + 1)
    x = np.arange(len(rows))
    random = [np.mean([p - min(r["orders"].values()) for p in r["orders"].values()]) for r in rows]
    for k, name in enumerate(names):
        regret = [r["orders"][r["predictions"][name]["text"]] - min(r["orders"].values()) for r in rows]
        ax.bar(x + k * width, [v if v > 0 else np.nan for v in regret], width, label=name)
    ax.bar(x + len(names) * width, [v if v > 0 else np.nan for v in random], width, label="random (expected)",
           color="#bbb")
    ax.set_yscale("log")
    ax.set_ylabel("regret (ppl); no bar: the best order")
    ax.set_xticks(x + 0.4 - width / 2, [str(i + 1) for i in range(len(rows))])
    ax.set_xlabel("method set (row of the table)")
    ax.legend(fontsize=8, ncol=len(names) + 1)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
