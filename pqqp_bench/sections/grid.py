"""The grid's section: the suite's own keys (pruners x quantizers x ratios x bits, both orders), whose cases the
suite itself lists (`Suite.cases`). Here are its tests' parameters (Hypothesis 1 per p, and pooled over p), the
verdicts' report, and its leaderboard: the methods alone with their CERs (Def. 3), the joint cases with A(Q->P)
(Def. 4) and x = C*_P - C_Q, the verdicts, the implementations of one recipe side by side, a ranking at equal total
ratio across models, and two plots (A against x with an exponential fit per p, Fig. 3/4's layout; the metric
against the total compression ratio in both orders).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..analysis import Analysis
from ..hypothesis import CER, Judged, Point, oriented, quant_ratio
from ..measure import METRIC, Missing
from ..methods.base import format_value
from ..report import (DPI, MISSING, JudgedVerdict, Table, achieved_total, edge, figure_pixels, fmt, judged_lines, number, save,
                      lookup, scale_axis, short_model, spread, trend)
from ..spec import Recipe, parse_recipe
from ..store import Measurement
from ..suite import ORDERS, Case, HypothesisSpec, PooledSpec, Suite, compact
from .base import Board, Plot, Section

RATIO_DIGITS = 2  # joint cases whose achieved C_P·C_Q agree to this many decimals are ranked together
ARROW = {"P>Q": "P→Q", "Q>P": "Q→P"}


@dataclass(frozen=True)
class Grid(Section):
    """The grid's tests, report and leaderboard (its settings are the suite's own keys)."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The suite's own keys: the grid's settings."""
        return {f.name: f.default for f in fields(Suite)}

    def tests(self, suite: Suite) -> dict[str, list]:
        return {"pqqp_hypothesis": suite.hypotheses(), "pqqp_pooled": suite.pooled_hypotheses()}

    def report(self, analysis: Analysis) -> str:
        return verdict_text(analysis)

    def collect(self, analysis: Analysis, model: str) -> "GridBoard":
        s, bench = analysis.suite, analysis.bench
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
        verdicts = tuple((h, lookup(verdict, analysis, h)) for h in (*s.hypotheses(), *s.pooled_hypotheses())
                         if h.model == model)
        return GridBoard(pruned, quantized, joints, verdicts)

    def measurements(self, collected: "GridBoard") -> list[Measurement]:
        singles = [m for s in (*collected.pruned, *collected.quantized) for m in s.measured]
        return singles + [m for j in collected.joints for _, ms in j.measured for m in ms]

    def tables(self, board: Board, suite: Suite) -> list[Table]:
        if not has_grid(suite):
            return []
        grid = board.part(self.key)
        tables = [quantized_table(grid), pruned_table(grid, suite.quantizers), joint_table(grid),
                  verdict_table(grid, suite.noise_sigmas)]
        return tables + [t for t in (implementation_table(board),) if t is not None]

    def overview(self, boards: list[Board], suite: Suite) -> list[Table]:
        return [ranking_table(boards)] if has_grid(suite) else []

    def plots(self, suite: Suite) -> tuple[Plot, ...]:
        pixels = figure_pixels(len(suite.pruners), len(suite.quantizers))
        return tuple(Plot(kind, draw, alt, pixels) for kind, draw, alt in PLOTS) if has_grid(suite) else ()


def has_grid(suite: Suite) -> bool:
    """Whether the suite has a compression-order grid (a suite of other sections only has none, and no plots)."""
    return bool(suite.pruners and suite.quantizers and suite.ratios and suite.bits)


def stored(bench: Any, model: str, recipe: Recipe) -> tuple[Measurement, ...]:
    return tuple(bench.stored_case(Case(model, recipe, "", "")))


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
class GridBoard:
    """What the grid's tables show for one model, read from the store once."""

    pruned: tuple[Single, ...]
    quantized: tuple[Single, ...]
    joints: tuple[Joint, ...]
    verdicts: tuple[tuple[HypothesisSpec | PooledSpec, Verdict | None], ...]


@dataclass(frozen=True)
class Verdict(JudgedVerdict):
    """Hypothesis 1 for one (model, pruner, quantizer, p), or pooled over every p: its points and verdict."""

    spec: HypothesisSpec | PooledSpec
    judged: Judged

    def evidence(self) -> str:
        """The points (p, B, C_Q, C*_P, x, A ± stderr, collapsed), the trend with its bounds, the exponential fit
        and the verdict with its reason."""
        rows = [(fmt(pt.p, 3), pt.bits, fmt(pt.c_q, 3), str(pt.cer_p), fmt(pt.x, 4), fmt(pt.advantage, 4),
                 fmt(pt.stderr, 2), "collapsed" if pt.collapsed else "")
                for pt in sorted(self.judged.points, key=lambda pt: (pt.collapsed, pt.x, pt.p, pt.bits))]
        text = tabulate(rows, headers=["p", "B", "C_Q", "C*_P", "x = C*_P - C_Q", "A(Q->P)", "stderr", ""])
        return text + "\n" + judged_lines(self.judged)


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


def verdict_text(analysis: Analysis) -> str:
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


def cer_text(value: CER | None) -> str:
    return MISSING if value is None else str(value)


def quantized_table(board: GridBoard) -> Table:
    rows = tuple((compact(q.template), str(int(q.setting)), number(achieved_total(list(q.measured)), 4),
                  spread(list(q.measured)).text(), number(quant_ratio(q.setting), 4)) for q in board.quantized)
    return Table("Quantization alone (the curve each CER is read from)",
                 ("quantizer", "B", "C_Q achieved", "ppl", "CER C*_Q = C_Q"), rows)


def pruned_table(board: GridBoard, quantizers: tuple[str, ...]) -> Table:
    rows = tuple((compact(s.template), f"{s.setting:g}", number(achieved_total(list(s.measured)), 4),
                  spread(list(s.measured)).text(), *(cer_text(c) for _, c in s.cers)) for s in board.pruned)
    return Table("Pruning alone", ("pruner", "p", "C_P achieved", "ppl",
                                   *(f"CER C*_P on {compact(q)}" for q in quantizers)), rows,
                 "C*_P: the quantization ratio with the same metric, interpolated on the quantizer's curve (Def. 3); "
                 "<= / >= mark a bound outside the measured curve.")


def advantage_text(point: Point | None) -> str:
    return MISSING if point is None else f"{point.advantage:+.4g} ± {point.stderr:.2g}"


def joint_table(board: GridBoard) -> Table:
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


def verdict_table(board: GridBoard, sigmas: float) -> Table:
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


def score(value: float) -> float:
    """The higher-is-better M of a stored value, for ranking (a missing value ranks last)."""
    return -math.inf if math.isnan(value) else oriented(METRIC, value)


def ranking_rows(board: Board) -> list[tuple[str, ...]]:
    """(pruner, quantizer, order) ranked by metric within each group of equal achieved total ratio."""
    entries = []
    for j in board.part("").joints:
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


def ranking_table(boards: list[Board]) -> Table:
    return Table("Ranking at equal total compression ratio",
                 ("model", "C_P·C_Q", "rank", "pruner", "quantizer", "order", "p", "B", "ppl"),
                 tuple(row for board in boards for row in ranking_rows(board)),
                 f"Joint cases grouped by achieved C_P·C_Q rounded to {RATIO_DIGITS} decimals; rank 1 is the "
                 "lowest perplexity within its group (orders are compared only at equal achieved ratios).")


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


def implementation_table(board: Board) -> Table | None:
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


def plot_advantage(board: Board, suite: Suite, path: Path) -> None:
    """A(Q->P) against x = C*_P - C_Q, one colour and one exponential fit per p (Fig. 3; Fig. 4's grid), each point
    labelled with its B; collapsed points (hollow) sit at the edge of the range the practical points set."""
    import numpy as np
    from matplotlib import style

    with style.context("default"):
        fig, grid = panels(suite)
        for pruner, quantizer, ax in grid:
            ax.axhline(0.0, color="0.5", linewidth=0.8)
            pts = [(j.p, j.point) for j in board.part("").joints if (j.pruner, j.quantizer) == (pruner, quantizer)
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


def plot_ratio(board: Board, suite: Suite, path: Path) -> None:
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
                                   for j in board.part("").joints if (j.pruner, j.quantizer, j.p) == (pruner, quantizer, p)
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


PLOTS = (("advantage", plot_advantage, "A(Q→P) against the CER difference, exponential fit per p (Fig. 3/4)"),
         ("ratio", plot_ratio, "perplexity against the total compression ratio, both orders"))


SECTION = Grid
