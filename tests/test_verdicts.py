"""The three verdicts of `hypothesis.judge` on simulated evaluation windows where the truth is known.

Each simulated test has 4 points at x = -0.6, -0.2, 0.2, 0.6 measured on the same 16 windows of 511 tokens, as the
default suite measures them: a window's difficulty (sd 0.25 nats per token) is shared by every recipe, and each
recipe adds its own per-window noise (sd 0.011 nats), which gives A(Q->P) standard errors of about 0.05-0.1 at a
perplexity near 14, as measured on the embedded model. The true A(Q->P) is `slope` · x.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pqqp_bench.errors import PqqpError
from pqqp_bench.hypothesis import (CER, INCONCLUSIVE, SUPPORTED, VIOLATED, Point, break_sigmas, bootstrap_advantages,
                                   fit_rise, judge, perplexity_pair, sample_pair, trend_test)

TOKENS = 511
X = (-0.6, -0.2, 0.2, 0.6)
SIMULATIONS = 400


def simulated(slope: float, rng: np.random.Generator, windows: int = 16, noise: float = 0.011,
              shape=lambda x: x) -> tuple[list[Point], list]:
    difficulty = rng.normal(2.6, 0.25, windows)
    points, pairs = [], []
    for i, x in enumerate(X):
        pq = difficulty + 0.05 + rng.normal(0, noise, windows)
        qp = difficulty + 0.05 - slope * shape(x) / math.exp(2.6) + rng.normal(0, noise, windows)
        pair = perplexity_pair([qp * TOKENS], [pq * TOKENS], TOKENS)
        points.append(Point(0.2, 8 - i, 2.0, CER(2.0 + x), float(pair.advantage()[0]), 0.0))
        pairs.append(pair)
    return points, pairs


def rates(slope: float, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    verdicts = [judge(*simulated(slope, rng), resamples=1000, seed=k).verdict for k in range(SIMULATIONS)]
    return {v: verdicts.count(v) / SIMULATIONS for v in (SUPPORTED, VIOLATED, INCONCLUSIVE)}


# Three binomial standard errors above the 5% level over 400 simulations: 0.05 + 3·sqrt(0.05·0.95/400) = 0.083.
LEVEL_BOUND = 0.05 + 3 * math.sqrt(0.05 * 0.95 / SIMULATIONS)


def test_a_flat_trend_is_called_supported_or_violated_at_most_at_the_documented_level() -> None:
    found = rates(0.0, seed=1)
    print(f"\nflat A (true slope 0): {found}")  # measured: supported 0.025, violated 0.0275
    assert found[SUPPORTED] <= LEVEL_BOUND, found
    assert found[VIOLATED] <= LEVEL_BOUND, found


def test_a_rising_trend_of_three_standard_errors_is_supported_with_power_above_80_percent() -> None:
    rng = np.random.default_rng(2)
    stderr = float(np.median([judge(*simulated(0.0, rng), resamples=1000).trend.slope_stderr for _ in range(40)]))
    found = rates(3 * stderr, seed=3)  # about 0.18 in ppl per unit of x
    print(f"\nrising A (true slope {3 * stderr:.3g} = 3 x its stderr {stderr:.3g}): {found}")  # measured: supported 0.89
    assert found[SUPPORTED] >= 0.8, found
    assert found[VIOLATED] <= LEVEL_BOUND, found


def test_a_falling_trend_of_three_and_a_half_standard_errors_is_violated_with_power_above_80_percent() -> None:
    # violated is judged at level/2 on the slope (and Bonferroni on the pairs), so it needs a larger effect
    found = rates(-0.205, seed=4)  # 3.5 x the slope's stderr of about 0.0585
    print(f"\nfalling A (true slope -0.205): {found}")  # measured: violated 0.9
    assert found[VIOLATED] >= 0.8, found
    assert found[SUPPORTED] <= LEVEL_BOUND, found


def test_a_rise_then_a_large_drop_breaks_monotonicity_and_is_violated() -> None:
    points, pairs = simulated(1.0, np.random.default_rng(5), shape=lambda x: x if x < 0.5 else -2.0)
    judged = judge(points, pairs, resamples=1000)
    assert judged.verdict == VIOLATED, judged.decision.reason
    assert judged.result.violations and "drops" in judged.decision.reason


def test_an_inconclusive_test_states_the_smallest_detectable_slope() -> None:
    points, pairs = simulated(0.0, np.random.default_rng(6), noise=0.05)
    judged = judge(points, pairs, resamples=1000)
    assert judged.verdict == INCONCLUSIVE, judged.decision.reason
    assert judged.trend.detectable == pytest.approx((1.7531 + 0.8416) * judged.trend.slope_stderr, rel=1e-3)
    assert f"{judged.trend.detectable:.3g}" in judged.decision.reason


def test_the_joint_bootstrap_is_deterministic_and_keeps_points_correlated() -> None:
    points, pairs = simulated(0.2, np.random.default_rng(7))
    a, b = bootstrap_advantages(pairs, resamples=500, seed=3), bootstrap_advantages(pairs, resamples=500, seed=3)
    assert np.array_equal(a, b)
    # every point sees the same resampled windows: two points with the same windows get the same replicates,
    # and a point's replicates are its own paired bootstrap
    twice = bootstrap_advantages([pairs[0], pairs[0]], resamples=500, seed=3)
    assert np.array_equal(twice[:, 0], twice[:, 1]) and np.array_equal(twice[:, 0], a[:, 0])
    judged = judge(points, pairs, resamples=500)
    assert [pt.stderr for pt in judged.points] == pytest.approx(list(np.std(judged.replicates, axis=0, ddof=1) *
                                                                     math.sqrt(16 / 15)))


def test_seeds_are_resampled_and_pooled() -> None:
    rng = np.random.default_rng(8)
    nll = [rng.normal(1300, 100, 16) for _ in range(3)]
    one = perplexity_pair([nll[0]], [nll[0] + 5], TOKENS)
    three = perplexity_pair(nll, [n + 5 for n in nll], TOKENS)
    assert three.advantage()[0] == pytest.approx(np.mean([perplexity_pair([n], [n + 5], TOKENS).advantage()[0]
                                                          for n in nll]))
    assert bootstrap_advantages([one, three], resamples=50).shape == (50, 2)


def test_a_point_compared_with_itself_anchors_a_at_exactly_zero() -> None:
    points, pairs = simulated(0.3, np.random.default_rng(9))
    points[0] = Point(0.0, 0, 0.0, CER(-1.0), 0.0, 0.0)
    pairs[0] = None
    judged = judge(points, pairs, resamples=300)
    assert judged.points[0].stderr == 0.0 and np.all(judged.replicates[:, 0] == 0.0)


def test_collapsed_points_are_shown_not_judged() -> None:
    points, pairs = simulated(0.3, np.random.default_rng(10))
    points[1] = Point(0.2, 7, 2.0, CER(1.8), -50.0, 0.0, collapsed=True)
    judged = judge(points, pairs, resamples=300)
    assert judged.result.n_points == 3 and len(judged.result.excluded) == 1
    assert np.all(np.isnan(judged.replicates[:, 1]))


def test_lm_eval_documents_pair_like_windows() -> None:
    rng = np.random.default_rng(11)
    first = [[float(v) for v in rng.integers(0, 2, 40)]]
    second = [[float(v) for v in rng.integers(0, 2, 40)]]
    pair = sample_pair("lm-eval:pqqp_cloze/acc", first, second)
    assert pair.advantage()[0] == pytest.approx(np.mean(first) - np.mean(second))


def test_the_pooled_fit_rises_with_an_interval() -> None:
    points, pairs = simulated(0.5, np.random.default_rng(12), shape=lambda x: math.exp(2 * x))
    judged = judge(points, pairs, resamples=300)
    rise = fit_rise(judged, replicates=50)
    assert rise is not None and rise.low <= rise.rise <= rise.high and rise.rise > 0


def test_break_sigmas_is_at_least_noise_sigmas_and_grows_with_the_pairs() -> None:
    assert break_sigmas(2.0, 0, 16, 0.05) == 2.0
    assert break_sigmas(5.0, 1, 16, 0.05) == 5.0
    assert 2.0 < break_sigmas(2.0, 3, 16, 0.05) < break_sigmas(2.0, 6, 16, 0.05)


@pytest.mark.parametrize("call, match", [
    (lambda: trend_test([0, 1], [0, 1], np.zeros((5, 2)), 16, level=0.7), r"level=0\.7"),
    (lambda: trend_test([0, 1], [0, 1], np.zeros((5, 3)), 16), r"shape \(5, 3\)"),
    (lambda: judge([], [None]), r"1 paired measurements for 0 points"),
    (lambda: judge([], [], sigmas=float("nan")), r"sigmas=nan"),
    (lambda: perplexity_pair([[1.0, 2.0]], [[1.0]], 511), r"units per seed and recipe differ"),
    (lambda: perplexity_pair([[1.0]], [[1.0]], 0), r"tokens_per_window=0"),
    (lambda: bootstrap_advantages([perplexity_pair([[1.0, 2.0]], [[1.0, 2.0]], 5),
                                   perplexity_pair([[1.0]], [[1.0]], 5)]), r"different numbers of units"),
])
def test_bad_input_names_the_value(call, match: str) -> None:
    with pytest.raises(PqqpError, match=match):
        call()
