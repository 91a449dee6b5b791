"""Tables and plots of stored results shared by every section (sections/): numbers as text, the cases table, a
judged test's lines, leaderboard tables and the plots' fixed geometry.

Only stored measurements are shown (nothing is computed here), so the pytest summary of an `-n 2` run, a
`pqqp run --suite` and a later look at the store all print the same numbers.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from .compress import bits_label
from .hypothesis import ExpFit, Judged, Monotonicity, Point, exponential_fit, fit_rise
from .measure import Bench, Missing
from .paths import atomic_write
from .store import Measurement
from .suite import Suite

MISSING = "missing"
PANEL_INCHES = (4.8, 3.6)
DPI = 100


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


class JudgedVerdict:
    """What a verdict with a `judged` field (a dataclass's) says: its status and the monotonicity result."""

    judged: Judged

    @property
    def status(self) -> str:
        return self.judged.verdict

    @property
    def result(self) -> Monotonicity:
        return self.judged.result


def lookup(compute: Any, *args: Any) -> Any:
    """`compute(*args)` from stored measurements, or None where one it needs is missing."""
    try:
        return compute(*args)
    except Missing:
        return None


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------------- leaderboard


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


def slug(model: str) -> str:
    """A file-name-safe name for a model: its last path part, with a hash of the whole name where it differs."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-.") or "model"
    return tail if tail == model else f"{tail}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


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


def figure_pixels(rows: int, cols: int) -> tuple[int, int]:
    """A plot's (width, height) in pixels: one fixed-size panel per pruner x quantizer."""
    return round(cols * PANEL_INCHES[0] * DPI), round(rows * PANEL_INCHES[1] * DPI)


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
