"""Measurements through the results store: each (model, recipe, seed) is computed once, ever.

`Bench` is what the pytest plugin and `pqqp run --suite` share. Asked for a measurement, it looks in the store
first; only a missing one is computed, under an inter-process claim (two pytest-xdist workers never compute
the same thing), and stored in one transaction as soon as it exists. So an interrupted run keeps everything
measured so far and a re-run resumes. The model is loaded only when something must be computed, once per model.

From the stored numbers it then builds the hypothesis points (paper §3: CER, A(Q->P) with its noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import __version__
from .compress import schedule_matters
from .errors import PqqpError
from .hypothesis import (CER, Estimate, Judged, Paired, Point, bootstrap_advantages, cer, inflated_stderr,
                         is_collapsed_metric, judge, oriented, perplexity_pair, quant_ratio, sample_pair)
from .prefixes import wanted_prefixes
from .store import Measurement, MeasurementKey, Store
from .ordering import MeasuredSet, OrderOutcome, outcome
from .suite import Case, HypothesisSpec, OrderSpec, PipelineSpec, PointSpec, Suite
from .spec import Recipe, parse_recipe

if TYPE_CHECKING:
    import torch

    from .compress import CompressionReport
    from .evaluate.throughput import Backend
    from .experiment import Experiment
    from .predictors import ProbeContext

    Compressed = tuple[torch.nn.Module, CompressionReport, float]  # Experiment.compressed's model, report, seconds

METRIC = "ppl"  # the default metric: token-level perplexity (`lm-eval:<task>/<metric>` selects an lm-eval task)
THROUGHPUT = "throughput"  # generation tokens/s (the suite's `throughput` section; evaluate/throughput.py)


class Missing(LookupError):
    """A measurement that is not stored, asked of a lookup-only bench (reports never compute)."""


def uses_seed(recipe: Recipe) -> bool:
    """Whether the seed can change the result: calibration sampling, or a randomised rotation."""
    return any(s.needs_calibration or s.kind == "transform" for s in recipe.stages)


def progress_line(index: int, total: int, m: Measurement) -> str:
    """One stored measurement as the suite runners print it: position, model, recipe, value and timings."""
    took = m.details.get("seconds", {})
    start = f" (window start {m.details['bos']})" if "bos" in m.details else ""
    return (f"[{index}/{total}] {m.key.model}  {m.key.recipe}  {m.key.metric} {m.value:.4f}{start}  "
            f"(compress {took.get('compress', 0):.1f} s, evaluate {took.get('evaluate', 0):.1f} s)")


def corpus_identity(corpus: str) -> str:
    """The corpus's name with the content hash of its text (`data.corpus_fingerprint`): an edited file, or the
    built-in `pydoc` text of another Python build, is another corpus."""
    from .data import corpus_fingerprint

    return corpus_fingerprint(corpus)


def calibration_key(suite: Suite, recipe: Recipe) -> str:
    """The calibration part of a measurement key: samples and their length, and the schedule wherever it can
    change the model (`compress.schedule_matters`: a recipe whose calibrated stage is followed by another)."""
    text = f"samples={suite.calib_samples},seqlen={suite.seqlen}"
    return text + (f",schedule={suite.schedule}" if schedule_matters(recipe.stages) else "")


@dataclass
class Bench:
    """A suite's measurements: stored ones reused, missing ones computed (and stored) on demand."""

    suite: Suite
    store: Store
    refresh: bool = False
    progress: bool = True
    cache_dir: str | None = None
    trust_remote_code: bool = False
    lookup_only: bool = False
    computed: list[str] = field(default_factory=list)  # digests computed by this process (refresh: once each)
    experiments: dict[str, Any] = field(default_factory=dict)
    contexts: dict[str, "ProbeContext"] = field(default_factory=dict)  # per model, for the order predictors
    fingerprints: dict[str, str] = field(default_factory=dict)
    window_starts: dict[str, str] = field(default_factory=dict)  # per model: `bos` or `none` (data.bos_label)
    task_managers: dict[str, Any] = field(default_factory=dict)  # lm-eval's, built once per bench
    vllm_venv: str | None = None  # where vLLM lives when this environment has none (evaluate/throughput.py)

    # --- identity ----------------------------------------------------------------------------------------

    def fingerprint(self, model: str) -> str:
        if model not in self.fingerprints:
            from .models import model_fingerprint

            self.fingerprints[model] = model_fingerprint(model, cache_dir=Path(self.cache_dir) if self.cache_dir else None,
                                                         trust_remote_code=self.trust_remote_code)
        return self.fingerprints[model]

    def window_start(self, model: str) -> str:
        """How `model`'s windows start under the suite's `bos` setting: `bos` or `none` (from its tokenizer alone;
        the experiment, where loaded, says the same)."""
        if model not in self.window_starts:
            from .data import bos_label, bos_token

            if model in self.experiments:
                start = self.experiments[model].corpus.bos
            elif self.suite.bos == "never":
                start = None
            else:
                from .models import load_tokenizer

                tokenizer = load_tokenizer(model, cache_dir=Path(self.cache_dir) if self.cache_dir else None,
                                           trust_remote_code=self.trust_remote_code)
                start = bos_token(tokenizer, self.suite.bos)
            self.window_starts[model] = bos_label(start)
        return self.window_starts[model]

    @cached_property
    def corpus_id(self) -> str:
        return corpus_identity(self.suite.corpus)  # hashes the corpus text: once, not on every lookup

    @cached_property
    def numbers_environment(self) -> dict:
        from .environment import numbers_environment

        return numbers_environment()

    @cached_property
    def harness(self) -> str:
        """The key's harness field: this release and the fingerprint of the code that computes (`environment.py`)."""
        from .environment import code_fingerprint, harness_identity

        return harness_identity(__version__, code_fingerprint())

    def seeds_for(self, *recipes: Recipe) -> tuple[int, ...]:
        """The suite's seeds where one of `recipes` can depend on the seed, else just the first."""
        return self.suite.seeds if any(uses_seed(r) for r in recipes) else self.suite.seeds[:1]

    def split(self, model: str) -> str:
        """The evaluation split in the key: the perplexity windows (with how they start), or the context an lm-eval
        task runs with."""
        s = self.suite
        if s.metric == METRIC:
            return f"holdout={s.holdout:g},seqlen={s.seqlen},tokens={s.eval_tokens},start={self.window_start(model)}"
        return f"holdout={s.holdout:g},max_length={s.seqlen}" + (f",limit={s.lm_eval_limit}" if s.lm_eval_limit else "")

    def key(self, model: str, recipe: Recipe, seed: int, metric: str | None = None, split: str | None = None
            ) -> MeasurementKey:
        s = self.suite
        seeded = uses_seed(recipe)
        return MeasurementKey(
            model=model, model_hash=self.fingerprint(model), corpus=self.corpus_id,
            split=split or self.split(model), recipe=str(recipe),
            recipe_key=recipe.key, metric=metric or s.metric, seed=seed if seeded else -1,
            calibration=f"{calibration_key(s, recipe)},start={self.window_start(model)}" if seeded else "",
            harness_version=self.harness,
        )

    # --- measuring ---------------------------------------------------------------------------------------

    def measure(self, model: str, recipe: Recipe | str, seed: int | None = None) -> Measurement:
        """The stored measurement of `recipe` on `model`, computing and storing it first if it is missing."""
        recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
        seed = self.suite.seeds[0] if seed is None else seed
        return self.stored_or_computed(self.key(model, recipe, seed), lambda: self.compute(model, recipe, seed))

    def stored_or_computed(self, key: MeasurementKey, compute: Callable[[], tuple[float, dict]]) -> Measurement:
        """The stored measurement of `key`, or `compute()`'s, stored under the key's claim (once per process
        with `refresh`)."""
        digest = key.digest()
        stale = self.refresh and digest not in self.computed
        if not stale:
            found = self.store.get(key)
            if found is not None:
                return found
        if self.lookup_only:
            raise Missing(f"{key.model}: {key.recipe} ({key.metric}, seed {key.seed}) is not stored")
        with self.store.claim(key):
            found = None if stale else self.store.get(key)  # another worker may have stored it meanwhile
            if found is not None:
                return found
            measurement = Measurement(key, *compute())
            self.store.put(measurement, replace=stale)
            self.computed.append(digest)
            return self.store.get(key) or measurement

    def experiment(self, model: str) -> "Experiment":
        """The model's loaded experiment (model, corpus, calibration, evaluation windows), built once."""
        if model not in self.experiments:
            from .experiment import Experiment

            settings = self.suite.settings(model, cache_dir=self.cache_dir, trust_remote_code=self.trust_remote_code,
                                           progress=self.progress)
            self.experiments[model] = Experiment(settings)
            if self.experiments[model].loaded.fingerprint != self.fingerprint(model):
                raise PqqpError(f"model {model!r} changed while loading (fingerprint differs): run again")
            from .data import bos_label

            loaded = bos_label(self.experiments[model].corpus.bos)
            if self.window_starts.setdefault(model, loaded) != loaded:
                raise PqqpError(f"model {model!r}: its tokenizer alone gave window start {self.window_starts[model]!r}, "
                                f"the loaded experiment {loaded!r}: run again")
            recipes = [c.recipe for c in self.suite.cases() if c.model == model]
            self.experiments[model].prefixes.wanted = wanted_prefixes(recipes, self.suite.schedule)
        return self.experiments[model]

    def compute(self, model: str, recipe: Recipe, seed: int, compressed: "Compressed | None" = None
                ) -> tuple[float, dict]:
        from .blocks import block_linears, decoder_blocks

        experiment = self.experiment(model)
        dense = decoder_blocks(experiment.loaded.model)
        narrowest = min(lin.in_features for b in dense for lin in block_linears(b).values())
        tolerance = 0.5 / narrowest + (0.5 / len(dense) if any(s.removes_blocks for s in recipe.stages) else 0.0)
        if self.suite.metric == METRIC:
            value, evaluated, seconds = self.perplexity(experiment, recipe, seed, compressed)
        else:
            value, evaluated, seconds = self.lm_eval_task(experiment, recipe, seed, compressed)
        return value, {"order": recipe.order, **evaluated, "sparsity_tolerance": tolerance, "seconds": seconds,
                       "device": experiment.device, "environment": self.numbers_environment}

    @staticmethod
    def perplexity(experiment: "Experiment", recipe: Recipe, seed: int, compressed: "Compressed | None" = None
                   ) -> tuple[float, dict, dict]:
        case = experiment.run(recipe, seed=seed, compressed=compressed)
        p = case.perplexity
        return p.ppl, {
            "requested": case.report.requested, "achieved": case.report.achieved(), "structure": case.report.structure,
            **({"reused_prefix": case.report.reused} if case.report.reused else {}),
            **({"flags": case.report.flags} if case.report.flags else {}),
            "window_nll": p.window_nll, "tokens": p.tokens, "windows": p.windows, "seqlen": p.seqlen,
            "convention": p.convention, "bos": p.bos,
        }, case.seconds

    def lm_eval_task(self, experiment: "Experiment", recipe: Recipe, seed: int, compressed: "Compressed | None" = None
                     ) -> tuple[float, dict, dict]:
        """The suite's lm-eval metric of the compressed model (`evaluate/lmeval.py`), with per-document samples."""
        from .evaluate.lmeval import evaluate_task, require_lm_eval, task_manager

        s = self.suite
        require_lm_eval()
        if s.corpus not in self.task_managers:
            self.task_managers[s.corpus] = task_manager(s.corpus, s.holdout)
        model, report, compress_seconds = compressed or experiment.compressed(recipe, seed)
        result = evaluate_task(model, experiment.loaded.tokenizer, s.metric, seqlen=s.seqlen, corpus=s.corpus,
                               holdout=s.holdout, batch_size=s.batch_size, limit=s.lm_eval_limit,
                               manager=self.task_managers[s.corpus])
        return result.value, {
            "requested": report.requested, "achieved": report.achieved(), "structure": report.structure,
            **({"flags": report.flags} if report.flags else {}),
            "samples": result.samples, "documents": len(result.samples), "lm_eval_stderr": result.stderr,
            "max_length": result.max_length, "convention": result.convention,
        }, {"compress": compress_seconds, "evaluate": result.seconds}

    # --- throughput ------------------------------------------------------------------------------------

    @cached_property
    def backend(self) -> "Backend":
        """The throughput backend of this bench (the section's, `auto` resolved once: vLLM where found)."""
        from .evaluate.throughput import resolve_backend

        if self.suite.throughput is None:
            raise PqqpError(f"suite '{self.suite.name}' has no throughput section: add one (see suites/throughput.yaml)")
        return resolve_backend(self.suite.throughput.settings.backend, self.vllm_venv)

    def throughput_key(self, model: str, recipe: Recipe, backend: str | None = None) -> MeasurementKey:
        assert self.suite.throughput is not None
        split = self.suite.throughput.settings.split(backend or self.backend.name)
        return self.key(model, recipe, self.suite.seeds[0], metric=THROUGHPUT, split=split)

    def throughput(self, model: str, recipe: Recipe | str) -> Measurement:
        """The stored tokens/s of `recipe` on `model` (the dense model's first: the speed-up divides by it),
        measured and stored first where missing. A failure stores nothing and keeps what was stored."""
        return self.throughput_case(model, recipe, quality=False)[1]

    def throughput_case(self, model: str, recipe: Recipe | str, quality: bool = True
                        ) -> tuple[Measurement | None, Measurement]:
        """The suite metric (with `quality`) and the tokens/s of `recipe`, each stored or measured; where both are
        missing, one compression serves both (SLEB's search, GPTQ's sweeps run once)."""
        recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
        dense = None if not recipe.stages else self.throughput(model, Recipe(()))
        seed, shared = self.suite.seeds[0], []

        def compressed() -> "Compressed":
            if not shared:
                shared.append(self.experiment(model).compressed(recipe, seed))
            return shared[0]

        metric = self.stored_or_computed(self.key(model, recipe, seed),
                                         lambda: self.compute(model, recipe, seed, compressed())) if quality else None
        speed = self.stored_or_computed(self.throughput_key(model, recipe),
                                        lambda: self.compute_throughput(model, recipe, dense, compressed()))
        return metric, speed

    def compute_throughput(self, model: str, recipe: Recipe, dense: Measurement | None, shared: "Compressed"
                           ) -> tuple[float, dict]:
        import tempfile

        from .evaluate.throughput import run_transformers, run_vllm
        from .export import export

        spec, backend = self.suite.throughput, self.backend
        assert spec is not None
        experiment, seed = self.experiment(model), self.suite.seeds[0]
        compressed, report, compress_seconds = shared
        served: dict[str, Any]
        if backend.name == "vllm":
            assert backend.python is not None
            with tempfile.TemporaryDirectory(prefix="pqqp-export-") as tmp:
                exported = export(compressed, experiment.loaded.tokenizer, report, Path(tmp) / "model",
                                  spec.settings.dtype)
                result = run_vllm(exported.folder, spec.settings, backend.python, seed)
            served = exported.as_dict()
        else:
            result = run_transformers(compressed, experiment.loaded.tokenizer, spec.settings, seed, experiment.device)
            served = {"format": "transformers", "low_bit": False, "served_as": "the harness's model (fake quantization)",
                      "notes": [f"transformers backend: {backend.reason}"]}
        value = result["tokens_per_s"]
        dense_value = value if dense is None else dense.value
        return value, {
            "order": recipe.order, **result, **served, "backend_reason": backend.reason,
            "requested": report.requested, "achieved": report.achieved(), "structure": report.structure,
            **({"flags": report.flags} if report.flags else {}),
            "dense_tokens_per_s": dense_value, "dense_created": dense.created if dense else "",
            "speedup": value / dense_value, "seconds": {"compress": compress_seconds, "measure": result["elapsed"]},
        }

    def measure_case(self, case: Case) -> list[Measurement]:
        """A case under every seed that can change it (one measurement where none can)."""
        return [self.measure(case.model, case.recipe, seed) for seed in self.seeds_for(case.recipe)]

    def stored_case(self, case: Case) -> list[Measurement]:
        """The case's stored measurements (every seed that can change it); computes nothing."""
        found = (self.store.get(self.key(case.model, case.recipe, seed)) for seed in self.seeds_for(case.recipe))
        return [m for m in found if m is not None]

    # --- hypothesis inputs -------------------------------------------------------------------------------

    def mean_value(self, model: str, recipe: Recipe) -> float:
        """The suite's metric of `recipe`, averaged over the seeds that can change it."""
        values = [m.value for m in self.measure_case(Case(model, recipe, "", ""))]
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
        seeds = self.seeds_for(first, second)
        a = [self.measure(model, first, seed) for seed in seeds]
        b = [self.measure(model, second, seed) for seed in seeds]
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
                experiment = self.experiment(model)
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
        found = [self.measure(spec.model, spec.methods.recipe(o)) for o in orders]
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
        structure = self.measure(model, recipe, seed).details.get("structure") or []
        removed = [s.get("removed_blocks") for s in structure if "removed_blocks" in s]
        return removed[0] if removed else None
