"""Tables of a suite's results, read from the store: the cases, and the hypothesis verdicts with their evidence.

Only stored measurements are shown (nothing is computed here), so the pytest summary of an `-n 2` run, a
`pqqp run --suite` and a later look at the store all print the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tabulate import tabulate

from .compress import bits_label
from .hypothesis import ExpFit, Monotonicity, Point, exponential_fit, higher_is_better, interference_table, monotonicity
from .measure import Bench, Missing
from .ordering import OrderOutcome, OrderSummary, cost_ratio, summarize
from .suite import HypothesisSpec, InterferenceSpec, OrderSpec, PipelineSpec


def trend(points: Sequence[Point]) -> ExpFit | None:
    """Fig. 3's exponential fit over one pruning ratio's points (None for fewer than 3, or a failed fit)."""
    return exponential_fit([p.x for p in points], [p.advantage for p in points]) if len(points) >= 3 else None


def fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def case_rows(bench: Bench) -> list[tuple]:
    rows = []
    for case in bench.suite.cases():
        for m in bench.stored_case(case):
            ach = m.details["achieved"]
            bits = bits_label(ach) or "-"
            rows.append((case.model, str(case.recipe), case.recipe.order or "-", m.key.seed if m.key.seed >= 0 else "-",
                         f"{ach['sparsity']:.3f}", bits, f"{ach['total']:.2f}", f"{m.value:.4f}",
                         f"{m.details['seconds'].get('compress', 0):.1f}", f"{m.details['seconds'].get('evaluate', 0):.1f}"))
    return rows


def case_table(bench: Bench) -> str:
    rows = case_rows(bench)
    if not rows:
        return ""
    s = bench.suite
    if s.metric == "ppl":
        title = f"cases: token-level perplexity, {s.eval_tokens // s.seqlen} x {s.seqlen}-token windows of {s.corpus}"
    else:
        title = f"cases: {s.metric} (lm-eval, context {s.seqlen} tokens, held-out text of {s.corpus})"
    return title + "\n" + tabulate(rows, headers=["model", "recipe", "order", "seed", "sparsity", "bits", "C total",
                                                  s.metric, "compress s", "eval s"])


@dataclass(frozen=True)
class Verdict:
    """Hypothesis 1 for one (model, pruner, quantizer, p), with the points it was judged on."""

    spec: HypothesisSpec
    result: Monotonicity
    sigmas: float

    @property
    def status(self) -> str:
        if self.result.n_points < 2:
            return "too few points"
        return "holds" if self.result.holds else "VIOLATED"

    def evidence(self) -> str:
        """The table of points (C_Q, C*_P, x, A ± stderr) and the pairs that break monotonicity."""
        rows = [(r["bits"], fmt(r["C_Q"], 3), ("" if r["C*_P bound"] == "exact" else
                                               {"below": "<=", "above": ">="}[r["C*_P bound"]]) + fmt(r["C*_P"], 4),
                 fmt(r["x"], 4), fmt(r["A"], 4), fmt(r["stderr"], 2), "collapsed" if r["collapsed"] else "")
                for r in self.result.table()]
        text = tabulate(rows, headers=["B", "C_Q", "C*_P", "x = C*_P - C_Q", "A(Q->P)", "stderr", ""])
        res = self.result
        text += f"\nSpearman {fmt(res.spearman, 3)}, Kendall {fmt(res.kendall, 3)} over {res.n_points} points " \
                f"(collapsed points, ppl > max_ppl_ratio x dense, excluded: {len(res.excluded)})"
        text += violation_lines(res, self.sigmas)
        fit = trend(res.points)
        if fit is not None:
            text += f"\nexponential fit A = {fmt(fit.a)}·exp({fmt(fit.b)}·x) + {fmt(fit.c)}, R² {fmt(fit.r2, 3)}"
        return text


def violation_lines(result: Monotonicity, sigmas: float) -> str:
    """One line per pair of points that breaks monotonicity, with its drop and the noise tolerance."""
    return "".join(f"\nviolation: x {fmt(v.x_low)} -> {fmt(v.x_high)}: A drops {fmt(v.a_low)} -> {fmt(v.a_high)} "
                   f"(by {fmt(v.drop)}, noise tolerance {sigmas:g} sigma = {fmt(v.tolerance)})" for v in result.violations)


def verdict(bench: Bench, spec: HypothesisSpec) -> Verdict:
    points: list[Point] = [pt for pt, _ in bench.hypothesis_points(spec)]
    return Verdict(spec, monotonicity(points, sigmas=bench.suite.noise_sigmas), bench.suite.noise_sigmas)


def verdict_table(bench: Bench) -> str:
    rows = []
    for spec in bench.suite.hypotheses():
        try:
            v = verdict(bench, spec)
        except Missing:
            continue
        r = v.result
        rows.append((spec.id, v.status, r.n_points, len(r.excluded), len(r.violations), fmt(r.spearman, 3),
                     fmt(r.kendall, 3)))
    if not rows:
        return ""
    return ("Progressive Intensity Hypothesis: A(Q->P) non-decreasing in C*_P - C_Q (per model, pruner, quantizer, p)\n"
            + tabulate(rows, headers=["model-pruner-quantizer", "verdict", "points", "collapsed", "violations",
                                      "Spearman", "Kendall"]))


def interference_rows(bench: Bench, spec: InterferenceSpec) -> list[tuple]:
    """(C_Q, bits, pruner, A, same structure) for each bit width: Table 1's cells for one pruner."""
    rows = []
    for pt_spec in spec.points():
        point, _ = bench.point(pt_spec)
        qp = bench.removed_blocks(spec.model, pt_spec.recipe("Q>P"), bench.suite.seeds[0])
        pq = bench.removed_blocks(spec.model, pt_spec.recipe("P>Q"), bench.suite.seeds[0])
        same = None if qp is None and pq is None else qp == pq
        rows.append((point.c_q, point.bits, spec.pruner, point.advantage, same, point.stderr))
    return rows


def interference_report(bench: Bench) -> str:
    """Table 1 per (model, quantizer, p): one A(Q->P) column per pruner, one row per C_Q."""
    groups: dict[tuple, list] = {}
    for spec in bench.suite.interference_specs():
        try:
            groups.setdefault((spec.model, spec.quantizer, spec.p), []).extend(
                row[:5] for row in interference_rows(bench, spec))
        except Missing:
            continue
    parts = [f"Interference (Table 1): A(Q->P) by C_Q, {model}, {quantizer}, p={p:g}\n"
             + tabulate(interference_table(cells), headers="keys") for (model, quantizer, p), cells in groups.items()]
    return "\n\n".join(parts)


# ------------------------------------------------------------------------- general pipelines (§5.4)


@dataclass(frozen=True)
class PipelineVerdict:
    """The paper's direction for one family: A(first -> second) non-decreasing in x, within noise."""

    spec: PipelineSpec
    result: Monotonicity
    rows: tuple[tuple, ...]  # (label, x, metric first, metric second, A, stderr, collapsed, alone text)
    sigmas: float

    @property
    def status(self) -> str:
        if self.result.n_points < 2:
            return "too few points"
        return "holds" if self.result.holds else "VIOLATED"

    def evidence(self) -> str:
        metric = self.spec.suite.metric
        f = self.spec.family
        head = (f"{f.figure + ': ' if f.figure else ''}A(first -> second) = M(first) - M(second) against x = {f.x_label}; "
                f"first = the weaker stage earlier")
        table = tabulate([(label, fmt(x, 4), fmt(a_first, 5), fmt(a_second, 5), fmt(a, 4), fmt(se, 2),
                           "collapsed" if c else "", alone) for label, x, a_first, a_second, a, se, c, alone in self.rows],
                         headers=["point", "x", f"{metric} first", f"{metric} second", "A", "stderr", "", "alone"])
        res = self.result
        text = f"{head}\n{table}\nSpearman {fmt(res.spearman, 3)}, Kendall {fmt(res.kendall, 3)} over {res.n_points} " \
               f"points (collapsed, excluded: {len(res.excluded)}); A > 0 at {sum(r[4] > 0 for r in self.rows)} of " \
               f"{sum(r[1] != 0 for r in self.rows)} points with x != 0"
        text += violation_lines(res, self.sigmas)
        return text


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def pipeline_verdict(bench: Bench, spec: PipelineSpec) -> PipelineVerdict:
    points = bench.pipeline_points(spec)
    rows = tuple((d["label"], pt.x, mean(d["first"]), mean(d["second"]), pt.advantage, pt.stderr, pt.collapsed,
                  "; ".join(f"{r} {fmt(v, 5)}" for r, v in d["alone"]))
                 for pt, d in points)
    sigmas = bench.suite.noise_sigmas
    return PipelineVerdict(spec, monotonicity([pt for pt, _ in points], sigmas=sigmas), rows, sigmas)


def pipeline_report(bench: Bench) -> str:
    parts = []
    for spec in bench.suite.pipeline_specs():
        try:
            v = pipeline_verdict(bench, spec)
        except Missing:
            continue
        parts.append(f"Pipeline {spec.id}: {v.status}\n{v.evidence()}")
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------ order search (App. D.7)


def order_evidence(bench: Bench, spec: OrderSpec, result: OrderOutcome | None, details: dict) -> str:
    """The single methods with their M and CER, the recommendation, and (exhaustive) every order ranked."""
    methods, metric = spec.methods, bench.suite.metric
    sign = 1.0 if higher_is_better(metric) else -1.0  # M back to the metric's own value
    singles = tabulate([(str(methods.units[i]), fmt(sign * m, 5), str(c) if c is not None else "-")
                        for i, (m, c) in enumerate(zip(details["singles"], details["cers"]))],
                       headers=["method alone", metric, f"CER on {bench.suite.order_search.reference}"
                                if bench.suite.order_search else "CER"])
    n = len(methods.units)
    text = (f"{singles}\nrecommended (increasing CER, weakest first): {methods.describe(details['recommended'])}\n"
            f"cost: {n} single runs for the rule vs {len(methods.orders())} orders exhaustively "
            f"({cost_ratio(n):g}x more joint compressions)")
    if result is None:
        return text
    ranked = sorted(result.metrics, key=lambda om: -om[1])
    rows = [(1 + sum(other > m for _, other in result.metrics), methods.describe(order), fmt(sign * m, 5),
             fmt(result.best_metric - m, 4), "recommended" if order == result.recommended else "")
            for order, m in ranked]
    text += "\n" + tabulate(rows, headers=["rank", "order", metric, "regret", ""])
    text += (f"\nrecommended order: rank {result.rank} of {len(rows)}, regret {fmt(result.regret, 4)} "
             f"(random order: best with chance {fmt(result.random_hit_rate, 3)}, expected regret "
             f"{fmt(result.random_regret, 4)})")
    return text


def order_outcomes(bench: Bench, model: str | None = None) -> list[tuple[OrderSpec, OrderOutcome]]:
    found = []
    for spec in bench.suite.order_specs():
        if model is not None and spec.model != model:
            continue
        try:
            result, _ = bench.order_outcome(spec)
        except Missing:
            continue
        found.append((spec, result))
    return found


def summary_text(summary: OrderSummary) -> str:
    return (f"intensity rule over {summary.sets} method sets: best order chosen in {summary.hit_rate:.0%} "
            f"(random order: {summary.random_hit_rate:.0%}), mean regret {fmt(summary.mean_regret, 4)} "
            f"(random order: {fmt(summary.random_regret, 4)}), mean rank {fmt(summary.mean_rank, 3)}")


def order_report(bench: Bench) -> str:
    found = order_outcomes(bench)
    if not found:
        return ""
    rows = [(spec.model, spec.methods.name, spec.methods.describe(r.recommended), spec.methods.describe(r.best),
             f"{r.rank}/{len(r.metrics)}", fmt(r.regret, 4), fmt(r.random_regret, 4)) for spec, r in found]
    text = "Order search: the intensity rule (increasing CER) against every order\n" + tabulate(
        rows, headers=["model", "methods", "recommended", "best", "rank", "regret", "random regret"])
    for model in dict.fromkeys(spec.model for spec, _ in found):
        text += f"\n{model}: " + summary_text(summarize([r for spec, r in found if spec.model == model]))
    return text


def full_report(bench: Bench) -> str:
    parts = (case_table(bench), verdict_table(bench), interference_report(bench), pipeline_report(bench),
             order_report(bench))
    return "\n\n".join(part for part in parts if part)
