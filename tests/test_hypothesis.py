"""The hypothesis layer on hand-made numbers: CER (Def. 3), order advantage (Def. 4) and its uncertainty,
monotonicity (Hypothesis 1 / Theorem 2), collapse (App. D.6), the Fig. 3 fit, and Table 1 interference."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from pqqp_bench.errors import PqqpError
from pqqp_bench.hypothesis import (
    CER,
    Estimate,
    Point,
    Violation,
    advantage,
    cer,
    cer_of_quantization,
    combine_seeds,
    exponential_fit,
    gap,
    interference_table,
    is_collapsed,
    metric_from_ppl,
    monotonicity,
    monotonicity_per_p,
    paired_bootstrap_advantage,
    prune_ratio,
    quant_ratio,
    structured_zero_interference,
)

# A perplexity-like quantization curve from 16 bits down to 2: ratios 1, 2, 4, 8 with M = -ppl.
PPL_CURVE = [(quant_ratio(b), metric_from_ppl(ppl)) for b, ppl in [(16, 5.0), (8, 5.1), (4, 6.0), (2, 20.0)]]


# ---------------------------------------------------------------------------------------------- CER


def test_cer_reproduces_the_papers_worked_example() -> None:
    result = cer(0.65, [(2.0, 0.70), (4.0, 0.60)])
    assert result.bound == "exact" and result.value == pytest.approx(3.0)


def test_cer_at_a_measured_point_is_that_ratio() -> None:
    assert cer(-6.0, PPL_CURVE) == CER(4.0, "exact")
    assert cer(-5.0, PPL_CURVE) == CER(1.0, "exact")
    assert cer(-20.0, PPL_CURVE) == CER(8.0, "exact")


def test_cer_interpolates_linearly_on_a_negative_perplexity_metric() -> None:
    # Between (4, -6) and (8, -20): -13 is halfway in M, so halfway in ratio.
    assert cer(metric_from_ppl(13.0), PPL_CURVE) == CER(6.0, "exact")
    assert cer_of_quantization(4.0) == 4.0


def test_cer_outside_the_measured_range_returns_the_end_with_a_bound_flag() -> None:
    better = cer(0.75, [(2.0, 0.70), (4.0, 0.60)])
    worse = cer(0.50, [(2.0, 0.70), (4.0, 0.60)])
    assert better == CER(2.0, "below") and str(better) == "<=2"
    assert worse == CER(4.0, "above") and str(worse) == ">=4"
    assert cer(metric_from_ppl(math.inf), PPL_CURVE) == CER(8.0, "above")


def test_cer_does_not_depend_on_the_curve_input_order() -> None:
    ascending = sorted(PPL_CURVE)
    descending = ascending[::-1]
    shuffled = ascending[:]
    random.Random(3).shuffle(shuffled)
    results = {cer(-5.55, curve) for curve in (ascending, descending, shuffled)}
    assert results == {CER(3.0, "exact")}  # between (2, -5.1) and (4, -6.0)


def test_cer_on_a_non_monotone_curve_takes_the_first_crossing_from_the_smallest_ratio() -> None:
    curve = [(4.0, 0.50), (1.0, 0.70), (3.0, 0.65), (2.0, 0.60)]
    assert cer(0.62, curve).value == pytest.approx(1.8)  # on (1, .70)-(2, .60), not (2, .60)-(3, .65)


# ---------------------------------------------------------------------------- gap, advantage, ratios


def test_metric_gap_and_advantage_signs_follow_the_definitions() -> None:
    assert metric_from_ppl(12.5) == -12.5
    m_q, m_p = metric_from_ppl(6.0), metric_from_ppl(7.0)
    assert gap(m_q, m_p) == pytest.approx(1.0)  # G(Q, P) > 0: P is the stronger compression
    assert gap(0.70, 0.60) == pytest.approx(0.10)  # accuracy: higher is better as is
    # A(Q->P) = M(quantize first, then prune) - M(prune first, then quantize).
    m_qp, m_pq = metric_from_ppl(6.1), metric_from_ppl(6.3)
    assert advantage(m_qp, m_pq) == pytest.approx(0.2) and advantage(m_qp, m_pq) > 0
    assert advantage(m_pq, m_qp) == pytest.approx(-0.2)


def test_compression_ratios() -> None:
    assert prune_ratio(0.0) == 1.0 and prune_ratio(0.5) == 2.0 and prune_ratio(0.75) == 4.0
    assert quant_ratio(16) == 1.0 and quant_ratio(4) == 4.0 and quant_ratio(9) == pytest.approx(1.78, abs=5e-3)
    assert quant_ratio(4, b_orig=32) == 8.0


# ------------------------------------------------------------------------------ uncertainty of A


def test_bootstrap_of_identical_models_is_exactly_zero() -> None:
    nll = [float(v) for v in np.random.default_rng(1).uniform(100, 300, size=40)]
    estimate = paired_bootstrap_advantage(nll, nll, 64, resamples=500)
    assert estimate == Estimate(0.0, 0.0, 0.0, 0.0)


def test_bootstrap_of_a_constant_shift_gives_the_exact_advantage_and_no_spread() -> None:
    # Every window: P->Q has mean NLL 2.0 per token, Q->P 1.9, so ppl e^2 vs e^1.9 on every resample.
    estimate = paired_bootstrap_advantage([19.0] * 50, [20.0] * 50, 10, resamples=300)
    expected = math.exp(2.0) - math.exp(1.9)
    assert estimate.value == pytest.approx(expected, rel=1e-12)
    assert estimate.stderr == pytest.approx(0.0, abs=1e-12)
    assert estimate.low == pytest.approx(expected, rel=1e-12) and estimate.high == pytest.approx(expected, rel=1e-12)


def test_bootstrap_on_noisy_windows_is_paired_bracketed_and_seeded() -> None:
    rng = np.random.default_rng(0)
    pq = rng.uniform(150, 250, size=60)  # windows differ a lot in difficulty...
    qp = pq - 2.0 + rng.normal(0, 3.0, size=60)  # ...but the two orders differ little on each one
    estimate = paired_bootstrap_advantage(qp, pq, 100, resamples=1000, seed=7)
    full = math.exp(pq.sum() / 6000) - math.exp(qp.sum() / 6000)
    assert estimate.value == pytest.approx(full, rel=1e-12)  # the full-set A, not the bootstrap mean
    assert estimate.value > 0 and estimate.stderr > 0
    assert estimate.low <= estimate.value <= estimate.high
    assert paired_bootstrap_advantage(qp, pq, 100, resamples=1000, seed=7) == estimate
    assert paired_bootstrap_advantage(qp, pq, 100, resamples=1000, seed=8) != estimate
    # Pairing cancels window difficulty: the spread is far smaller than the spread of either ppl alone.
    assert estimate.stderr < 0.5 * np.std(np.exp(pq / 100)) / math.sqrt(60)


def test_combine_seeds_follows_the_documented_formula() -> None:
    combined = combine_seeds([Estimate(1.0, 0.3, 0.0, 0.0), Estimate(3.0, 0.4, 0.0, 0.0)])
    # sqrt(mean(0.09, 0.16)/2 + var_ddof1(1, 3)/2) = sqrt(0.0625 + 1.0)
    assert combined.value == 2.0
    assert combined.stderr == pytest.approx(math.sqrt(1.0625))
    assert combined.low == pytest.approx(2.0 - 1.96 * math.sqrt(1.0625))
    assert combined.high == pytest.approx(2.0 + 1.96 * math.sqrt(1.0625))
    single = combine_seeds([Estimate(1.0, 0.5, -9.0, 9.0)])
    assert single == Estimate(1.0, 0.5, pytest.approx(1.0 - 0.98), pytest.approx(1.0 + 0.98))


# ----------------------------------------------------------------------------------- monotonicity


def point(x: float, a: float, se: float = 0.0, *, bits: int = 4, p: float = 0.1, collapsed: bool = False) -> Point:
    c_q = quant_ratio(bits)
    return Point(p=p, bits=bits, c_q=c_q, cer_p=CER(c_q + x), advantage=a, stderr=se, collapsed=collapsed)


def test_point_x_is_the_cer_difference() -> None:
    pt = Point(p=0.2, bits=8, c_q=2.0, cer_p=CER(3.5), advantage=0.1, stderr=0.01)
    assert pt.x == 1.5


def test_a_strictly_increasing_series_holds_with_rank_correlation_one() -> None:
    points = [point(x, a, 0.01, bits=b) for x, a, b in [(2.0, 0.3, 5), (-1.0, -0.2, 8), (0.5, 0.0, 6), (1.0, 0.1, 7)]]
    result = monotonicity(points)
    assert result.holds and result.violations == ()
    assert result.spearman == pytest.approx(1.0) and result.kendall == pytest.approx(1.0)
    assert result.n_points == 4 and [pt.x for pt in result.points] == [-1.0, 0.5, 1.0, 2.0]


def test_a_drop_beyond_the_noise_is_a_violation_with_its_size() -> None:
    result = monotonicity([point(0.0, 0.0, 0.1, bits=8), point(1.0, 1.0, 0.1, bits=6), point(2.0, 0.2, 0.1, bits=5)])
    assert not result.holds
    tolerance = 2.0 * math.sqrt(0.02)
    assert result.violations == (Violation(1.0, 1.0, 2.0, 0.2, pytest.approx(0.8), pytest.approx(tolerance)),)


def test_a_dip_within_the_noise_is_not_a_violation() -> None:
    points = [point(0.0, 0.0, 0.1, bits=8), point(1.0, 1.0, 0.1, bits=6), point(2.0, 0.9, 0.1, bits=5)]
    assert monotonicity(points).holds
    assert not monotonicity(points, sigmas=0.0).holds  # without a noise allowance the dip counts


def test_equal_x_pairs_are_not_compared() -> None:
    assert monotonicity([point(1.0, 1.0, bits=6), point(1.0, -1.0, bits=5)]).holds


def test_collapsed_points_are_excluded_and_reported() -> None:
    collapsed = point(5.0, -49.9, 1.0, bits=4, collapsed=True)
    points = [point(0.0, 0.0, 0.01, bits=8), point(1.0, 0.1, 0.01, bits=6), point(2.0, 0.3, 0.01, bits=5), collapsed]
    result = monotonicity(points)
    assert result.holds and result.n_points == 3 and result.excluded == (collapsed,)
    rows = result.table()
    assert len(rows) == 4 and rows[-1]["collapsed"] is True and rows[-1]["A"] == -49.9
    assert set(rows[0]) == {"p", "bits", "C_Q", "C*_P", "C*_P bound", "x", "A", "stderr", "collapsed"}


def test_rank_correlations_are_nan_for_too_few_points_or_constant_input() -> None:
    two = monotonicity([point(0.0, 0.0, bits=8), point(1.0, 1.0, bits=6)])
    flat = monotonicity([point(0.0, 0.5, bits=8), point(1.0, 0.5, bits=6), point(2.0, 0.5, bits=5)])
    assert math.isnan(two.spearman) and math.isnan(two.kendall) and two.holds
    assert math.isnan(flat.spearman) and math.isnan(flat.kendall) and flat.holds
    assert monotonicity([]).n_points == 0


def test_monotonicity_per_p_groups_by_pruning_ratio() -> None:
    points = [point(0.0, 0.0, p=0.1, bits=8), point(1.0, 0.5, p=0.1, bits=6),
              point(0.5, 1.0, p=0.3, bits=8), point(1.5, 0.0, p=0.3, bits=6)]
    per_p = monotonicity_per_p(points)
    assert list(per_p) == [0.1, 0.3] and per_p[0.1].holds and not per_p[0.3].holds


def test_is_collapsed_flags_non_finite_or_far_worse_than_dense() -> None:
    assert not is_collapsed([6.0, 7.5, 49.0], dense_ppl=5.0, max_ratio=10.0)
    assert is_collapsed([6.0, 51.0], dense_ppl=5.0, max_ratio=10.0)
    assert is_collapsed([6.0, math.inf], dense_ppl=5.0, max_ratio=10.0)
    assert is_collapsed([math.nan], dense_ppl=5.0, max_ratio=10.0)


# ------------------------------------------------------------------------------ Fig. 3 fit, Table 1


@pytest.mark.parametrize("a, b, c", [(0.5, 1.3, -0.2), (-2.0, -0.7, 1.5)])
def test_exponential_fit_recovers_exact_synthetic_data(a: float, b: float, c: float) -> None:
    x = np.linspace(-1.0, 2.0, 8)
    fit = exponential_fit(x, a * np.exp(b * x) + c)
    assert fit is not None
    assert (fit.a, fit.b, fit.c) == (pytest.approx(a, rel=1e-3), pytest.approx(b, rel=1e-3), pytest.approx(c, rel=1e-3))
    assert fit.r2 == pytest.approx(1.0)
    assert fit.predict(0.0) == pytest.approx(a + c, rel=1e-3)
    assert fit.predict([0.0, 1.0]).shape == (2,)


def test_exponential_fit_needs_three_points() -> None:
    assert exponential_fit([0.0, 1.0], [0.0, 1.0]) is None
    assert exponential_fit([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) is None  # x does not vary: nothing to fit


TABLE_1 = [  # (C_Q, bits, pruner, A(Q->P), same pruned units in both orders)
    (quant_ratio(9), 9, "SparseGPT", 0.002, None), (quant_ratio(9), 9, "SLEB", 0.0, True),
    (quant_ratio(5), 5, "SparseGPT", -0.017, None), (quant_ratio(5), 5, "SLEB", -0.057, False),
    (quant_ratio(8), 8, "SparseGPT", 0.001, None), (quant_ratio(8), 8, "SLEB", 0.0, True),
]


def test_interference_table_has_one_row_per_quantization_ratio_and_a_column_per_pruner() -> None:
    rows = interference_table(TABLE_1)
    assert [r["C_Q (B_Q)"] for r in rows] == ["1.78 (9)", "2.00 (8)", "3.20 (5)"]
    assert rows[0] == {"C_Q (B_Q)": "1.78 (9)", "SparseGPT": 0.002, "SLEB": 0.0}
    assert rows[2]["SLEB"] == -0.057


def test_structured_zero_interference_flags_a_nonzero_advantage_on_identical_structure() -> None:
    assert structured_zero_interference(TABLE_1) == []  # SLEB's -0.057 changed structure, so it may interfere
    bad = (quant_ratio(7), 7, "SLEB", 1e-9, True)
    assert structured_zero_interference([*TABLE_1, bad]) == [bad]


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: cer(0.5, []), "empty quantization curve"),
        (lambda: cer(math.nan, PPL_CURVE), "metric=nan"),
        (lambda: cer(0.5, [(2.0, 0.7), (4.0, math.nan)]), r"M=nan.*finite M"),
        (lambda: cer(0.5, [(2.0, 0.7), (2.0, 0.6)]), r"ratios \[2.0, 2.0\] repeat"),
        (lambda: metric_from_ppl(-1.0), r"ppl=-1.0 .*positive"),
        (lambda: prune_ratio(1.0), r"p=1.0 .*0 <= p < 1"),
        (lambda: quant_ratio(0), r"bits=0.0"),
        (lambda: advantage(-math.inf, -math.inf), "undefined"),
        (lambda: paired_bootstrap_advantage([1.0, 2.0], [1.0], 8), "nll_qp has 2 windows and nll_pq 1"),
        (lambda: paired_bootstrap_advantage([], [], 8), r"nll_qp has shape \(0,\)"),
        (lambda: paired_bootstrap_advantage([1.0, math.inf], [1.0, 2.0], 8), r"nll_qp holds non-finite values \(inf\)"),
        (lambda: paired_bootstrap_advantage([1.0], [1.0], 0), "tokens_per_window=0"),
        (lambda: combine_seeds([]), "no estimates"),
        (lambda: combine_seeds([Estimate(math.nan, 0.1, 0, 0)]), "estimate value=nan"),
        (lambda: monotonicity([point(0.0, math.inf)]), r"advantage of point \(p=0.1, bits=4\)=inf is not finite"),
        (lambda: monotonicity([point(0.0, 0.0)], sigmas=-1.0), "sigmas=-1.0"),
        (lambda: is_collapsed([5.0], dense_ppl=0.0, max_ratio=10.0), "dense_ppl=0.0"),
        (lambda: exponential_fit([0.0, 1.0, 2.0], [0.0, 1.0]), "x has 3 values and y 2"),
        (lambda: interference_table([TABLE_1[0], TABLE_1[0]]), "'SparseGPT' at C_Q=1.778, bits=9 given twice"),
        (lambda: CER(2.0, "clamped"), "bound='clamped'"),
    ],
)
def test_bad_input_raises_a_one_line_error_naming_the_value(call, match: str) -> None:
    with pytest.raises(PqqpError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_metric_direction_and_recovery() -> None:
    """Perplexity is lower-is-better (M = -ppl); any other metric, e.g. an accuracy, is higher-is-better."""
    from pqqp_bench.hypothesis import higher_is_better, oriented, recovery

    assert not higher_is_better("ppl") and higher_is_better("acc")
    assert oriented("ppl", 12.5) == -12.5 and oriented("acc", 0.7) == 0.7
    assert recovery("ppl", 20.0, 10.0) == 0.5 and recovery("acc", 0.3, 0.6) == 0.5
    assert recovery("ppl", math.inf, 10.0) == 0.0


def test_kernel_noise_adds_its_predicted_error_to_every_point() -> None:
    """With windows that carry no sampling noise (every window the same), A's bootstrap error is the kernel noise
    alone: k·hypot(ppl1, ppl2), and it is deterministic given the seed."""
    from pqqp_bench.hypothesis import bootstrap_advantages, inflated_stderr, perplexity_pair

    windows, tokens = 16, 63
    first = [[math.log(12.0) * tokens] * windows]
    second = [[math.log(15.0) * tokens] * windows]
    pair = perplexity_pair(first, second, tokens)
    assert inflated_stderr(bootstrap_advantages([pair], resamples=4000), windows)[0] == pytest.approx(0.0, abs=1e-9)
    noisy = bootstrap_advantages([pair], resamples=4000, kernel_noise=0.01)
    assert inflated_stderr(noisy, windows)[0] == pytest.approx(0.01 * math.hypot(12.0, 15.0), rel=0.05)
    assert np.array_equal(noisy, bootstrap_advantages([pair], resamples=4000, kernel_noise=0.01))
    assert noisy.mean() == pytest.approx(3.0, abs=0.02)  # A = M(first) - M(second) = -12 + 15
