"""The paper's quantities from stored measurements: the quantization curve and CERs (Def. 3), A(Q->P) with its
paired-bootstrap noise (Eq. 2) and the Hypothesis 1 verdicts under the suite's noise settings. The sections
(sections/) build their own quantities from these: pipeline points, Table 1, the order predictors' outcomes.

`Analysis` asks its `Bench` (measure.py) for measurements, which a lookup-only bench only reads; it computes
nothing but numbers from them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .hypothesis import (CER, Estimate, Judged, Paired, Point, bootstrap_advantages, cer, inflated_stderr,
                         is_collapsed_metric, judge, oriented, perplexity_pair, quant_ratio, sample_pair)
from .measure import METRIC, Bench
from .spec import Recipe
from .suite import Case, HypothesisSpec, PointSpec, Suite


@dataclass
class Analysis:
    """A bench's measurements turned into the paper's quantities under its suite's settings."""

    bench: Bench
    memo: dict[str, Any] = field(default_factory=dict)  # what sections keep per analysis (the order predictors' probes)

    @property
    def suite(self) -> Suite:
        return self.bench.suite

    def mean_value(self, model: str, recipe: Recipe) -> float:
        """The suite's metric of `recipe`, averaged over the seeds that can change it."""
        values = [m.value for m in self.bench.measure_case(Case(model, recipe, "", ""))]
        return sum(values) / len(values)

    def oriented(self, model: str, recipe: Recipe) -> float:
        """The paper's M (higher is better) of `recipe`: -ppl, -perplexity, or an accuracy."""
        return oriented(self.suite.metric, self.mean_value(model, recipe))

    def curve(self, model: str, quantizer: str) -> list[tuple[float, float]]:
        """The measured quantization curve (C_Q, M): the dense model at C_Q = 1, then every curve bit width."""
        points = [(1.0, self.oriented(model, Recipe(())))]
        for bits, recipe in self.suite.curve(quantizer).items():
            points.append((quant_ratio(bits), self.oriented(model, recipe)))
        return points

    def cer_of_pruner(self, model: str, pruner: str, p: float, quantizer: str) -> CER:
        """C*_P: the pruned model's metric mapped onto the quantizer's curve (Def. 3; both on the original φ)."""
        return cer(self.oriented(model, self.suite.pruner(pruner, p)), self.curve(model, quantizer))

    def point(self, spec: PointSpec) -> tuple[Point, dict]:
        """A(Q->P) = M(Q then P) - M(P then Q) with its paired-bootstrap noise (`compare`); the details hold the
        `Paired` units a joint test resamples (`paired`; None where a value is not finite)."""
        estimate, paired, ppl_qp, ppl_pq = self.compare(spec.model, spec.recipe("Q>P"), spec.recipe("P>Q"))
        dense = self.mean_value(spec.model, Recipe(()))
        collapsed = is_collapsed_metric(self.suite.metric, ppl_qp + ppl_pq, dense, self.suite.max_ppl_ratio)
        c_q = quant_ratio(spec.bits)
        point = Point(spec.p, spec.bits, c_q, self.cer_of_pruner(spec.model, spec.pruner, spec.p, spec.quantizer),
                      estimate.value, estimate.stderr, collapsed)
        return point, {"ppl_qp": ppl_qp, "ppl_pq": ppl_pq, "dense_ppl": dense, "estimate": estimate, "paired": paired}

    def compare(self, model: str, first: Recipe, second: Recipe) -> tuple[Estimate, Paired | None, list[float], list[float]]:
        """A(first -> second) = M(first) - M(second) over the seeds that can change either, with the two recipes'
        metric values per seed. Its noise is the bootstrap `judge` uses (`hypothesis.bootstrap_advantages`: windows
        or documents, and seeds, resampled together; the inflated stderr, the 2.5/97.5% percentiles), computed on
        the `Paired` units that come back with it (None where first == second: A = 0 exactly; or a value is not
        finite: collapsed)."""
        seeds = self.bench.seeds_for(first, second)
        a = [self.bench.measure(model, first, seed) for seed in seeds]
        b = [self.bench.measure(model, second, seed) for seed in seeds]
        values_first, values_second = [m.value for m in a], [m.value for m in b]
        if not all(math.isfinite(v) for v in (*values_first, *values_second)):
            return Estimate(math.nan, math.inf, math.nan, math.nan), None, values_first, values_second
        if first == second:
            return Estimate(0.0, 0.0, 0.0, 0.0), None, values_first, values_second
        if self.suite.metric == METRIC:
            paired = perplexity_pair([m.details["window_nll"] for m in a], [m.details["window_nll"] for m in b],
                                     a[0].details["seqlen"] - 1)
        else:
            paired = sample_pair(self.suite.metric, [m.details["samples"] for m in a], [m.details["samples"] for m in b])
        boot = bootstrap_advantages([paired], resamples=self.suite.bootstrap, kernel_noise=self.suite.kernel_noise)
        low, high = (float(v) for v in np.percentile(boot[:, 0], [2.5, 97.5]))
        stderr = float(inflated_stderr(boot, paired.units)[0])
        return Estimate(float(paired.advantage()[0]), stderr, low, high), paired, values_first, values_second

    def hypothesis_points(self, spec: HypothesisSpec) -> list[tuple[Point, dict]]:
        return [self.point(p) for p in spec.points()]

    def judge(self, points: Sequence[Point], pairs: Sequence[Paired | None]) -> Judged:
        """The three verdicts of `hypothesis.judge` under the suite's noise settings."""
        s = self.suite
        return judge(points, pairs, sigmas=s.noise_sigmas, resamples=s.bootstrap, level=s.level,
                     kernel_noise=s.kernel_noise)

    def judged(self, specs: Sequence[PointSpec]) -> tuple[Judged, list[dict]]:
        """Hypothesis 1 over these points (one p, or pooled over p): the joint-bootstrap verdict, and each point's
        details (`point`)."""
        found = [self.point(spec) for spec in specs]
        return self.judge([pt for pt, _ in found], [d["paired"] for _, d in found]), [d for _, d in found]
