"""The published leaderboard of a suite: Markdown and HTML tables, PNG plots and an index, from the store.

Built from stored measurements only (a lookup-only `Bench`): a measurement that is not stored is shown as
`missing`, never computed. The output is a pure function of the suite and the store's rows: no timestamps, a
fixed order, fixed figure sizes and PNGs without a version stamp, so building twice gives identical bytes.

Per model: the dense metric; each method alone at each ratio with its CER (Def. 3); each joint case in both
orders with A(Q->P) (Def. 4) and the CER difference x = C*_P - C_Q; the Hypothesis 1 verdict per (pruner,
quantizer, p); and two plots, A(Q->P) against x with an exponential fit per p (the layout of Fig. 3/4: one
panel per pruner x quantizer) and the metric against the total compression ratio in both orders. Across
models: a ranking of (pruner, quantizer, order) by metric within groups of equal achieved total ratio.

Suites with general pipelines (§5.4) add, per family, the table of A(first -> second) against the intensity gap
x with its verdict, and a plot of A against x (one panel per family). Suites with an order search (App. D.7)
add the intensity rule's recommendation, rank and regret per method set against a random order, the summary
over all sets (the measured claim), and a plot of the rule's regret next to a random order's.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from . import __version__
from .environment import environment
from .errors import PqqpError
from .hypothesis import CER, Point, oriented, quant_ratio
from .analysis import Analysis
from .measure import METRIC, Bench, Missing
from .paths import atomic_write, write_text
from .ordering import OrderOutcome, summarize
from .report import (InterferenceVerdict, PipelineVerdict, Verdict, fmt, interference_verdict, order_outcomes,
                     pipeline_verdict, predictor_name, summary_text, trend, verdict)
from .methods.base import format_value
from .spec import Recipe, parse_recipe
from .store import Measurement, record
from .suite import ORDERS, Case, HypothesisSpec, InterferenceSpec, OrderSpec, PipelineSpec, PooledSpec, Suite, compact

MISSING = "missing"
PANEL_INCHES = (4.8, 3.6)
DPI = 100
RATIO_DIGITS = 2  # joint cases whose achieved C_P·C_Q agree to this many decimals are ranked together
ARROW = {"P>Q": "P→Q", "Q>P": "Q→P"}


# ------------------------------------------------------------------------------------------------ numbers


@dataclass(frozen=True)
class Spread:
    """A metric over calibration seeds: the mean, and the sample standard deviation where there are several."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def text(self) -> str:
        if not self.values:
            return MISSING
        if len(self.values) == 1:
            return number(self.mean)
        return f"{number(self.mean)} ± {number(self.std, 2)} ({len(self.values)} seeds)"


def number(value: float | None, digits: int = 5) -> str:
    if value is None or math.isnan(value):
        return MISSING
    return f"{value:.{digits}g}"


def spread(measurements: list[Measurement]) -> Spread:
    return Spread(tuple(m.value for m in measurements))


def achieved_total(measurements: list[Measurement]) -> float:
    """The mean achieved total ratio C_P·C_Q (from what was measured, not what was asked)."""
    return statistics.fmean(m.details["achieved"]["total"] for m in measurements) if measurements else math.nan


# -------------------------------------------------------------------------------------- collected results


@dataclass(frozen=True)
class Single:
    """One method alone: a pruner at ratio p, or a quantizer at B bits (a point of the CER curve)."""

    template: str
    setting: float  # p for a pruner, B for a quantizer
    measured: tuple[Measurement, ...]
    cers: tuple[tuple[str, CER | None], ...]  # (quantizer, C*) for a pruner; a quantizer's own C*_Q = C_Q


@dataclass(frozen=True)
class Joint:
    """One (pruner, quantizer, p, B): both orders' measurements and, where both are stored, the Fig. 3 point."""

    pruner: str
    quantizer: str
    p: float
    bits: int
    measured: tuple[tuple[str, tuple[Measurement, ...]], ...]  # (order, measurements)
    point: Point | None

    def order(self, order: str) -> tuple[Measurement, ...]:
        return dict(self.measured).get(order, ())


@dataclass(frozen=True)
class ModelBoard:
    """Everything the leaderboard shows for one model, read from the store once."""

    model: str
    dense: tuple[Measurement, ...]
    pruned: tuple[Single, ...]
    quantized: tuple[Single, ...]
    joints: tuple[Joint, ...]
    verdicts: tuple[tuple[HypothesisSpec | PooledSpec, Verdict | None], ...]
    speeds: tuple["Speed", ...] = ()
    pipelines: tuple[tuple[PipelineSpec, PipelineVerdict | None], ...] = ()
    orders: tuple[tuple[OrderSpec, OrderOutcome], ...] = ()
    interference: tuple[tuple[InterferenceSpec, InterferenceVerdict | None], ...] = ()

    @property
    def slug(self) -> str:
        return slug(self.model)

    def measurements(self) -> list[Measurement]:
        singles = [m for s in (*self.pruned, *self.quantized) for m in s.measured]
        joints = [m for j in self.joints for _, ms in j.measured for m in ms]
        speeds = [m for v in self.speeds for m in (v.throughput, *(v.quality if v.recipe.stages else ()))
                  if m is not None]  # the dense model's quality is `dense` already
        return [*self.dense, *singles, *joints, *speeds]


@dataclass(frozen=True)
class Speed:
    """One recipe of the throughput section: its stored tokens/s (either backend) and its stored metric."""

    recipe: Recipe
    throughput: Measurement | None
    quality: tuple[Measurement, ...]


def stored_speed(bench: Bench, model: str, recipe: Recipe) -> Measurement | None:
    """The stored throughput row of the section's settings: vLLM's where there is one, else transformers'."""
    found = (bench.store.get(bench.throughput_key(model, recipe, backend)) for backend in ("vllm", "transformers"))
    return next((m for m in found if m is not None), None)


def slug(model: str) -> str:
    """A file-name-safe name for a model: its last path part, with a hash of the whole name where it differs."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-.") or "model"
    return tail if tail == model else f"{tail}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def stored(bench: Bench, model: str, recipe: Recipe) -> tuple[Measurement, ...]:
    return tuple(bench.stored_case(Case(model, recipe, "", "")))


def lookup(compute: Any, *args: Any) -> Any:
    """`compute(*args)` from stored measurements, or None where one it needs is missing."""
    try:
        return compute(*args)
    except Missing:
        return None


def collect(bench: Bench, model: str) -> ModelBoard:
    s, analysis = bench.suite, Analysis(bench)
    pruned = tuple(
        Single(pruner, p, stored(bench, model, s.pruner(pruner, p)),
               tuple((q, lookup(analysis.cer_of_pruner, model, pruner, p, q)) for q in s.quantizers))
        for pruner in s.pruners for p in s.ratios)
    quantized = tuple(Single(q, bits, stored(bench, model, recipe), ())
                      for q in s.quantizers for bits, recipe in sorted(s.curve(q).items()))
    joints = tuple(
        Joint(pt.pruner, pt.quantizer, pt.p, pt.bits,
              tuple((o, stored(bench, model, pt.recipe(o))) for o in ORDERS if o in s.orders),
              lookup(lambda spec: analysis.point(spec)[0], pt) if set(ORDERS) <= set(s.orders) else None)
        for pt in s.points() if pt.model == model)
    verdicts = tuple((h, lookup(verdict, analysis, h)) for h in (*s.hypotheses(), *s.pooled_hypotheses()) if h.model == model)
    speeds = tuple(Speed(c.recipe, stored_speed(bench, model, c.recipe), stored(bench, model, c.recipe))
                   for c in (s.throughput.cases(model) if s.throughput else ()))
    pipelines = tuple((spec, lookup(pipeline_verdict, analysis, spec)) for spec in s.pipeline_specs() if spec.model == model)
    interference = tuple((spec, lookup(interference_verdict, analysis, spec)) for spec in s.interference_specs()
                         if spec.model == model)
    return ModelBoard(model, stored(bench, model, Recipe(())), pruned, quantized, joints, verdicts, speeds,
                      pipelines, tuple(order_outcomes(analysis, model)), interference)


def collect_all(bench: Bench) -> list[ModelBoard]:
    return [collect(bench, model) for model in bench.suite.models]


# ------------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""

    def markdown(self) -> str:
        body = tabulate(self.rows, headers=self.headers, tablefmt="github", disable_numparse=True)
        return f"#### {self.title}\n\n" + (f"{self.note}\n\n" if self.note else "") + body

    def html(self) -> str:
        body = tabulate(self.rows, headers=self.headers, tablefmt="html", disable_numparse=True)
        note = f'<p class="note">{html.escape(self.note)}</p>\n' if self.note else ""
        return f"<h4>{html.escape(self.title)}</h4>\n{note}{body}"


def convention(suite: Suite) -> str:
    """How the metric was measured; a perplexity means nothing without its window size."""
    windows = suite.eval_tokens // suite.seqlen
    return (f"Perplexity is token-level over {windows} non-overlapping windows of {suite.seqlen} tokens of "
            f"{suite.corpus} (its last {suite.holdout:g} held out from calibration); lower is better, "
            f"M = -ppl. Calibration: {suite.calib_samples} windows of {suite.seqlen} tokens, seeds "
            f"{', '.join(map(str, suite.seeds))}; a ± b (n seeds) is the mean and sample std over seeds.")


def cer_text(value: CER | None) -> str:
    return MISSING if value is None else str(value)


def dense_table(board: ModelBoard) -> Table:
    return Table("Dense model", ("model", "ppl"), ((board.model, spread(list(board.dense)).text()),))


def quantized_table(board: ModelBoard) -> Table:
    rows = tuple((compact(q.template), str(int(q.setting)), number(achieved_total(list(q.measured)), 4),
                  spread(list(q.measured)).text(), number(quant_ratio(q.setting), 4)) for q in board.quantized)
    return Table("Quantization alone (the curve each CER is read from)",
                 ("quantizer", "B", "C_Q achieved", "ppl", "CER C*_Q = C_Q"), rows)


def pruned_table(board: ModelBoard, quantizers: tuple[str, ...]) -> Table:
    rows = tuple((compact(s.template), f"{s.setting:g}", number(achieved_total(list(s.measured)), 4),
                  spread(list(s.measured)).text(), *(cer_text(c) for _, c in s.cers)) for s in board.pruned)
    return Table("Pruning alone", ("pruner", "p", "C_P achieved", "ppl",
                                   *(f"CER C*_P on {compact(q)}" for q in quantizers)), rows,
                 "C*_P: the quantization ratio with the same metric, interpolated on the quantizer's curve (Def. 3); "
                 "<= / >= mark a bound outside the measured curve.")


def advantage_text(point: Point | None) -> str:
    return MISSING if point is None else f"{point.advantage:+.4g} ± {point.stderr:.2g}"


def joint_table(board: ModelBoard) -> Table:
    rows = []
    for j in board.joints:
        both = [m for _, ms in j.measured for m in ms]
        x = MISSING if j.point is None else ("" if j.point.cer_p.bound == "exact" else "bound ") + number(j.point.x, 4)
        regime = MISSING if j.point is None else ("collapsed" if j.point.collapsed else "practical")
        rows.append((compact(j.pruner), compact(j.quantizer), f"{j.p:g}", str(j.bits), number(achieved_total(both), 4),
                     *(spread(list(j.order(o))).text() for o in ORDERS), advantage_text(j.point), x, regime))
    return Table("Joint compression, both orders",
                 ("pruner", "quantizer", "p", "B", "C_P·C_Q achieved", f"ppl {ARROW['P>Q']}", f"ppl {ARROW['Q>P']}",
                  "A(Q→P) ± se", "x = C*_P − C_Q", "regime"), tuple(rows),
                 "A(Q→P) = M(quantize, then prune) − M(prune, then quantize) (Def. 4): positive means quantize-first "
                 "wins; ± is its standard error (the paired bootstrap the verdicts use: windows, and seeds, resampled "
                 "together; inflated by n/(n−1) for n windows). Collapsed: either order above max_ppl_ratio × dense "
                 "(App. D.6), shown but not judged.")


def fit_text(v: Verdict) -> str:
    fit = trend(v.result.points)
    if fit is None:
        return "-"
    return f"{fit.a:.3g}·exp({fit.b:.3g}x) + {fit.c:.3g} (R² {fit.r2:.2f})"


def verdict_table(board: ModelBoard, sigmas: float) -> Table:
    rows = []
    for spec, v in board.verdicts:
        p = f"{spec.p:g}" if isinstance(spec, HypothesisSpec) else "all"
        if v is None:
            rows.append((compact(spec.pruner), compact(spec.quantizer), p, MISSING, "", "", "", "", "", "", ""))
            continue
        r, tr = v.result, v.judged.trend
        rows.append((compact(spec.pruner), compact(spec.quantizer), p, v.status, str(r.n_points),
                     str(len(r.excluded)), f"{fmt(tr.slope, 3)} ± {fmt(tr.slope_stderr, 2)}" if tr else "-",
                     fmt(tr.slope_low, 3) if tr else "-",
                     f"{fmt(tr.spearman, 3)} [{fmt(tr.spearman_low, 2)}, {fmt(tr.spearman_high, 2)}]" if tr else "-",
                     fit_text(v), v.judged.decision.reason))
    return Table("Progressive Intensity Hypothesis (Hypothesis 1)",
                 ("pruner", "quantizer", "p", "verdict", "points", "collapsed", "slope of A in x", "lower bound",
                  "Spearman [interval]", "exponential fit", "reason"), tuple(rows),
                 "A(Q→P) against x = C*_P − C_Q per p, and pooled over every p (p = all, the view of Figs. 3 and 4). "
                 "Supported: the slope's one-sided 95% lower bound is above 0 and no pair drops beyond noise; violated: "
                 f"a pair drops beyond max({sigmas:g}, Bonferroni t) standard errors of its difference, or the slope's "
                 "97.5% upper bound is below 0; else inconclusive, with the smallest slope the data could detect "
                 "(hypothesis.py). Errors: one bootstrap over the evaluation windows shared by every point.")


def interference_tables(board: ModelBoard) -> list[Table]:
    """Table 1 (Finding 4): A(Q→P) by bit width for each pruner, whether both orders removed the same blocks, and
    each pruner's verdict."""
    if not board.interference:
        return []
    rows = []
    for spec, v in board.interference:
        if v is None:
            rows.append((compact(spec.pruner), f"{spec.p:g}", MISSING, "", "", "", ""))
            continue
        for c_q, bits, _, a, same, se in v.rows:
            rows.append((compact(spec.pruner), f"{spec.p:g}", f"{c_q:.2f} ({bits})", f"{a:+.4g} ± {se:.2g}",
                         "-" if same is None else ("yes" if same else "no"), v.status, v.reason))
    return [Table("Interference (Table 1)", ("pruner", "p", "C_Q (B)", "A(Q→P) ± se", "same blocks removed", "verdict",
                                             "reason"), tuple(rows),
                  "A structured pruner (SLEB) is supported where A = 0 exactly at every width at which both orders "
                  "removed the same blocks; an unstructured one where some width interferes beyond noise "
                  "(Bonferroni over the widths).")]


def score(value: float) -> float:
    """The higher-is-better M of a stored value, for ranking (a missing value ranks last)."""
    return -math.inf if math.isnan(value) else oriented(METRIC, value)


def ranking_rows(board: ModelBoard) -> list[tuple[str, ...]]:
    """(pruner, quantizer, order) ranked by metric within each group of equal achieved total ratio."""
    entries = []
    for j in board.joints:
        for order, ms in j.measured:
            if ms:
                entries.append((round(achieved_total(list(ms)), RATIO_DIGITS), j, order, spread(list(ms))))
    rows = []
    for total in sorted({e[0] for e in entries}):
        group = [e for e in entries if e[0] == total]
        scores = [score(e[3].mean) for e in group]
        ranked = sorted(zip(scores, group), key=lambda se: (-se[0], se[1][1].pruner, se[1][1].quantizer, se[1][2]))
        for mine, (_, j, order, values) in ranked:
            rank = 1 + sum(other > mine for other in scores)
            rows.append((board.model, f"{total:.{RATIO_DIGITS}f}", str(rank), compact(j.pruner), compact(j.quantizer),
                         ARROW[order], f"{j.p:g}", str(j.bits), values.text()))
    return rows


def ranking_table(boards: list[ModelBoard]) -> Table:
    return Table("Ranking at equal total compression ratio",
                 ("model", "C_P·C_Q", "rank", "pruner", "quantizer", "order", "p", "B", "ppl"),
                 tuple(row for board in boards for row in ranking_rows(board)),
                 f"Joint cases grouped by achieved C_P·C_Q rounded to {RATIO_DIGITS} decimals; rank 1 is the "
                 "lowest perplexity within its group (orders are compared only at equal achieved ratios).")


def served_text(m: Measurement) -> str:
    """How the row was served: vLLM's format and kernels, or the transformers fallback."""
    d = m.details
    if d["backend"] != "vllm":
        return "transformers fallback: the harness's fake-quantized model, no low-bit kernels"
    kernels = "; ".join(d["kernels"]) or "unquantized linear"
    return f"{'low-bit' if d['low_bit'] else 'dense'}: {d['served_as']} ({kernels})"


def throughput_table(board: ModelBoard, suite: Suite) -> Table:
    t = suite.throughput
    assert t is not None
    rows = []
    for v in board.speeds:
        m = v.throughput
        quality = spread(list(v.quality)).text()
        if m is None:
            rows.append((compact(str(v.recipe)), quality, MISSING, MISSING, "", "", ""))
            continue
        d = m.details
        rows.append((compact(str(v.recipe)), quality, number(m.value, 4), f"{d['speedup']:.2f}×",
                     f"{d['backend']} {d['version']}", served_text(m), "; ".join(d["notes"])))
    s = t.settings
    return Table("Generation throughput", ("recipe", "ppl", "tokens/s", "speed-up vs dense", "backend",
                                           "served as (kernels vLLM reported)", "differs from the evaluated model"),
                 tuple(rows),
                 f"Like `vllm bench throughput`: {s.num_prompts} random prompts of {s.prompt_len} tokens, {s.output_len} "
                 f"generated tokens each (ignore_eos), one offline batch, {s.dtype}; tokens/s counts prompt and output "
                 f"tokens. Speed-up: over the dense row of the same store and settings. vLLM has no sparse kernels, so "
                 f"unstructured or N:M sparsity runs dense; removing blocks (SLEB) gives a smaller dense model.")


def throughput_report(bench: Bench) -> str:
    """The throughput table of every model of a (lookup-only) bench, for terminal summaries; empty without one."""
    if bench.suite.throughput is None:
        return ""
    return "\n\n".join(throughput_table(collect(bench, model), bench.suite).markdown() for model in bench.suite.models)


def pipeline_tables(board: ModelBoard) -> list[Table]:
    tables = []
    for spec, v in board.pipelines:
        f = spec.family
        title = f"Pipeline {f.name}" + (f" ({f.figure})" if f.figure else "")
        if v is None:
            tables.append(Table(title, ("point", "x", "first", "second", "A(first→second)"),
                                tuple((pt.label, f"{pt.x:g}", str(pt.first), str(pt.second), MISSING) for pt in f.points)))
            continue
        rows = tuple((label, f"{x:g}", str(pt.first), number(first), str(pt.second), number(second),
                      f"{number(a, 4)} ± {number(se, 2)}", "collapsed" if c else "", alone)
                     for pt, (label, x, first, second, a, se, c, alone) in zip(f.points, v.rows))
        tables.append(Table(title, ("point", "x", "first", "ppl", "second", "ppl", "A(first→second)", "", "alone"), rows,
                            f"x = {f.x_label}; first puts the weaker stage earlier. A = M(first) − M(second) = "
                            f"ppl(second) − ppl(first) ± paired-bootstrap stderr. Verdict: **{v.status}**: "
                            f"{v.judged.decision.reason}." + (f" {f.description}" if f.description else "")))
    return tables


def order_tables(board: ModelBoard, suite: Suite) -> list[Table]:
    if not board.orders:
        return []
    rows = tuple((str(i), spec.methods.name, spec.methods.describe(r.recommended), spec.methods.describe(r.best),
                  f"{r.rank}/{len(r.metrics)}", number(-r.metric(r.recommended)), number(-r.best_metric),
                  number(r.regret, 4), number(r.random_regret, 4)) for i, (spec, r) in enumerate(board.orders, 1))
    summary = summarize([r for _, r in board.orders])
    name = predictor_name(suite)
    how = ("The rule orders methods by increasing CER from their single runs alone (n runs, not n!)."
           if name == "intensity rule" else
           f"The {name} orders methods from probes on {suite.order_search.probe_blocks} sampled decoder blocks "
           f"(predictors.py), measuring nothing on the whole model.")
    return [Table(f"Order search: the {name} against every order",
                  ("#", "methods", "recommended (weakest first)", "best measured", "rank", "ppl recommended", "ppl best",
                   "regret", "random-order regret"), rows,
                  f"{how} Regret: ppl lost against the best order; a random order's is the mean over all orders. "
                  f"Summary: {summary_text(summary, name)}.")]


ALGORITHM_PARAMS = ("p", "nm", "w", "a", "kv", "g")  # what makes two implementations the same recipe


def algorithm(recipe: Recipe) -> str:
    """The recipe with every plugin stage named after the built-in method it implements (`implements`) and
    only the parameters that define the compression (ratio, bits, group size), so that implementations of the
    same recipe share this text whatever their other knobs (clipping, damping) are called."""
    stages = []
    for stage in recipe.stages:
        shown = [f"{k}={format_value(stage.values[k])}" for k in ALGORITHM_PARAMS if stage.values.get(k) is not None]
        stages.append((stage.implements or stage.name) + (":" + ",".join(shown) if shown else ""))
    return " > ".join(stages)


def implementations(recipe: Recipe) -> str:
    """Which package implements each stage: `ours` for the harness's methods, else the plugin's package."""
    return " > ".join("ours" if stage.builtin() else stage.full().get("package", "plugin") for stage in recipe.stages)


def implementation_table(board: ModelBoard) -> Table | None:
    """Every stored single and joint case next to the cases that run the same algorithms through other
    implementations (plugins declaring `implements`): metric, achieved ratio, compression time, flags."""
    measured = [m for m in board.measurements() if m.key.metric == METRIC and m.key.recipe]
    groups: dict[str, list[Measurement]] = {}
    for m in measured:
        groups.setdefault(algorithm(parse_recipe(m.key.recipe)), []).append(m)
    rows = []
    for name, ms in sorted(groups.items()):
        recipes = sorted({m.key.recipe for m in ms}, key=lambda r: (not all(s.builtin() for s in parse_recipe(r).stages), r))
        if len(recipes) < 2:
            continue
        for text in recipes:  # ours first
            runs = [m for m in ms if m.key.recipe == text]
            rows.append((compact(name), compact(text), implementations(parse_recipe(text)), spread(runs).text(),
                         number(achieved_total(runs), 4),
                         number(statistics.median(m.details.get("seconds", {}).get("compress", math.nan) for m in runs), 3),
                         "; ".join(sorted({f for m in runs for f in m.details.get("flags", ())})) or ""))
    if not rows:
        return None
    return Table("Implementations of the same recipe", ("algorithm", "recipe run", "implementation", "ppl",
                                                       "C achieved", "compress s", "flags"), tuple(rows),
                 "Each group runs one recipe through the harness's own methods and through plugins that implement "
                 "the same algorithms (docs/plugins.md); C achieved counts the weights as they are, and a flag says "
                 "where a library broke what an earlier stage set (pruned weights refilled, weights off a grid).")


def model_tables(board: ModelBoard, suite: Suite) -> list[Table]:
    tables = [dense_table(board)]
    if has_grid(suite):
        tables += [quantized_table(board), pruned_table(board, suite.quantizers), joint_table(board),
                   verdict_table(board, suite.noise_sigmas)]
        tables += [t for t in (implementation_table(board),) if t is not None] + interference_tables(board)
    tables += pipeline_tables(board) + order_tables(board, suite)
    return tables + ([throughput_table(board, suite)] if suite.throughput else [])


def has_grid(suite: Suite) -> bool:
    """Whether the suite has a compression-order grid (a throughput-only suite has none, and no plots)."""
    return bool(suite.pruners and suite.quantizers and suite.ratios and suite.bits)


def plots(suite: Suite) -> tuple:
    """(kind, function, alt text, (width, height) in pixels) of every plot the suite has."""
    grid = figure_pixels(len(suite.pruners), len(suite.quantizers))
    found = tuple((*plot, grid) for plot in PLOTS) if has_grid(suite) else ()
    if suite.pipelines:
        found += (("pipelines", plot_pipelines, "A(first→second) against each family's intensity gap x (§5.4)",
                   figure_pixels(1, len(suite.pipelines))),)
    if suite.order_search:
        found += (("orders", plot_orders, "the intensity rule's regret per method set next to a random order's",
                   figure_pixels(1, 1)),)
    return found


# -------------------------------------------------------------------------------------------------- plots


def figure_pixels(rows: int, cols: int) -> tuple[int, int]:
    """A plot's (width, height) in pixels: one fixed-size panel per pruner x quantizer."""
    return round(cols * PANEL_INCHES[0] * DPI), round(rows * PANEL_INCHES[1] * DPI)


def panels(suite: Suite) -> tuple[Any, list]:
    """A headless matplotlib figure (Agg, no pyplot state) with one panel per (pruner, quantizer)."""
    from matplotlib.figure import Figure

    rows, cols = len(suite.pruners), len(suite.quantizers)
    width, height = figure_pixels(rows, cols)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    grid = [(pruner, quantizer, axes[i][k]) for i, pruner in enumerate(suite.pruners)
            for k, quantizer in enumerate(suite.quantizers)]
    for pruner, quantizer, ax in grid:
        ax.set_title(f"{compact(pruner)} × {compact(quantizer)}", fontsize=9)
        ax.grid(True, alpha=0.3)
    return fig, grid


def colour(suite: Suite, p: float) -> str:
    return f"C{sorted(suite.ratios).index(p) % 10}"


def save(fig: Any, path: Path) -> None:
    """PNG without the Software stamp, so the bytes depend on the data only."""
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, metadata={"Software": None})


def short_model(model: str) -> str:
    """A model's name for a title: an HF hub id or embedded name as it is, a local folder or file by its name."""
    path = Path(model)
    return path.name if (path.is_absolute() or len(path.parts) > 2 or path.suffix == ".gguf") else model


LOG_SPAN = 10.0
"""An axis goes logarithmic where the values it must show (collapsed points left out) span more than this."""


def axis_range(values: list[float], log: bool) -> tuple[float, float] | None:
    """The range that shows `values` with a 6% margin (in log space on a log axis); None without values."""
    import numpy as np

    finite = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    if log:
        low, high = math.log10(low), math.log10(high)
    pad = 0.06 * (high - low) or (0.06 * abs(high) if high else 0.1)
    low, high = low - pad, high + pad
    return (float(10 ** np.float64(low)), float(10 ** np.float64(high))) if log else (low, high)


def scale_axis(ax: Any, axis: str, kept: list[float], collapsed: list[float]) -> tuple[float, float] | None:
    """Set `axis` ("x" or "y") from the kept values only: logarithmic where they are positive and span more than
    `LOG_SPAN`; collapsed values never widen it (they are drawn at its edge, `edge`). Returns the range."""
    positive = [v for v in kept if math.isfinite(v)]
    log = bool(positive) and min(positive) > 0 and max(positive) / min(positive) > LOG_SPAN
    limits = axis_range(kept or collapsed, log)
    if limits is None:
        return None
    if log:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    (ax.set_ylim if axis == "y" else ax.set_xlim)(*limits)
    return limits


def edge(value: float, limits: tuple[float, float] | None) -> float:
    """A value clipped into the axis range, so a collapsed point sits at the edge it lies beyond."""
    if limits is None or math.isnan(value):
        return value
    return min(max(value, limits[0]), limits[1])


def plot_advantage(board: ModelBoard, suite: Suite, path: Path) -> None:
    """A(Q->P) against x = C*_P - C_Q, one colour and one exponential fit per p (Fig. 3; Fig. 4's grid), each point
    labelled with its B; collapsed points (hollow) sit at the edge of the range the practical points set."""
    import numpy as np
    from matplotlib import style

    with style.context("default"):
        fig, grid = panels(suite)
        for pruner, quantizer, ax in grid:
            ax.axhline(0.0, color="0.5", linewidth=0.8)
            pts = [(j.p, j.point) for j in board.joints if (j.pruner, j.quantizer) == (pruner, quantizer)
                   and j.point is not None]
            kept = [pt for _, pt in pts if not pt.collapsed]
            gone = [pt for _, pt in pts if pt.collapsed]
            xs = scale_axis(ax, "x", [pt.x for pt in kept], [pt.x for pt in gone])
            ys = scale_axis(ax, "y", [v for pt in kept for v in (pt.advantage - pt.stderr, pt.advantage + pt.stderr)],
                            [pt.advantage for pt in gone])
            for p in suite.ratios:
                mine = [pt for q, pt in pts if q == p and not pt.collapsed]
                if mine:
                    ax.errorbar([pt.x for pt in mine], [pt.advantage for pt in mine], yerr=[pt.stderr for pt in mine],
                                fmt="o", color=colour(suite, p), capsize=2, label=f"p={p:g}")
                out = [pt for q, pt in pts if q == p and pt.collapsed]
                if out:
                    ax.plot([edge(pt.x, xs) for pt in out], [edge(pt.advantage, ys) for pt in out], "o",
                            color=colour(suite, p), markerfacecolor="none", clip_on=False)
                for pt in (*mine, *out):
                    ax.annotate(f"B{pt.bits}", (edge(pt.x, xs), edge(pt.advantage, ys)), textcoords="offset points",
                                xytext=(4, 4), fontsize=6, color=colour(suite, p), annotation_clip=False)
                fit = trend(mine)
                if fit is not None:
                    line = np.linspace(min(pt.x for pt in mine), max(pt.x for pt in mine), 100)
                    ax.plot(line, fit.predict(line), color=colour(suite, p), linewidth=1.2)
            if ys is not None:
                ax.set_ylim(*ys)  # the fit's curve must not widen it either
            ax.set_xlabel("CER difference C*_P − C_Q")
            ax.set_ylabel("A(Q→P) = ΔM")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.suptitle(f"{short_model(board.model)}: order advantage vs CER difference\n(labels: B; hollow, at the edge: "
                     f"collapsed)", fontsize=9)
        save(fig, path)


def plot_ratio(board: ModelBoard, suite: Suite, path: Path) -> None:
    """Perplexity against the achieved total compression ratio C_P·C_Q, per p, in both orders."""
    from matplotlib import style

    dense = spread(list(board.dense)).mean
    with style.context("default"):
        fig, grid = panels(suite)
        for pruner, quantizer, ax in grid:
            if not math.isnan(dense):
                ax.plot([1.0], [dense], "k*", label="dense")
            for p in suite.ratios:
                for order, line in (("P>Q", "-"), ("Q>P", "--")):
                    cells = sorted((achieved_total(list(j.order(order))), spread(list(j.order(order))).mean)
                                   for j in board.joints if (j.pruner, j.quantizer, j.p) == (pruner, quantizer, p)
                                   and j.order(order))
                    if cells:
                        ax.plot([c for c, _ in cells], [v for _, v in cells], line, marker="o" if order == "P>Q" else "s",
                                color=colour(suite, p), label=f"p={p:g} {ARROW[order]}")
            ax.set_xlabel("total compression ratio C_P·C_Q (achieved)")
            ax.set_ylabel("perplexity")
            ppl = [y for line in ax.get_lines() for y in line.get_ydata()]
            limit = suite.max_ppl_ratio * dense if math.isfinite(dense) else math.inf
            ys = scale_axis(ax, "y", [v for v in ppl if v <= limit], [v for v in ppl if not v <= limit])
            for line in ax.get_lines():  # collapsed values sit at the top edge, hollow
                data = line.get_ydata()
                if ys is not None and any(not v <= limit for v in data):
                    line.set_ydata([edge(v, ys) for v in data])
                    ax.plot([x for x, v in zip(line.get_xdata(), data) if not v <= limit], [ys[1]] * sum(
                        not v <= limit for v in data), "^", color=line.get_color(), markerfacecolor="none", clip_on=False)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.suptitle(f"{short_model(board.model)}: perplexity vs compression, both orders\n(triangles at the top: "
                     f"collapsed, above {suite.max_ppl_ratio:g}x dense)", fontsize=9)
        save(fig, path)


def plot_pipelines(board: ModelBoard, suite: Suite, path: Path) -> None:
    """A(first -> second) against x, one panel per family (Figs. 7-10's layout); hollow: collapsed."""
    from matplotlib import style
    from matplotlib.figure import Figure

    width, height = figure_pixels(1, len(suite.pipelines))
    with style.context("default"):
        fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
        axes = fig.subplots(1, len(suite.pipelines), squeeze=False)[0]
        for ax, (spec, v) in zip(axes, board.pipelines):
            ax.set_title(f"{spec.family.name}" + (f" ({spec.family.figure})" if spec.family.figure else ""), fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.axhline(0.0, color="0.5", linewidth=0.8)
            if v is not None:
                for collapsed, face in ((False, "C0"), (True, "none")):
                    rows = [r for r in v.rows if r[6] == collapsed]
                    if rows:
                        ax.errorbar([r[1] for r in rows], [r[4] for r in rows], yerr=[r[5] for r in rows], fmt="o-"
                                    if not collapsed else "o", color="C0", markerfacecolor=face, capsize=2)
            ax.set_xlabel(spec.family.x_label, fontsize=8)
            ax.set_ylabel("A(first→second) = ΔM")
        fig.suptitle(f"{short_model(board.model)}: general pipelines, weaker stage first vs swapped", fontsize=10)
        save(fig, path)


def plot_orders(board: ModelBoard, suite: Suite, path: Path) -> None:
    """Per method set: the rule's regret and a random order's expected regret (ppl lost vs the best order)."""
    import numpy as np
    from matplotlib import style
    from matplotlib.figure import Figure

    width, height = figure_pixels(1, 1)
    with style.context("default"):
        fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        index = np.arange(len(board.orders))
        ax.bar(index - 0.2, [r.regret for _, r in board.orders], 0.4, label="intensity rule")
        ax.bar(index + 0.2, [r.random_regret for _, r in board.orders], 0.4, label="random order (mean)")
        ax.set_xticks(index, [str(i + 1) for i in index])
        ax.set_xlabel("method set (as numbered in the table)")
        ax.set_ylabel("regret: ppl lost vs the best order")
        ax.grid(True, axis="y", alpha=0.3)
        if board.orders:
            ax.legend(fontsize=7)
        fig.suptitle(f"{short_model(board.model)}: order search", fontsize=10)
        save(fig, path)


PLOTS = (("advantage", plot_advantage, "A(Q→P) against the CER difference, exponential fit per p (Fig. 3/4)"),
         ("ratio", plot_ratio, "perplexity against the total compression ratio, both orders"))


# ------------------------------------------------------------------------------------------------- output


@dataclass(frozen=True)
class Provenance:
    """What the leaderboard was built from and how: printed in the index."""

    command: str
    suite: Suite
    measurements: int
    expected: int
    digest: str


def suite_measurements(bench: Bench, boards: list[ModelBoard]) -> list[Measurement]:
    """Every stored measurement the leaderboard was built from: each case of the suite's grid, pipelines and order
    search in every seed that can change it, and the throughput rows; once each, in the suite's case order."""
    found = {m.key.digest(): m for case in bench.suite.cases() for m in bench.stored_case(case)}
    for m in (m for board in boards for m in board.measurements()):
        found.setdefault(m.key.digest(), m)
    return list(found.values())


def provenance(command: str, bench: Bench, boards: list[ModelBoard]) -> Provenance:
    """The command, and a digest of the stored rows used (their keys' digests and values, sorted)."""
    rows = sorted((m.key.digest(), repr(m.value)) for m in suite_measurements(bench, boards))
    expected = sum(len(bench.seeds_for(case.recipe)) for case in bench.suite.cases())
    speeds = bench.suite.throughput_cases()  # a tokens/s row each, and the metric of those not in the grid
    expected += len(speeds) + sum(len(bench.seeds_for(c.recipe)) for c in speeds if c.recipe.stages)
    digest = hashlib.sha256("\n".join(f"{d} {v}" for d, v in rows).encode()).hexdigest()[:16]
    return Provenance(command, bench.suite, len(rows), expected, digest)


def image_name(kind: str, board: ModelBoard) -> str:
    return f"{kind}-{board.slug}.png"


def markdown(boards: list[ModelBoard], suite: Suite, *, images: bool) -> str:
    parts = [convention(suite), *([ranking_table(boards).markdown()] if has_grid(suite) else [])]
    for board in boards:
        parts.append(f"### {board.model}")
        parts += [t.markdown() for t in model_tables(board, suite)]
        if images:
            parts += [f"![{text}]({image_name(kind, board)})" for kind, _, text, _ in plots(suite)]
    return "\n\n".join(parts) + "\n"


DATA, ENVIRONMENT = "measurements.json", "environment.json"


def rebuild_command(command: str) -> str:
    """The build command with the store replaced by the rebuilt one."""
    return re.sub(r"--store \S+", "--store rebuilt.sqlite", command)


def index(boards: list[ModelBoard], source: Provenance) -> str:
    s = source.suite
    head = (f"# Leaderboard: suite `{s.name}`\n\n" + (f"{s.description}\n\n" if s.description else "") +
            f"Generated by pqqp-bench {__version__} from {source.measurements} of {source.expected} expected stored "
            f"measurements (content digest `{source.digest}`) with\n\n```bash\n{source.command}\n```\n\n"
            "Files: [leaderboard.md](leaderboard.md) (tables), [leaderboard.html](leaderboard.html) (tables and "
            "plots), "
            + ", ".join(f"[{image_name(kind, b)}]({image_name(kind, b)})" for b in boards for kind, _, _, _ in plots(s))
            + ". Missing measurements are shown as `missing`; nothing is computed while building.\n\n"
            f"Data: [{DATA}]({DATA}) holds every measurement used (`pqqp export` form: keys, values, per-window NLLs), "
            f"[{ENVIRONMENT}]({ENVIRONMENT}) the library versions, CPU (kernel capability) and GPU of the machine that "
            f"built this leaderboard (each measurement's own timings, device, library versions and kernels are in its "
            f"details). Rebuild every table from them with the code of the commit in {ENVIRONMENT} (a measurement's key "
            f"carries the fingerprint of the code that computed it, so other code computes its own instead):\n\n```bash\npqqp import {DATA} --store rebuilt.sqlite\n"
            f"{rebuild_command(source.command)}\n```\n\n## Tables\n\n")
    return head + markdown(boards, s, images=True)


CSS = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:0.5em 0 1.5em}"
       "th,td{border:1px solid #bbb;padding:0.2em 0.6em;text-align:right}th{background:#eee}td:first-child{text-align:left}"
       ".note{color:#444;font-size:0.9em}img{display:block;margin:1em 0}")


def html_page(boards: list[ModelBoard], source: Provenance) -> str:
    s = source.suite
    body = [f"<h1>Leaderboard: suite {html.escape(s.name)}</h1>",
            f"<p>{html.escape(s.description)}</p>",
            f"<p>pqqp-bench {__version__}; {source.measurements} of {source.expected} expected measurements "
            f"(digest {source.digest}); built with <code>{html.escape(source.command)}</code></p>",
            f'<p class="note">{html.escape(convention(s))}</p>', *([ranking_table(boards).html()] if has_grid(s) else [])]
    for board in boards:
        body.append(f'<section id="{board.slug}">\n<h2>{html.escape(board.model)}</h2>')
        body += [t.html() for t in model_tables(board, s)]
        body += [f'<img src="{image_name(kind, board)}" alt="{html.escape(text)}" width="{w}" height="{h}">'
                 for kind, _, text, (w, h) in plots(s)]
        body.append("</section>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>pqqp-bench leaderboard: {html.escape(s.name)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def build(bench: Bench, out: Path, command: str) -> list[Path]:
    """Write the leaderboard of `bench`'s suite into `out`; returns the files written, in a fixed order."""
    if bench.suite.metric != METRIC:
        raise PqqpError(f"the leaderboard's tables are written for metric {METRIC!r}, the suite's is "
                        f"{bench.suite.metric!r}: accepted a suite with metric ppl (pqqp gate and pytest accept both)")
    out.mkdir(parents=True, exist_ok=True)
    boards = collect_all(bench)
    source = provenance(command, bench, boards)
    texts = {"leaderboard.md": markdown(boards, bench.suite, images=False), "leaderboard.html": html_page(boards, source),
             "README.md": index(boards, source)}
    written = []
    texts[DATA] = json.dumps([record(m) for m in suite_measurements(bench, boards)], indent=1) + "\n"
    texts[ENVIRONMENT] = json.dumps(environment(), indent=1) + "\n"
    for name, text in texts.items():
        write_text(out / name, text)
        written.append(out / name)
    for board in boards:
        for kind, plot, _, _ in plots(bench.suite):
            plot(board, bench.suite, out / image_name(kind, board))
            written.append(out / image_name(kind, board))
    return written
