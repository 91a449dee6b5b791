"""The paper's quantities from stored measurements: the quantization curve and CERs (Def. 3), A(Q->P) with its
paired-bootstrap noise (Eq. 2), the Hypothesis 1 verdicts, pipeline points, and the order predictors' outcomes.

`Analysis` asks its `Bench` (measure.py) for measurements, which a lookup-only bench only reads; it computes
nothing but numbers from them (and, for the probe order predictors, probes on sampled blocks of the loaded model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import PqqpError
from .hypothesis import (CER, Estimate, Judged, Paired, Point, bootstrap_advantages, cer, inflated_stderr,
                         is_collapsed_metric, judge, oriented, perplexity_pair, quant_ratio, sample_pair)
from .measure import METRIC, Bench
from .ordering import MeasuredSet, OrderOutcome, outcome
from .spec import Recipe
from .suite import Case, HypothesisSpec, OrderSpec, PipelineSpec, PointSpec, Suite

if TYPE_CHECKING:
    from .predictors import ProbeContext


@dataclass
class Analysis:
    """A bench's measurements turned into the paper's quantities under its suite's settings."""

    bench: Bench
    contexts: dict[str, "ProbeContext"] = field(default_factory=dict)  # per model, for the order predictors

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

    def pipeline_points(self, spec: PipelineSpec) -> list[tuple[Point, dict]]:
        """The family's points as Fig. 3-style points with x the family's intensity gap (pipelines.py)."""
        dense = self.mean_value(spec.model, Recipe(()))
        points = []
        for pt in spec.family.points:
            estimate, paired, first, second = self.compare(spec.model, pt.first, pt.second)
            collapsed = is_collapsed_metric(self.suite.metric, first + second, dense, self.suite.max_ppl_ratio)
            point = Point(0.0, 0, 0.0, CER(pt.x), estimate.value, estimate.stderr, collapsed)
            alone = [(str(r), self.mean_value(spec.model, r)) for r in pt.alone]
            points.append((point, {"first": first, "second": second, "dense": dense, "label": pt.label,
                                   "estimate": estimate, "paired": paired, "alone": alone}))
        return points

    def probe_context(self, model: str) -> "ProbeContext":
        """What the order predictors work on for `model` (predictors.py): for `intensity`, the single-method metrics
        and their stored cost; for the probes, the dense model and the calibration samples (loaded only for them)."""
        import torch

        from .predictors import ProbeContext

        search = self.suite.order_search
        name, blocks = (search.predictor, search.probe_blocks) if search else ("intensity", 2)
        if model not in self.contexts:
            if name == "intensity":
                context = ProbeContext(blocks=blocks, seed=self.suite.seeds[0])
            else:
                experiment = self.bench.experiment(model)
                context = ProbeContext(experiment.loaded.model, experiment.calibration, blocks=blocks,
                                       seed=self.suite.seeds[0], device=torch.device(experiment.device))
            context.single_metric = lambda methods, i: self.oriented(model, methods.single(i))
            self.contexts[model] = context
        return self.contexts[model]

    def order_outcome(self, spec: OrderSpec, exhaustive: bool = True) -> tuple[OrderOutcome | None, dict]:
        """The suite's order predictor on one method set (`order_search.predictor`, default the intensity rule:
        single-method M and CER on the reference quantizer's curve, weakest first), and (`exhaustive`) every
        order's M with the recommendation's rank and regret."""
        from .predictors import predictor

        methods = spec.methods
        search = self.suite.order_search
        name = search.predictor if search else "intensity"
        prediction = predictor(name).predict(methods, self.probe_context(spec.model))
        details = {"predictor": name, "recommended": prediction.order, "scores": prediction.scores,
                   "cost": prediction.cost}
        if name == "intensity":
            singles = [self.oriented(spec.model, methods.single(i)) for i in range(len(methods.units))]
            curve = self.curve(spec.model, search.reference) if search else None
            details.update(singles=singles, cers=[cer(m, curve) if curve else None for m in singles])
        if not exhaustive:
            return None, details
        metrics = {order: self.oriented(spec.model, methods.recipe(order)) for order in methods.orders()}
        return outcome(prediction.order, metrics), details

    def measured_set(self, spec: OrderSpec) -> MeasuredSet:
        """Every order of the set with its per-window NLLs (the suite's first seed), for scoring predictors."""
        if self.suite.metric != METRIC:
            raise PqqpError(f"order predictors are scored on perplexity windows, the suite's metric is "
                            f"{self.suite.metric!r}: accepted metric ppl")
        orders = tuple(spec.methods.orders())
        found = [self.bench.measure(spec.model, spec.methods.recipe(o)) for o in orders]
        return MeasuredSet(spec.methods.name, orders, np.array([m.details["window_nll"] for m in found], dtype=float),
                           found[0].details["seqlen"] - 1)

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

    def removed_blocks(self, model: str, recipe: Recipe, seed: int) -> list | None:
        """The blocks a structured pruner removed in this measurement (None where it removes none)."""
        structure = self.bench.measure(model, recipe, seed).details.get("structure") or []
        removed = [s.get("removed_blocks") for s in structure if "removed_blocks" in s]
        return removed[0] if removed else None
