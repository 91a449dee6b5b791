"""Tables of a suite's results, read from the store: the cases, and the hypothesis verdicts with their evidence.

Only stored measurements are shown (nothing is computed here), so the pytest summary of an `-n 2` run, a
`pqqp run --suite` and a later look at the store all print the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tabulate import tabulate

from .compress import bits_label
from .hypothesis import (INCONCLUSIVE, SUPPORTED, VIOLATED, ExpFit, Judged, Monotonicity, Point, break_sigmas,
                         exponential_fit, fit_rise, higher_is_better, interference_table, structured_zero_interference)
from .analysis import Analysis
from .measure import Bench, Missing
from .ordering import OrderOutcome, OrderSummary, cost_ratio, summarize
from .suite import HypothesisSpec, InterferenceSpec, OrderSpec, PipelineSpec, PooledSpec, Suite

if TYPE_CHECKING:
    from .predictors import Cost


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
        starts = ", ".join(f"{m}: {'BOS' if bench.window_start(m) == 'bos' else 'no BOS'}" for m in s.models)
        title = (f"cases: token-level perplexity, {s.eval_tokens // s.seqlen} x {s.seqlen}-token windows of {s.corpus} "
                 f"(window start, bos={s.bos}: {starts})")
    else:
        title = f"cases: {s.metric} (lm-eval, context {s.seqlen} tokens, held-out text of {s.corpus})"
    return title + "\n" + tabulate(rows, headers=["model", "recipe", "order", "seed", "sparsity", "bits", "C total",
                                                  s.metric, "compress s", "eval s"])


@dataclass(frozen=True)
class Verdict:
    """Hypothesis 1 for one (model, pruner, quantizer, p), or pooled over every p: its points and verdict."""

    spec: HypothesisSpec | PooledSpec
    judged: Judged

    @property
    def status(self) -> str:
        return self.judged.verdict

    @property
    def result(self) -> Monotonicity:
        return self.judged.result

    def evidence(self) -> str:
        """The points (p, B, C_Q, C*_P, x, A ± stderr, collapsed), the trend with its bounds, the exponential fit
        and the verdict with its reason."""
        rows = [(fmt(pt.p, 3), pt.bits, fmt(pt.c_q, 3), str(pt.cer_p), fmt(pt.x, 4), fmt(pt.advantage, 4),
                 fmt(pt.stderr, 2), "collapsed" if pt.collapsed else "")
                for pt in sorted(self.judged.points, key=lambda pt: (pt.collapsed, pt.x, pt.p, pt.bits))]
        text = tabulate(rows, headers=["p", "B", "C_Q", "C*_P", "x = C*_P - C_Q", "A(Q->P)", "stderr", ""])
        return text + "\n" + judged_lines(self.judged)


def judged_lines(judged: Judged) -> str:
    """The trend, the fit and the verdict of a judged test, as the summary and the leaderboard print them."""
    res, tr = judged.result, judged.trend
    lines = [f"{res.n_points} points judged, {len(res.excluded)} collapsed (ppl above max_ppl_ratio x dense, shown "
             f"and not judged)"]
    if tr is not None:
        lines.append(f"slope of A in x {fmt(tr.slope, 4)} ± {fmt(tr.slope_stderr, 2)} (lower bound {fmt(tr.slope_low, 3)}, "
                     f"upper bound {fmt(tr.slope_high, 3)}; {tr.units} windows); Spearman {fmt(tr.spearman, 3)} "
                     f"[{fmt(tr.spearman_low, 3)}, {fmt(tr.spearman_high, 3)}]")
    rise = fit_rise(judged)
    if rise is not None:
        f = rise.fit
        lines.append(f"exponential fit A = {fmt(f.a)}·exp({fmt(f.b)}·x) + {fmt(f.c)}, R² {fmt(f.r2, 3)}; rise over "
                     f"the measured x {fmt(rise.rise, 4)} [{fmt(rise.low, 3)}, {fmt(rise.high, 3)}]")
    lines += [f"pair {fmt(v.x_low)} -> {fmt(v.x_high)}: A drops {fmt(v.a_low)} -> {fmt(v.a_high)} by {fmt(v.drop)} "
              f"(tolerance {res.sigmas:.3g} sigma = {fmt(v.tolerance)})" for v in res.violations]
    lines.append(f"verdict: {judged.verdict.upper()}: {judged.decision.reason}")
    return "\n".join(lines)


def verdict(analysis: Analysis, spec: HypothesisSpec | PooledSpec) -> Verdict:
    judged, _ = analysis.judged(spec.points())
    return Verdict(spec, judged)


def verdicts(analysis: Analysis) -> list[Verdict]:
    """Every per-p and pooled Hypothesis 1 test of the suite whose measurements are stored."""
    found = []
    for spec in (*analysis.suite.hypotheses(), *analysis.suite.pooled_hypotheses()):
        try:
            found.append(verdict(analysis, spec))
        except Missing:
            continue
    return found


def verdict_table(analysis: Analysis) -> str:
    """One line per Hypothesis 1 test, then each test's evidence (its points, trend, fit, verdict and reason)."""
    found = verdicts(analysis)
    if not found:
        return ""
    rows = [(v.spec.id, v.status, v.result.n_points, len(v.result.excluded), fmt(tr.slope, 3) if (tr := v.judged.trend) else "-",
             fmt(tr.slope_low, 3) if tr else "-", fmt(tr.spearman, 3) if tr else "-") for v in found]
    head = ("Progressive Intensity Hypothesis: A(Q->P) non-decreasing in x = C*_P - C_Q (per model, pruner, quantizer, "
            "p; pooled over p)\n" + tabulate(rows, headers=["test", "verdict", "points", "collapsed", "slope",
                                                            "lower bound", "Spearman"]))
    return head + "".join(f"\n\n{v.spec.id}\n{v.evidence()}" for v in found)


def interference_rows(analysis: Analysis, spec: InterferenceSpec) -> list[tuple]:
    """(C_Q, bits, pruner, A, same structure, stderr, units) for each bit width: Table 1's cells for one pruner,
    with the number of evaluation units A's noise was resampled over (None where a value is not finite)."""
    rows = []
    for pt_spec in spec.points():
        point, details = analysis.point(pt_spec)
        qp = analysis.removed_blocks(spec.model, pt_spec.recipe("Q>P"), analysis.suite.seeds[0])
        pq = analysis.removed_blocks(spec.model, pt_spec.recipe("P>Q"), analysis.suite.seeds[0])
        same = None if qp is None and pq is None else qp == pq
        units = details["paired"].units if details["paired"] is not None else None
        rows.append((point.c_q, point.bits, spec.pruner, point.advantage, same, point.stderr, units))
    return rows


@dataclass(frozen=True)
class InterferenceVerdict:
    """Finding 4 for one pruner (Table 1): its rows and one of the three verdicts, with the reason."""

    spec: InterferenceSpec
    rows: tuple[tuple, ...]  # (C_Q, bits, pruner, A, same structure, stderr)
    status: str
    reason: str

    def evidence(self) -> str:
        table = "\n".join(f"C_Q {c_q:.2f} (B={bits}): A(Q->P) = {a:+.6g} ± {se:.2g}, same blocks removed: {same}"
                          for c_q, bits, _, a, same, se in self.rows)
        return f"{table}\nverdict: {self.status.upper()}: {self.reason}"


def interference_verdict(analysis: Analysis, spec: InterferenceSpec) -> InterferenceVerdict:
    """A structured pruner: supported where A = 0 exactly at every width at which both orders removed the same
    blocks, violated where such a width has A != 0, inconclusive where none has. An unstructured pruner: supported
    where some width interferes, |A| beyond max(noise_sigmas, the Bonferroni t over the widths) stderr, else
    inconclusive (the absence of interference is never claimed)."""
    found = interference_rows(analysis, spec)
    rows = tuple(row[:6] for row in found)
    if any(same is not None for *_, same, _se in rows):
        unchanged = [r for r in rows if r[4] is True]
        nonzero = structured_zero_interference(row[:5] for row in rows)
        if nonzero:
            widths = ", ".join(f"B={r[1]} (A = {r[3]:+.4g})" for r in nonzero)
            return InterferenceVerdict(spec, rows, VIOLATED, f"A != 0 although both orders removed the same blocks: {widths}")
        if not unchanged:
            return InterferenceVerdict(spec, rows, INCONCLUSIVE, "the two orders removed different blocks at every width")
        return InterferenceVerdict(spec, rows, SUPPORTED, f"A = 0 exactly at all {len(unchanged)} widths where both "
                                                          f"orders removed the same blocks")
    s = analysis.suite
    units = max((row[6] for row in found if row[6] is not None), default=2)
    sigmas = break_sigmas(s.noise_sigmas, len(rows), units, s.level)
    beyond = [r for r in rows if abs(r[3]) > sigmas * r[5]]
    if beyond:
        widths = ", ".join(f"B={r[1]} (A = {r[3]:+.4g} ± {r[5]:.2g})" for r in beyond)
        return InterferenceVerdict(spec, rows, SUPPORTED, f"interference beyond {sigmas:.3g} stderr at {widths}")
    return InterferenceVerdict(spec, rows, INCONCLUSIVE, f"no width shows |A| beyond {sigmas:.3g} stderr (Bonferroni "
                                                         f"over {len(rows)} widths)")


def interference_report(analysis: Analysis) -> str:
    """Table 1 per (model, quantizer, p): one A(Q->P) column per pruner, one row per C_Q; then each verdict."""
    groups: dict[tuple, list] = {}
    verdicts = []
    for spec in analysis.suite.interference_specs():
        try:
            v = interference_verdict(analysis, spec)
        except Missing:
            continue
        groups.setdefault((spec.model, spec.quantizer, spec.p), []).extend(row[:5] for row in v.rows)
        verdicts.append(f"{spec.id}: {v.status.upper()}: {v.reason}")
    parts = [f"Interference (Table 1): A(Q->P) by C_Q, {model}, {quantizer}, p={p:g}\n"
             + tabulate(interference_table(cells), headers="keys") for (model, quantizer, p), cells in groups.items()]
    return "\n\n".join(parts + (["\n".join(verdicts)] if verdicts else []))


# ------------------------------------------------------------------------- general pipelines (§5.4)


@dataclass(frozen=True)
class PipelineVerdict:
    """The paper's direction for one family: A(first -> second) non-decreasing in x, with the three verdicts."""

    spec: PipelineSpec
    judged: Judged
    rows: tuple[tuple, ...]  # (label, x, metric first, metric second, A, stderr, collapsed, alone text)

    @property
    def status(self) -> str:
        return self.judged.verdict

    @property
    def result(self) -> Monotonicity:
        return self.judged.result

    def evidence(self) -> str:
        metric = self.spec.suite.metric
        f = self.spec.family
        head = (f"{f.figure + ': ' if f.figure else ''}A(first -> second) = M(first) - M(second) against x = {f.x_label}; "
                f"first = the weaker stage earlier")
        table = tabulate([(label, fmt(x, 4), fmt(a_first, 5), fmt(a_second, 5), fmt(a, 4), fmt(se, 2),
                           "collapsed" if c else "", alone) for label, x, a_first, a_second, a, se, c, alone in self.rows],
                         headers=["point", "x", f"{metric} first", f"{metric} second", "A", "stderr", "", "alone"])
        return f"{head}\n{table}\n{judged_lines(self.judged)}"


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def pipeline_verdict(analysis: Analysis, spec: PipelineSpec) -> PipelineVerdict:
    points = analysis.pipeline_points(spec)
    judged = analysis.judge([pt for pt, _ in points], [d["paired"] for _, d in points])
    rows = tuple((d["label"], pt.x, mean(d["first"]), mean(d["second"]), pt.advantage, pt.stderr, pt.collapsed,
                  "; ".join(f"{r} {fmt(v, 5)}" for r, v in d["alone"]))
                 for pt, (_, d) in zip(judged.points, points))
    return PipelineVerdict(spec, judged, rows)


def pipeline_report(analysis: Analysis) -> str:
    parts = []
    for spec in analysis.suite.pipeline_specs():
        try:
            v = pipeline_verdict(analysis, spec)
        except Missing:
            continue
        parts.append(f"Pipeline {spec.id}: {v.status}\n{v.evidence()}")
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------ order search (App. D.7)


def order_evidence(analysis: Analysis, spec: OrderSpec, result: OrderOutcome | None, details: dict) -> str:
    """What the predictor saw (the single methods with their M and CER, or the probes' block errors), its
    recommendation and cost beside the exhaustive search's, and (exhaustive) every order ranked."""
    methods, metric = spec.methods, analysis.suite.metric
    sign = 1.0 if higher_is_better(metric) else -1.0  # M back to the metric's own value
    n, name = len(methods.units), details.get("predictor", "intensity")
    if "singles" in details:
        seen = tabulate([(str(methods.units[i]), fmt(sign * m, 5), str(c) if c is not None else "-")
                         for i, (m, c) in enumerate(zip(details["singles"], details["cers"]))],
                        headers=["method alone", metric, f"CER on {analysis.suite.order_search.reference}"
                                 if analysis.suite.order_search else "CER"])
        how = "increasing CER, weakest first"
        cost = (f"cost: {n} single runs for the rule vs {len(methods.orders())} orders exhaustively "
                f"({cost_ratio(n):g}x more joint compressions)")
    else:
        seen = tabulate([(k, fmt(v, 5)) for k, v in details["scores"].items()],
                        headers=["probed on the sampled blocks", "block output error"])
        how = f"{name}: smallest error of the sampled blocks' outputs"
        cost = probe_cost_text(analysis, spec, details["cost"])
    text = f"{seen}\nrecommended ({how}): {methods.describe(details['recommended'])}\n{cost}"
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


def probe_cost_text(analysis: Analysis, spec: OrderSpec, cost: Cost) -> str:
    """A probe predictor's cost beside the exhaustive search's (every order compressed and evaluated)."""
    from .blocks import decoder_blocks
    from .predictors import exhaustive_cost

    s = analysis.suite
    layers = len(decoder_blocks(analysis.probe_context(spec.model).model))
    full = exhaustive_cost(spec.methods, layers, s.calib_samples * s.seqlen, s.eval_tokens)
    return (f"cost: {cost.compressions} block compressions, {cost.forward_tokens:,} block-forward tokens, "
            f"{cost.seconds:.1f} s; the exhaustive search: {full.full_runs} whole-model runs, {full.compressions} "
            f"block compressions, {full.forward_tokens:,} block-forward tokens "
            f"({cost.forward_tokens / full.forward_tokens:.1%} of its tokens)")


def order_outcomes(analysis: Analysis, model: str | None = None) -> list[tuple[OrderSpec, OrderOutcome]]:
    found = []
    for spec in analysis.suite.order_specs():
        if model is not None and spec.model != model:
            continue
        try:
            result, _ = analysis.order_outcome(spec)
        except Missing:
            continue
        found.append((spec, result))
    return found


def predictor_name(suite: Suite) -> str:
    """The suite's order predictor as prose: `intensity rule` or `probe predictor`."""
    name = suite.order_search.predictor if suite.order_search else "intensity"
    return "intensity rule" if name == "intensity" else f"{name} predictor"


def summary_text(summary: OrderSummary, predictor: str = "intensity rule") -> str:
    return (f"{predictor} over {summary.sets} method sets: best order chosen in {summary.hit_rate:.0%} "
            f"(random order: {summary.random_hit_rate:.0%}), mean regret {fmt(summary.mean_regret, 4)} "
            f"(random order: {fmt(summary.random_regret, 4)}), mean rank {fmt(summary.mean_rank, 3)}")


def order_report(analysis: Analysis) -> str:
    found = order_outcomes(analysis)
    if not found:
        return ""
    rows = [(spec.model, spec.methods.name, spec.methods.describe(r.recommended), spec.methods.describe(r.best),
             f"{r.rank}/{len(r.metrics)}", fmt(r.regret, 4), fmt(r.random_regret, 4)) for spec, r in found]
    rule = "the intensity rule (increasing CER)" if predictor_name(analysis.suite) == "intensity rule" else \
        f"the {predictor_name(analysis.suite)}"
    text = f"Order search: {rule} against every order\n" + tabulate(
        rows, headers=["model", "methods", "recommended", "best", "rank", "regret", "random regret"])
    for model in dict.fromkeys(spec.model for spec, _ in found):
        text += f"\n{model}: " + summary_text(summarize([r for spec, r in found if spec.model == model]),
                                               predictor_name(analysis.suite))
    return text


def full_report(analysis: Analysis) -> str:
    parts = (case_table(analysis.bench), verdict_table(analysis), interference_report(analysis), pipeline_report(analysis),
             order_report(analysis))
    return "\n\n".join(part for part in parts if part)
