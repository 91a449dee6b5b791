"""The `pipelines` section (paper §5.4, Figs. 7-10): families of general pipelines, A(first -> second) against each
family's intensity gap x (the families are written and parsed in pipelines.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..analysis import Analysis
from ..hypothesis import CER, Judged, Point, is_collapsed_metric
from ..measure import Missing
from ..pipelines import Pipeline, pipelines_section
from ..report import DPI, MISSING, JudgedVerdict, Table, figure_pixels, fmt, judged_lines, lookup, mean, number, save, short_model
from ..spec import Recipe
from ..suite import Case, Suite, model_id, short
from .base import Board, Plot, Section


@dataclass(frozen=True)
class PipelineSpec:
    """One family of the `pipelines` section on one model: A(first -> second) against x."""

    suite: Suite
    model: str
    family: Pipeline

    @property
    def id(self) -> str:
        return f"{model_id(self.model)}-{self.family.name}"


@dataclass(frozen=True)
class Pipelines(Section):
    """The suite's pipeline families."""

    key = "pipelines"
    families: tuple[Pipeline, ...] = ()

    @classmethod
    def parse(cls, value: Any) -> "Pipelines | None":
        """`pipelines: {family: {first, second, points, x, figure}, ...}` (null or empty: none)."""
        if isinstance(value, Pipelines):
            return value
        families = pipelines_section(value)
        return cls(families) if families else None

    def cases(self, suite: Suite, model: str) -> list[Case]:
        return [Case(model, recipe, "pipeline", f"{family.name}-{short(recipe)}")
                for family in self.families for recipe in family.recipes()]

    def specs(self, suite: Suite) -> list[PipelineSpec]:
        return [PipelineSpec(suite, m, f) for m in suite.models for f in self.families]

    def tests(self, suite: Suite) -> dict[str, list]:
        return {"pqqp_pipeline": self.specs(suite)}

    def report(self, analysis: Analysis) -> str:
        parts = []
        for spec in self.specs(analysis.suite):
            try:
                v = pipeline_verdict(analysis, spec)
            except Missing:
                continue
            parts.append(f"Pipeline {spec.id}: {v.status}\n{v.evidence()}")
        return "\n\n".join(parts)

    def collect(self, analysis: Analysis, model: str) -> tuple[tuple[PipelineSpec, "PipelineVerdict | None"], ...]:
        return tuple((spec, lookup(pipeline_verdict, analysis, spec)) for spec in self.specs(analysis.suite)
                     if spec.model == model)

    def tables(self, board: Board, suite: Suite) -> list[Table]:
        tables = []
        for spec, v in board.part(self.key):
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

    def plots(self, suite: Suite) -> tuple[Plot, ...]:
        return (Plot("pipelines", plot_pipelines, "A(first→second) against each family's intensity gap x (§5.4)",
                     figure_pixels(1, len(self.families))),)


def pipeline_points(analysis: Analysis, spec: PipelineSpec) -> list[tuple[Point, dict]]:
    """The family's points as Fig. 3-style points with x the family's intensity gap (pipelines.py)."""
    dense = analysis.mean_value(spec.model, Recipe(()))
    points = []
    for pt in spec.family.points:
        estimate, paired, first, second = analysis.compare(spec.model, pt.first, pt.second)
        collapsed = is_collapsed_metric(analysis.suite.metric, first + second, dense, analysis.suite.max_ppl_ratio)
        point = Point(0.0, 0, 0.0, CER(pt.x), estimate.value, estimate.stderr, collapsed)
        alone = [(str(r), analysis.mean_value(spec.model, r)) for r in pt.alone]
        points.append((point, {"first": first, "second": second, "dense": dense, "label": pt.label,
                               "estimate": estimate, "paired": paired, "alone": alone}))
    return points


@dataclass(frozen=True)
class PipelineVerdict(JudgedVerdict):
    """The paper's direction for one family: A(first -> second) non-decreasing in x, with the three verdicts."""

    spec: PipelineSpec
    judged: Judged
    rows: tuple[tuple, ...]  # (label, x, metric first, metric second, A, stderr, collapsed, alone text)

    def evidence(self) -> str:
        metric = self.spec.suite.metric
        f = self.spec.family
        head = (f"{f.figure + ': ' if f.figure else ''}A(first -> second) = M(first) - M(second) against x = {f.x_label}; "
                f"first = the weaker stage earlier")
        table = tabulate([(label, fmt(x, 4), fmt(a_first, 5), fmt(a_second, 5), fmt(a, 4), fmt(se, 2),
                           "collapsed" if c else "", alone) for label, x, a_first, a_second, a, se, c, alone in self.rows],
                         headers=["point", "x", f"{metric} first", f"{metric} second", "A", "stderr", "", "alone"])
        return f"{head}\n{table}\n{judged_lines(self.judged)}"


def pipeline_verdict(analysis: Analysis, spec: PipelineSpec) -> PipelineVerdict:
    points = pipeline_points(analysis, spec)
    judged = analysis.judge([pt for pt, _ in points], [d["paired"] for _, d in points])
    rows = tuple((d["label"], pt.x, mean(d["first"]), mean(d["second"]), pt.advantage, pt.stderr, pt.collapsed,
                  "; ".join(f"{r} {fmt(v, 5)}" for r, v in d["alone"]))
                 for pt, (_, d) in zip(judged.points, points))
    return PipelineVerdict(spec, judged, rows)


def plot_pipelines(board: Board, suite: Suite, path: Path) -> None:
    """A(first -> second) against x, one panel per family (Figs. 7-10's layout); hollow: collapsed."""
    from matplotlib import style
    from matplotlib.figure import Figure

    width, height = figure_pixels(1, len(suite.section("pipelines").families))
    with style.context("default"):
        fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
        axes = fig.subplots(1, len(suite.section("pipelines").families), squeeze=False)[0]
        for ax, (spec, v) in zip(axes, board.part("pipelines")):
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


SECTION = Pipelines
