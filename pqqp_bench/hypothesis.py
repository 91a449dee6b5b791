"""The Progressive Intensity Hypothesis as pure functions over measured numbers.

Everything here follows the paper's definitions (§2-§3) and its language-model analysis (§5.2, App. D.6):

* the metric M is higher-is-better: M = -perplexity, or M = accuracy;
* the performance gap G(f1, f2) = M(f1(φ)) - M(f2(φ))                                   (Def. 2);
* compression ratios C_P = 1/(1-p) and C_Q = b_orig/bits                                  (§2, App. D.6);
* the compression equivalent ratio (CER) C*_f: the quantization ratio with the same M     (Def. 3),
  by linear interpolation on the measured quantization curve; C*_Q = C_Q;
* the order advantage A(f1->f2) = M(f2∘f1(φ)) - M(f1∘f2(φ))                              (Def. 4);
  for pruning P and quantization Q, A(Q->P) > 0 means quantize-first wins;
* Hypothesis 1 / Theorem 2: for a fixed pruning ratio, A(Q->P) is non-decreasing in the CER difference
  x = C*_P - C_Q; severe collapse lies outside the theorem's assumptions (App. D.6);
* Fig. 3 fits an exponential per pruning ratio; Table 1 / Finding 4 report interference by C_Q.

No torch, no models, no I/O: the store and the report call these on numbers they already have.
Bad input raises `PqqpError` with a one-line message naming the bad value and what is accepted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import optimize, stats

from .errors import PqqpError

BOUNDS = ("exact", "below", "above")


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise PqqpError(f"{name}={value!r} is not finite: a finite number is required")
    return value


def _integer(name: str, value: int, least: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < least:
        raise PqqpError(f"{name}={value!r}: an integer >= {least} is required")
    return int(value)


def _not_nan(name: str, value: float) -> float:
    value = float(value)
    if math.isnan(value):
        raise PqqpError(f"{name}=nan: a number (±inf allowed) is required")
    return value


# --------------------------------------------------------------------------------------------- metrics (§2)


def metric_from_ppl(ppl: float) -> float:
    """M for perplexity, made higher-is-better (§2): M = -ppl; an infinite ppl gives M = -inf."""
    ppl = _not_nan("ppl", ppl)
    if ppl <= 0:
        raise PqqpError(f"ppl={ppl!r} is not a perplexity: a positive number is required")
    return -ppl


LOWER_IS_BETTER = frozenset({"ppl", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"})
"""Metric names whose raw value is lower-is-better (the harness's `ppl`, and lm-eval's perplexity metrics, also
as the `<metric>` of `lm-eval:<task>/<metric>`); any other metric (an accuracy) is higher-is-better."""


def higher_is_better(metric: str) -> bool:
    return metric.rpartition("/")[2] not in LOWER_IS_BETTER


def oriented(metric: str, value: float) -> float:
    """The paper's higher-is-better M of a stored value (§2): -value for a perplexity, the value itself otherwise."""
    return _not_nan(metric, value) if higher_is_better(metric) else -_not_nan(metric, value)


def recovery(metric: str, value: float, dense: float) -> float:
    """The fraction of the dense model's quality kept: value/dense (higher-is-better), dense/value (perplexity)."""
    value, dense = _not_nan(metric, value), _finite(f"dense {metric}", dense)
    if value == 0 or dense == 0:
        return math.nan
    return value / dense if higher_is_better(metric) else dense / value


def gap(m1: float, m2: float) -> float:
    """Performance gap G(f1, f2) = M(f1(φ)) - M(f2(φ)) (Def. 2); G > 0 means f2 is the stronger compression."""
    value = _not_nan("m1", m1) - _not_nan("m2", m2)
    if math.isnan(value):
        raise PqqpError(f"gap of m1={float(m1)!r} and m2={float(m2)!r} is undefined: at most one may be infinite")
    return value


def advantage(m_first_then_second: float, m_second_then_first: float) -> float:
    """Order advantage A(f1->f2) = M(f2∘f1(φ)) - M(f1∘f2(φ)) (Def. 4).

    For A(Q->P) pass M(quantize first, then prune) and M(prune first, then quantize); A > 0: Q-first wins.
    """
    value = _not_nan("m_first_then_second", m_first_then_second) - _not_nan("m_second_then_first", m_second_then_first)
    if math.isnan(value):
        raise PqqpError(
            f"advantage of {float(m_first_then_second)!r} and {float(m_second_then_first)!r} is undefined: at most one may be infinite"
        )
    return value


def prune_ratio(p: float) -> float:
    """Pruning compression ratio C_P = 1/(1-p) (App. D.6), for a pruning ratio 0 <= p < 1."""
    p = _finite("p", p)
    if not 0.0 <= p < 1.0:
        raise PqqpError(f"pruning ratio p={p!r} is out of range: 0 <= p < 1 is accepted")
    return 1.0 / (1.0 - p)


def quant_ratio(bits: float, b_orig: float = 16) -> float:
    """Quantization compression ratio C_Q = b_orig/bits (§3.2: from 16 bits, 8-bit gives C_Q = 2)."""
    bits, b_orig = _finite("bits", bits), _finite("b_orig", b_orig)
    if bits <= 0 or b_orig <= 0:
        raise PqqpError(f"bits={bits!r}, b_orig={b_orig!r}: positive bit widths are required")
    return b_orig / bits


# --------------------------------------------------------------------------------------------- CER (Def. 3)


@dataclass(frozen=True)
class CER:
    """A compression equivalent ratio. `bound` says how to read `value`.

    "exact": interpolated inside the measured curve; "below": the metric beats every measured quantization,
    so the true CER is <= value (the smallest measured ratio); "above": the metric is worse than every
    measured quantization, so the true CER is >= value (the largest measured ratio).
    """

    value: float
    bound: str = "exact"

    def __post_init__(self) -> None:
        if self.bound not in BOUNDS:
            raise PqqpError(f"CER bound={self.bound!r} is unknown: one of {', '.join(BOUNDS)} is accepted")

    def __str__(self) -> str:
        return {"exact": "", "below": "<=", "above": ">="}[self.bound] + f"{self.value:.3g}"


def cer(metric: float, curve: Iterable[tuple[float, float]]) -> CER:
    """Compression equivalent ratio of a method with metric M = `metric` (Def. 3, §3.2).

    `curve` is the measured quantization curve as (C_Q, M) points in any order, e.g. bit widths 16..2 as ratios
    1..8 with C_Q = 1 the dense model. The CER is the C' where the curve's M equals `metric`, by linear
    interpolation between the two adjacent measured points sorted by ratio (the paper's example: 70% at C = 2,
    60% at C = 4, so 65% maps to 3.0). Outside the measured range the nearest end ratio comes back with a bound
    flag instead of a silent clamp. If the curve is not monotone, the first crossing walking from the smallest
    ratio upward is used. `metric` may be ±inf (a collapsed model is simply "above").
    """
    metric = _not_nan("metric", metric)
    points = [(float(c), float(m)) for c, m in curve]
    if not points:
        raise PqqpError("empty quantization curve: at least one (C_Q, M) point is required")
    for c, m in points:
        if not (math.isfinite(c) and c > 0) or not math.isfinite(m):
            raise PqqpError(f"curve point (C_Q={c!r}, M={m!r}) is invalid: a positive finite ratio and finite M are required")
    points.sort()
    ratios = [c for c, _ in points]
    if len(set(ratios)) != len(ratios):
        raise PqqpError(f"curve ratios {ratios} repeat: one M per compression ratio is accepted")
    metrics = [m for _, m in points]
    if metric > max(metrics):
        return CER(ratios[0], "below")
    if metric < min(metrics):
        return CER(ratios[-1], "above")
    if metrics[0] == metric:
        return CER(ratios[0])
    for (c0, m0), (c1, m1) in zip(points, points[1:]):
        if min(m0, m1) <= metric <= max(m0, m1):  # m0 != metric here, so m1 != m0
            return CER(c0 + (metric - m0) / (m1 - m0) * (c1 - c0))
    raise AssertionError("unreachable: metric lies within the curve's range")


def cer_of_quantization(c_q: float) -> float:
    """CER of quantization itself: C*_Q = C_Q (§3.2)."""
    return _finite("c_q", c_q)


# ------------------------------------------------------------------------------ uncertainty of A (Def. 4)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error and a 95% interval [low, high]."""

    value: float
    stderr: float
    low: float
    high: float


def _nll_array(name: str, values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise PqqpError(f"{name} has shape {array.shape}: a non-empty list of per-window NLL sums is required")
    if not np.all(np.isfinite(array)):
        raise PqqpError(f"{name} holds non-finite values ({float(array[~np.isfinite(array)][0])!r}): finite NLL sums are required")
    return array


def paired_bootstrap_advantage(
    nll_qp: Sequence[float], nll_pq: Sequence[float], tokens_per_window: int, *, resamples: int = 2000, seed: int = 0
) -> Estimate:
    """A(Q->P) = M(Q->P) - M(P->Q) with M = -ppl (Def. 4), and its paired-bootstrap uncertainty.

    `nll_qp`, `nll_pq` are per-window summed NLLs of the two orders on the SAME windows; ppl =
    exp(sum(nll) / (n_windows · tokens_per_window)). Window indices are resampled with replacement, the same
    indices for both models, so window difficulty cancels. `value` is A on the full set (not the bootstrap
    mean); `stderr` is the standard deviation (ddof=1) of the resampled A; low/high are its 2.5%/97.5%
    percentiles. Deterministic given `seed`.
    """
    qp, pq = _nll_array("nll_qp", nll_qp), _nll_array("nll_pq", nll_pq)
    if qp.size != pq.size:
        raise PqqpError(f"nll_qp has {qp.size} windows and nll_pq {pq.size}: the same windows for both are required")
    _integer("tokens_per_window", tokens_per_window, 1)
    _integer("resamples", resamples, 2)
    tokens = qp.size * int(tokens_per_window)

    def adv(sum_qp: np.ndarray | float, sum_pq: np.ndarray | float) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.exp(np.asarray(sum_pq) / tokens) - np.exp(np.asarray(sum_qp) / tokens)  # -ppl_qp - (-ppl_pq)

    value = float(adv(qp.sum(), pq.sum()))
    if not math.isfinite(value):
        raise PqqpError(f"A from mean NLLs {qp.sum() / tokens:.4g}, {pq.sum() / tokens:.4g} overflows: perplexities must be finite")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, qp.size, size=(int(resamples), qp.size))
    boot = adv(qp[index].sum(axis=1), pq[index].sum(axis=1))
    low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    stderr = float(np.std(boot, ddof=1))
    return Estimate(value, stderr, low, high)


def sample_statistic(metric: str) -> Callable[[np.ndarray], np.ndarray]:
    """M (higher-is-better) of an lm-eval metric from r = sum(value) / sum(weight) over its per-document samples.

    lm-eval logs one sample per document: a number for mean-aggregated metrics (acc: M = r) and for the
    loglikelihood `perplexity` (M = -exp(-r)); a (loglikelihood, words or bytes) pair for `word_perplexity`
    and `byte_perplexity` (M = -exp(-r)) and `bits_per_byte` (M = r / ln 2, minus the bits per byte).
    """
    name = metric.rpartition("/")[2]
    if name in ("perplexity", "word_perplexity", "byte_perplexity"):
        return lambda r: -np.exp(-r)
    if name == "bits_per_byte":
        return lambda r: r / math.log(2)
    if name in LOWER_IS_BETTER:
        raise PqqpError(f"metric {metric!r} has no per-document samples: accepted lm-eval:<task>/<metric>")
    return lambda r: r


def _sample_pairs(name: str, samples: Sequence) -> np.ndarray:
    """Per-document samples as an [n, 2] array of (value, weight); a bare number has weight 1."""
    rows = [tuple(s) if isinstance(s, (list, tuple)) else (s, 1.0) for s in samples]
    array = np.asarray(rows, dtype=float)
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0 or not np.all(np.isfinite(array)):
        raise PqqpError(f"{name}: a non-empty list of finite per-document values or (value, weight) pairs is required")
    return array


def paired_bootstrap_samples(
    metric: str, samples_qp: Sequence, samples_pq: Sequence, *, resamples: int = 2000, seed: int = 0
) -> Estimate:
    """A(Q->P) = M(Q->P) - M(P->Q) for an lm-eval metric, with its paired bootstrap over the task's documents.

    As `paired_bootstrap_advantage`, with documents in place of windows: both orders are resampled with the
    same document indices, so document difficulty cancels. Deterministic given `seed`.
    """
    qp, pq = _sample_pairs("samples_qp", samples_qp), _sample_pairs("samples_pq", samples_pq)
    if qp.shape != pq.shape:
        raise PqqpError(f"samples_qp has {len(qp)} documents and samples_pq {len(pq)}: the same documents are required")
    _integer("resamples", resamples, 2)
    statistic = sample_statistic(metric)

    def adv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return statistic(a[..., 0].sum(-1) / a[..., 1].sum(-1)) - statistic(b[..., 0].sum(-1) / b[..., 1].sum(-1))

    index = np.random.default_rng(seed).integers(0, len(qp), size=(int(resamples), len(qp)))
    boot = adv(qp[index], pq[index])
    low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    return Estimate(float(adv(qp, pq)), float(np.std(boot, ddof=1)), low, high)


def combine_seeds(estimates: list[Estimate]) -> Estimate:
    """Pool one estimate of A per calibration seed into one (uncertainty for Def. 4 / Fig. 3 error bars).

    value = mean of the values; stderr = sqrt(mean(stderr_i²)/n + s²/n), where the first term is the
    within-seed (evaluation-window) noise of the mean and s² is the sample variance (ddof=1) of the values
    across seeds (0 for a single seed); the sum is conservative since s² already holds some window noise.
    low/high = value ∓ 1.96·stderr.
    """
    if not estimates:
        raise PqqpError("no estimates to combine: at least one per-seed Estimate is required")
    values = np.array([_finite("estimate value", e.value) for e in estimates])
    errors = np.array([_finite("estimate stderr", e.stderr) for e in estimates])
    if np.any(errors < 0):
        raise PqqpError(f"negative stderr {float(errors[errors < 0][0])!r}: stderr >= 0 is required")
    n = values.size
    variance = float(np.var(values, ddof=1)) if n > 1 else 0.0
    stderr = math.sqrt(float(np.mean(errors**2)) / n + variance / n)
    value = float(np.mean(values))
    return Estimate(value, stderr, value - 1.96 * stderr, value + 1.96 * stderr)


# -------------------------------------------------------------------- Hypothesis 1 / Theorem 2 (monotonicity)


@dataclass(frozen=True)
class Point:
    """One (p, bits) pair of Fig. 3: the CER of pruning alone, C_Q, and the measured A(Q->P) ± stderr."""

    p: float
    bits: int
    c_q: float
    cer_p: CER
    advantage: float
    stderr: float
    collapsed: bool = False

    @property
    def x(self) -> float:
        """The CER difference C*_P - C_Q (Fig. 3's x-axis); a bound when `cer_p.bound` is not "exact"."""
        return self.cer_p.value - self.c_q


@dataclass(frozen=True)
class Violation:
    """A pair with x_low < x_high whose advantage drops by more than the noise tolerance."""

    x_low: float
    a_low: float
    x_high: float
    a_high: float
    drop: float
    tolerance: float


@dataclass(frozen=True)
class Monotonicity:
    """Test of A(Q->P) non-decreasing in x = C*_P - C_Q over the non-collapsed points (Theorem 2)."""

    points: tuple[Point, ...]
    excluded: tuple[Point, ...]
    violations: tuple[Violation, ...]
    spearman: float
    kendall: float
    sigmas: float = 2.0

    @property
    def holds(self) -> bool:
        return not self.violations

    @property
    def n_points(self) -> int:
        return len(self.points)

    def table(self) -> list[dict[str, Any]]:
        """Rows for printing: included points by x, then the excluded (collapsed) ones."""
        return [
            {
                "p": pt.p, "bits": pt.bits, "C_Q": pt.c_q, "C*_P": pt.cer_p.value, "C*_P bound": pt.cer_p.bound,
                "x": pt.x, "A": pt.advantage, "stderr": pt.stderr, "collapsed": pt.collapsed,
            }
            for pt in (*self.points, *self.excluded)
        ]


def _rank_correlation(kind: str, x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    result = stats.spearmanr(x, y) if kind == "spearman" else stats.kendalltau(x, y)
    return float(result[0])


def monotonicity(points: Iterable[Point], *, sigmas: float = 2.0, replicates: np.ndarray | None = None) -> Monotonicity:
    """Check Hypothesis 1 as Theorem 2 states it: A(Q->P) is non-decreasing in x = C*_P - C_Q for fixed p.

    Collapsed points are outside the theorem's assumptions (App. D.6) and are excluded but kept in the result.
    The rest are sorted by x; every pair i<j with x_i < x_j strictly and
    A_j < A_i - sigmas·sqrt(stderr_i² + stderr_j²) is a violation. Spearman and Kendall correlations of (x, A)
    are nan for fewer than 3 points or constant input. Theorem 2 holds p fixed: pass one p's points, or use
    `monotonicity_per_p`; points whose CER is a bound are kept, with the flag shown in `table()`.
    With `replicates` ([resamples, points], the joint bootstrap of `judge`, aligned with `points` as given) a
    pair's tolerance is sigmas times the spread of its own replicated difference, which keeps the correlation of
    points measured on the same windows, in place of the independent sqrt(stderr_i² + stderr_j²).
    """
    sigmas = _finite("sigmas", sigmas)
    if sigmas < 0:
        raise PqqpError(f"sigmas={sigmas!r}: a non-negative number is required")
    points = list(points)
    if replicates is not None and np.shape(replicates)[1:] != (len(points),):
        raise PqqpError(f"replicates of shape {np.shape(replicates)} for {len(points)} points: [resamples, points] is required")
    column = {id(pt): i for i, pt in enumerate(points)}
    included, excluded = [pt for pt in points if not pt.collapsed], [pt for pt in points if pt.collapsed]
    for pt in included:
        for name, value in (("advantage", pt.advantage), ("stderr", pt.stderr), ("x", pt.x)):
            _finite(f"{name} of point (p={pt.p}, bits={pt.bits})", value)
        if pt.stderr < 0:
            raise PqqpError(f"stderr={float(pt.stderr)!r} of point p={pt.p}, bits={pt.bits}: stderr >= 0 is required")
    included.sort(key=lambda pt: (pt.x, pt.p, pt.bits))
    violations = []
    for i, lo in enumerate(included):
        for hi in included[i + 1:]:
            if not lo.x < hi.x:
                continue
            if replicates is None:
                tolerance = sigmas * math.hypot(lo.stderr, hi.stderr)
            else:
                tolerance = sigmas * float(np.std(replicates[:, column[id(hi)]] - replicates[:, column[id(lo)]], ddof=1))
            if hi.advantage < lo.advantage - tolerance:
                violations.append(Violation(lo.x, lo.advantage, hi.x, hi.advantage, lo.advantage - hi.advantage, tolerance))
    x = np.array([pt.x for pt in included])
    a = np.array([pt.advantage for pt in included])
    return Monotonicity(
        tuple(included), tuple(excluded), tuple(violations),
        _rank_correlation("spearman", x, a), _rank_correlation("kendall", x, a), sigmas,
    )


def monotonicity_per_p(points: Iterable[Point], *, sigmas: float = 2.0) -> dict[float, Monotonicity]:
    """`monotonicity` for each pruning ratio p separately (Theorem 2 fixes C_P; Fig. 3 has one curve per p)."""
    groups: dict[float, list[Point]] = {}
    for pt in points:
        groups.setdefault(pt.p, []).append(pt)
    return {p: monotonicity(group, sigmas=sigmas) for p, group in sorted(groups.items())}


def is_collapsed(ppls: Iterable[float], dense_ppl: float, max_ratio: float) -> bool:
    """Severe collapse (App. D.6, outside the well-designed-compression assumption of §4).

    True when any of `ppls` is non-finite or exceeds max_ratio · dense_ppl.
    """
    dense_ppl, max_ratio = _finite("dense_ppl", dense_ppl), _finite("max_ratio", max_ratio)
    if dense_ppl <= 0 or max_ratio <= 0:
        raise PqqpError(f"dense_ppl={dense_ppl!r}, max_ratio={max_ratio!r}: positive numbers are required")
    limit = max_ratio * dense_ppl
    return any(not math.isfinite(float(v)) or float(v) > limit for v in ppls)


def is_collapsed_metric(metric: str, values: Iterable[float], dense: float, max_ratio: float) -> bool:
    """`is_collapsed` for any metric: a value is collapsed where it keeps less than 1/max_ratio of the dense
    model's quality (`recovery`), which for perplexity is exactly ppl > max_ratio · dense."""
    values = list(values)
    if not higher_is_better(metric):
        return is_collapsed(values, dense, max_ratio)
    _finite("dense", dense)
    return any(not math.isfinite(float(v)) or not recovery(metric, v, dense) >= 1.0 / max_ratio for v in values)


# ----------------------------------------------------------------------------------- Fig. 3 exponential fit


@dataclass(frozen=True)
class ExpFit:
    """y = a·exp(b·x) + c fitted to one pruning ratio's points (Fig. 3), with its coefficient of determination."""

    a: float
    b: float
    c: float
    r2: float

    def predict(self, x: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
        values = self.a * np.exp(self.b * np.asarray(x, dtype=float)) + self.c
        return float(values) if np.ndim(values) == 0 else values


def _exp_model(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.exp(b * x) + c


def _initial_guess(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """For fixed b the model is linear in (a, c): scan b over a range scaled to x and keep the best LSQ fit."""
    scale = float(np.ptp(x))
    best = (math.inf, 0.0, 1.0, 0.0)
    for b in np.concatenate([-np.geomspace(20, 0.05, 40), np.geomspace(0.05, 20, 40)]) / scale:
        design = np.column_stack([np.exp(b * (x - x.min())), np.ones_like(x)])
        if not np.all(np.isfinite(design)):
            continue
        (a, c), *_ = np.linalg.lstsq(design, y, rcond=None)
        sse = float(np.sum((design @ np.array([a, c]) - y) ** 2))
        if sse < best[0]:
            best = (sse, float(a) * math.exp(-b * x.min()), float(b), float(c))
    return best[1], best[2], best[3]


def exponential_fit(x: Sequence[float], y: Sequence[float]) -> ExpFit | None:
    """Fit y = a·exp(b·x) + c, the per-p trend curve of Fig. 3 (§5.2), with scipy's curve_fit.

    Returns None (never raises from the fit) when there are fewer than 3 points, fewer than 3 distinct x, or
    the optimiser fails or gives non-finite parameters. Mismatched lengths or non-finite input raise PqqpError.
    """
    xs, ys = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if xs.size != ys.size:
        raise PqqpError(f"x has {xs.size} values and y {ys.size}: equal lengths are required")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise PqqpError("x or y holds a non-finite value: finite numbers are required (drop collapsed points first)")
    if xs.size < 3 or np.unique(xs).size < 3:
        return None
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            params, _ = optimize.curve_fit(_exp_model, xs, ys, p0=_initial_guess(xs, ys), maxfev=20000)
    except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError):
        return None
    a, b, c = (float(v) for v in params)
    if not all(math.isfinite(v) for v in (a, b, c)):
        return None
    with np.errstate(all="ignore"):
        residual = float(np.sum((_exp_model(xs, a, b, c) - ys) ** 2))
    total = float(np.sum((ys - ys.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else math.nan)
    return ExpFit(a, b, c, r2)


# --------------------------------------------------------------------------- interference (Table 1, Finding 4)

InterferenceRow = tuple[float, int, str, float, "bool | None"]
"""(C_Q, bits, pruner, A(Q->P), same_structure): same_structure is True when no pruned unit changes between
the two orders (known for structured pruning), False when some do, None when unknown."""

LABEL = "C_Q (B_Q)"


def interference_table(rows: Iterable[InterferenceRow]) -> list[dict[str, Any]]:
    """Table 1 for printing: one row per C_Q (ascending) labelled "C_Q (B_Q)", one A(Q->P) column per pruner.

    Missing cells are None; a repeated (C_Q, bits, pruner) raises.
    """
    cells: dict[tuple[float, int], dict[str, float]] = {}
    pruners: list[str] = []
    for c_q, bits, pruner, adv, _same in rows:
        if pruner == LABEL:
            raise PqqpError(f"pruner name {pruner!r} is reserved: any other name is accepted")
        row = cells.setdefault((float(c_q), int(bits)), {})
        if pruner in row:
            raise PqqpError(f"A for pruner {pruner!r} at C_Q={float(c_q):.4g}, bits={bits} given twice: one value per cell is accepted")
        row[pruner] = float(adv)
        if pruner not in pruners:
            pruners.append(pruner)
    return [
        {LABEL: f"{c_q:.2f} ({bits})", **{name: cells[(c_q, bits)].get(name) for name in pruners}}
        for c_q, bits in sorted(cells)
    ]


def structured_zero_interference(advantages_with_flags: Iterable[InterferenceRow]) -> list[InterferenceRow]:
    """Entries contradicting Finding 4 (§5.2): same_structure is True (no unit changes assignment between the
    orders, so no interference) yet A(Q->P) is not exactly 0.0."""
    return [row for row in advantages_with_flags if row[4] is True and float(row[3]) != 0.0]


# ------------------------------------------------------------------- trend tests: three verdicts with power
#
# Hypothesis 1 says A(Q->P) rises with x. A test of it must be able to come out three ways on real data.
#
# * One bootstrap world per test: every point of a test is measured on the same evaluation windows (or lm-eval
#   documents), so one resample of window indices, shared by all points and both orders, gives one replicate of
#   every A at once (with several calibration seeds, the seeds are resampled too). This keeps the points'
#   correlation (a hard window is hard for every recipe), which independent per-point errors would count as noise.
# * The trend is the least-squares slope of A on x. It is continuous (Spearman's rho over 3-5 points takes a
#   handful of values, so its bootstrap quantiles are coarse) and has a standard error from the replicates, hence
#   a smallest detectable trend. Spearman's rho is shown beside it with its bootstrap interval.
# * Bounds are normal-theory with the bootstrap standard error, made honest for few windows: the bootstrap
#   variance is inflated by n/(n-1) and Student's t with n-1 degrees of freedom replaces z (n windows). Plain
#   percentile bounds, tried first on the simulated flat trends of tests/test_verdicts.py (300 tests of 4 points
#   on 16 windows), called 12% of them falling at a nominal one-sided 5%; these bounds keep both errors under 5%
#   (measured there).
# * supported: the slope's one-sided lower bound at `level` (5%) is above 0, and no pair breaks monotonicity;
#   violated: the slope's one-sided upper bound at level/2 is below 0, or some pair i < j (by x) drops by more
#   than c standard errors of that pair's own replicated difference, c = max(noise_sigmas, the Bonferroni
#   critical value t(1 - level/(2m)) over the m pairs compared). The two halves keep the chance of calling a
#   flat trend violated at most `level`, as the chance of calling it supported is;
# * inconclusive: neither; it states the smallest slope these data detect with 80% power at `level`:
#   (t(1 - level) + z(0.8)) x stderr(slope).
#
# x is taken as measured (the CER of each point): within one pruning ratio the order of x is that of C_Q, which
# has no noise; across pruning ratios (the pooled view) the noise of C*_P is left out, a stated simplification.

SUPPORTED, VIOLATED, INCONCLUSIVE = "supported", "violated", "inconclusive"
VERDICTS = (SUPPORTED, VIOLATED, INCONCLUSIVE)
POWER = 0.8
"""The power at which `Trend.detectable` is stated."""


@dataclass(frozen=True)
class Paired:
    """One point's two recipes on evaluation units shared by every point of its test.

    Per calibration seed, an [units, 2] array of (value, weight) per unit for each recipe; the metric is
    M = statistic(sum(value) / sum(weight)). Perplexity: a window's summed NLL and its token count, with
    M = -exp(r) (`perplexity_pair`); lm-eval: a document's sample (`sample_pair`). A = M(first) - M(second).
    """

    first: tuple[np.ndarray, ...]
    second: tuple[np.ndarray, ...]
    statistic: Callable[[np.ndarray], np.ndarray]

    @property
    def units(self) -> int:
        return len(self.first[0])

    def advantage(self, index: np.ndarray | None = None, seeds: np.ndarray | None = None) -> np.ndarray:
        """A on the full data ([1]: the mean over seeds), or per bootstrap replicate: `index` [R, units] resamples
        the units, `seeds` [R, S] (or None) the seeds; a point with fewer seeds takes each draw modulo its count."""
        per_seed = []
        for a, b in zip(self.first, self.second):
            if index is not None:
                a, b = a[index], b[index]
            with np.errstate(invalid="ignore"):  # both orders overflowed: inf - inf is nan, as a collapse
                per_seed.append(np.atleast_1d(self.metric(a) - self.metric(b)))
        values = np.stack(per_seed, axis=-1)  # [R or 1, seeds]
        if seeds is None or index is None:
            return values.mean(axis=1)
        return np.take_along_axis(values, seeds % values.shape[1], axis=1).mean(axis=1)

    def metric(self, units: np.ndarray) -> np.ndarray:
        """M of one recipe from its [..., units, 2] (value, weight) array: statistic(sum(value) / sum(weight))."""
        with np.errstate(over="ignore", invalid="ignore"):
            return self.statistic(units[..., 0].sum(-1) / units[..., 1].sum(-1))

    def metrics(self) -> tuple[float, float]:
        """M(first) and M(second) on the full data, each the mean over seeds."""
        return (float(np.mean([self.metric(s) for s in self.first])),
                float(np.mean([self.metric(s) for s in self.second])))


def _neg_exp(r: np.ndarray) -> np.ndarray:
    return -np.exp(r)


def perplexity_pair(first: Sequence[Sequence[float]], second: Sequence[Sequence[float]], tokens_per_window: int) -> Paired:
    """A `Paired` of per-seed per-window summed NLLs (M = -ppl), each window scoring `tokens_per_window` tokens."""
    _integer("tokens_per_window", tokens_per_window, 1)

    def arrays(name: str, per_seed: Sequence[Sequence[float]]) -> tuple[np.ndarray, ...]:
        out = []
        for nll in per_seed:
            values = _nll_array(name, nll)
            out.append(np.column_stack([values, np.full(values.size, float(tokens_per_window))]))
        return tuple(out)

    return _checked(arrays("first", first), arrays("second", second), _neg_exp)


def sample_pair(metric: str, first: Sequence[Sequence], second: Sequence[Sequence]) -> Paired:
    """A `Paired` of per-seed lm-eval samples (one per document) of `metric` (see `sample_statistic`)."""
    return _checked(tuple(_sample_pairs("first", s) for s in first), tuple(_sample_pairs("second", s) for s in second),
                    sample_statistic(metric))


def _checked(first: tuple[np.ndarray, ...], second: tuple[np.ndarray, ...], statistic: Callable) -> Paired:
    if not first or len(first) != len(second):
        raise PqqpError(f"{len(first)} seed(s) for the first recipe and {len(second)} for the second: the same "
                        f"non-zero number is required")
    sizes = {len(a) for a in (*first, *second)}
    if len(sizes) != 1:
        raise PqqpError(f"evaluation units per seed and recipe differ ({sorted(sizes)}): the same windows or documents "
                        f"for every measurement are required")
    return Paired(first, second, statistic)


def bootstrap_advantages(pairs: Sequence[Paired], *, resamples: int = 2000, seed: int = 0,
                         kernel_noise: float = 0.0) -> np.ndarray:
    """[resamples, points] replicates of every point's A from one shared resampling of units (and seeds).

    All points must be measured on the same number of units (the same windows). Deterministic given `seed`.
    `kernel_noise` k (relative) adds what another machine's CPU kernels would change (benchmarks/kernel_spread.py:
    the quantizers round last-bit differences differently): each order's metric M gets an independent normal draw
    of sd k·|M| per replicate, so A gets k·hypot(M1, M2), scaled by sqrt((n-1)/n) so that `inflated_stderr` gives it
    back exactly.
    """
    _integer("resamples", resamples, 2)
    if not pairs:
        return np.zeros((int(resamples), 0))
    units = {p.units for p in pairs}
    if len(units) != 1:
        raise PqqpError(f"the points were evaluated on different numbers of units ({sorted(units)}): one shared set of "
                        f"windows or documents is required for a joint test")
    rng = np.random.default_rng(seed)
    n = units.pop()
    index = rng.integers(0, n, size=(int(resamples), n))
    n_seeds = max(len(p.first) for p in pairs)
    seeds = rng.integers(0, n_seeds, size=(int(resamples), n_seeds)) if n_seeds > 1 else None
    replicates = np.column_stack([p.advantage(index, seeds) for p in pairs])
    if kernel_noise:
        spread = np.array([kernel_noise * math.hypot(*p.metrics()) for p in pairs]) * math.sqrt((n - 1) / n)
        replicates = replicates + rng.standard_normal(replicates.shape) * spread
    return replicates


def inflated_stderr(replicates: np.ndarray, units: int) -> np.ndarray:
    """The bootstrap standard error of each column, inflated by sqrt(n/(n-1)) for n resampled units."""
    if units < 2:
        raise PqqpError(f"units={units!r}: at least 2 evaluation windows or documents are required for an error")
    return np.std(replicates, axis=0, ddof=1) * math.sqrt(units / (units - 1))


@dataclass(frozen=True)
class Trend:
    """The least-squares slope of A on x and Spearman's rho over one test's points.

    `slope_low` is the one-sided lower bound at `level`, `slope_high` the one-sided upper bound at level/2
    (Student's t on `units` - 1 degrees of freedom and the inflated bootstrap stderr); Spearman's bounds are
    the `level` and 1 - `level` quantiles of its replicates.
    """

    n_points: int
    units: int
    slope: float
    slope_stderr: float
    spearman: float
    spearman_low: float
    spearman_high: float
    level: float

    def t(self, level: float) -> float:
        return float(stats.t.ppf(1 - level, self.units - 1))

    @property
    def slope_low(self) -> float:
        return self.slope - self.t(self.level) * self.slope_stderr

    @property
    def slope_high(self) -> float:
        return self.slope + self.t(self.level / 2) * self.slope_stderr

    @property
    def detectable(self) -> float:
        """The smallest slope the one-sided test at `level` detects with probability `POWER` on these data."""
        return (self.t(self.level) + float(stats.norm.ppf(POWER))) * self.slope_stderr


def _slopes(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    centred = x - x.mean()
    return (a - a.mean(axis=-1, keepdims=True)) @ centred / float(centred @ centred)


def _spearman_rows(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Spearman's rho of x with each row of `a` (average ranks for ties; nan for a constant row)."""
    rx = stats.rankdata(x)
    ra = stats.rankdata(a, axis=-1)
    rx, ra = rx - rx.mean(), ra - ra.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra @ rx) / np.sqrt((ra * ra).sum(axis=-1) * float(rx @ rx))


def _level(level: float) -> float:
    level = _finite("level", level)
    if not 0 < level < 0.5:
        raise PqqpError(f"level={level!r}: a one-sided test level 0 < level < 0.5 is required")
    return level


def trend_test(x: Sequence[float], values: Sequence[float], replicates: np.ndarray, units: int, *,
               level: float = 0.05) -> Trend | None:
    """The trend of A (`values`, the full-data estimates) in x, its error from `replicates` [R, points] of a
    bootstrap over `units` windows or documents. None for fewer than 2 points or a constant x."""
    level = _level(level)
    xs, a, rep = np.asarray(x, dtype=float), np.asarray(values, dtype=float), np.asarray(replicates, dtype=float)
    if rep.ndim != 2 or rep.shape[1] != xs.size or a.size != xs.size:
        raise PqqpError(f"replicates of shape {rep.shape} for {xs.size} x and {a.size} values: [resamples, points] is required")
    if xs.size < 2 or np.ptp(xs) == 0:
        return None
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(a)) and np.all(np.isfinite(rep))):
        raise PqqpError("x, A or their replicates hold a non-finite value: leave collapsed points out of the trend")
    slopes = _slopes(xs, rep)
    rhos = _spearman_rows(xs, rep)
    rho_low, rho_high = (float(v) for v in np.nanquantile(rhos, [level, 1 - level])) if np.any(np.isfinite(rhos)) \
        else (math.nan, math.nan)
    return Trend(xs.size, int(units), float(_slopes(xs, a[None, :])[0]), float(inflated_stderr(slopes[:, None], units)[0]),
                 float(_spearman_rows(xs, a[None, :])[0]), rho_low, rho_high, level)


def break_sigmas(sigmas: float, pairs: int, units: int, level: float) -> float:
    """The standard errors a pair's drop must exceed to violate monotonicity: at least `sigmas`, and at least the
    Bonferroni critical value t(1 - level/(2·pairs)) on units - 1 degrees of freedom (see the section's comment)."""
    if pairs < 1:
        return sigmas
    return max(sigmas, float(stats.t.ppf(1 - _level(level) / (2 * pairs), units - 1)))


@dataclass(frozen=True)
class Decision:
    """One of `VERDICTS` and the reason, with the figures it rests on."""

    verdict: str
    reason: str


def decide(result: Monotonicity, trend: Trend | None) -> Decision:
    """Supported, violated or inconclusive (see the section's comment): a break beyond noise or a slope whose
    upper bound is below 0 violates; a slope whose lower bound is above 0 supports; otherwise inconclusive."""
    if result.violations:
        v = max(result.violations, key=lambda v: v.drop - v.tolerance)
        return Decision(VIOLATED, f"A drops from {v.a_low:.4g} at x = {v.x_low:.3g} to {v.a_high:.4g} at x = "
                                  f"{v.x_high:.3g}: by {v.drop:.3g}, beyond {result.sigmas:.3g} sigma = {v.tolerance:.3g}")
    if trend is None:
        return Decision(INCONCLUSIVE, f"{result.n_points} point(s) in the practical regime with distinct x: a trend "
                                      f"needs at least 2")
    bound = f"one-sided {1 - trend.level:.0%}"
    if trend.slope_high < 0:
        return Decision(VIOLATED, f"A falls with x: slope {trend.slope:.3g}, one-sided {1 - trend.level / 2:.1%} upper bound "
                                  f"{trend.slope_high:.3g} < 0")
    if trend.slope_low > 0:
        return Decision(SUPPORTED, f"A rises with x: slope {trend.slope:.3g}, {bound} lower bound {trend.slope_low:.3g} "
                                   f"> 0, and no pair drops beyond {result.sigmas:.3g} sigma")
    return Decision(INCONCLUSIVE, f"slope {trend.slope:.3g}: its lower bound {trend.slope_low:.3g} is not above 0 nor "
                                  f"its upper bound {trend.slope_high:.3g} below 0; the smallest slope these data detect "
                                  f"({POWER:.0%} power, {trend.level:.0%} level) is {trend.detectable:.3g}")


@dataclass(frozen=True)
class Judged:
    """A test's points (stderr from the joint replicates), its monotonicity check, trend and decision."""

    points: tuple[Point, ...]
    result: Monotonicity
    trend: Trend | None
    decision: Decision
    replicates: np.ndarray = field(compare=False, repr=False, default_factory=lambda: np.zeros((0, 0)))
    """[resamples, points] bootstrap replicates of every point's A (nan for a collapsed point)."""

    @property
    def verdict(self) -> str:
        return self.decision.verdict


def judge(points: Sequence[Point], pairs: Sequence[Paired | None], *, sigmas: float = 2.0, resamples: int = 2000,
          seed: int = 0, level: float = 0.05, kernel_noise: float = 0.0) -> Judged:
    """Judge one test: A non-decreasing in x (Theorem 2) with the three verdicts of this section.

    `pairs[i]` holds point i's evaluation units; None where A is exactly 0 by construction (a recipe compared
    with itself) or the point collapsed. Collapsed points are shown and not judged (App. D.6). `kernel_noise`:
    `bootstrap_advantages`.
    """
    points, sigmas = list(points), _finite("sigmas", sigmas)
    if sigmas < 0:
        raise PqqpError(f"sigmas={sigmas!r}: a non-negative number is required")
    if len(pairs) != len(points):
        raise PqqpError(f"{len(pairs)} paired measurements for {len(points)} points: one per point is required")
    judged = [i for i, pt in enumerate(points) if not pt.collapsed]
    with_data = [i for i in judged if pairs[i] is not None]
    boot = bootstrap_advantages([pairs[i] for i in with_data], resamples=resamples, seed=seed, kernel_noise=kernel_noise)
    units = pairs[with_data[0]].units if with_data else 2
    replicates = np.full((int(resamples), len(points)), math.nan)
    replicates[:, judged] = 0.0
    replicates[:, with_data] = boot
    errors = inflated_stderr(replicates, units)
    points = [replace(pt, stderr=float(errors[i])) if i in with_data else pt for i, pt in enumerate(points)]
    included = sorted((points[i].x for i in judged))
    compared = sum(a < b for k, a in enumerate(included) for b in included[k + 1:])
    result = monotonicity(points, sigmas=break_sigmas(sigmas, compared, units, level),
                          replicates=replicates * math.sqrt(units / (units - 1)))
    tested = trend_test([points[i].x for i in judged], [points[i].advantage for i in judged], replicates[:, judged],
                        units, level=level)
    return Judged(tuple(points), result, tested, decide(result, tested), replicates)


@dataclass(frozen=True)
class FitRise:
    """Fig. 3's exponential fit over a test's points and how much it rises over the measured x range, with the
    rise's bootstrap interval (the fit redone on replicates)."""

    fit: ExpFit
    rise: float
    low: float
    high: float
    fits: int


def fit_rise(judged: Judged, *, replicates: int = 200, level: float = 0.05) -> FitRise | None:
    """The exponential fit of A on x over the judged (not collapsed) points, with the [level, 1 - level] interval
    of its rise A_fit(x_max) - A_fit(x_min) over up to `replicates` bootstrap rows. None without a fit."""
    judged_at = [i for i, pt in enumerate(judged.points) if not pt.collapsed]
    x = np.array([judged.points[i].x for i in judged_at])
    a = np.array([judged.points[i].advantage for i in judged_at])
    fit = exponential_fit(x, a)
    if fit is None:
        return None
    ends = [float(x.min()), float(x.max())]
    rises = []
    for row in judged.replicates[:replicates, judged_at]:
        refit = exponential_fit(x, row)
        if refit is not None:
            low_end, high_end = refit.predict(ends)
            rises.append(high_end - low_end)
    low, high = (float(v) for v in np.quantile(rises, [level, 1 - level])) if rises else (math.nan, math.nan)
    start, end = fit.predict(ends)
    return FitRise(fit, float(end - start), low, high, len(rises))
