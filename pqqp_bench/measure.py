"""Measurements through the results store: each (model, recipe, seed) is computed once, ever.

`Bench` is what the pytest plugin and `pqqp run --suite` share. Asked for a measurement, it looks in the store
first; only a missing one is computed, under an inter-process claim (two pytest-xdist workers never compute
the same thing), and stored in one transaction as soon as it exists. So an interrupted run keeps everything
measured so far and a re-run resumes. The model is loaded only when something must be computed, once per model.

What a measurement is, is `metrics.py`'s (perplexity, lm-eval tasks, throughput): its key's split, its baseline
and its evaluation; `Bench` holds no metric's code. What the stored numbers mean for the paper (CER, A(Q->P) with
its noise, verdicts, order outcomes) is `analysis.py`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from . import __version__
from .compress import schedule_matters
from .errors import PqqpError
from .metrics import THROUGHPUT, Metric, MetricContext, Throughput, metric_for
from .prefixes import wanted_prefixes
from .store import Measurement, MeasurementKey, Store
from .suite import Case, Suite
from .spec import Recipe, parse_recipe

if TYPE_CHECKING:
    from .evaluate.throughput import Backend
    from .experiment import Experiment
    from .metrics import Compressed

METRIC = "ppl"  # the default metric: token-level perplexity (`lm-eval:<task>/<metric>` selects an lm-eval task)


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
    fingerprints: dict[str, str] = field(default_factory=dict)
    window_starts: dict[str, str] = field(default_factory=dict)  # per model: `bos` or `none` (data.bos_label)
    vllm_venv: str | None = None  # where vLLM lives when this environment has none (evaluate/throughput.py)
    contexts: dict[str, MetricContext] = field(default_factory=dict)  # per metric name: what it keeps per bench

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

    def metric(self, name: str | None = None) -> tuple[Metric, MetricContext]:
        """The metric that measures `name` (default: the suite's) and its context in this bench, built once: what
        the metric keeps between measurements lasts as long as the bench."""
        name = name or self.suite.metric
        if name not in self.contexts:
            self.contexts[name] = MetricContext(self.suite, name, self.window_start, lambda: self.numbers_environment,
                                                self.vllm_venv)
        return metric_for(name), self.contexts[name]

    def split(self, model: str, metric: str | None = None) -> str:
        """The evaluation split in the key: the metric's (`Metric.split`)."""
        found, context = self.metric(metric)
        return found.split(context, model)

    def key(self, model: str, recipe: Recipe, seed: int, metric: str | None = None, split: str | None = None
            ) -> MeasurementKey:
        s = self.suite
        seeded = uses_seed(recipe)
        return MeasurementKey(
            model=model, model_hash=self.fingerprint(model), corpus=self.corpus_id,
            split=split or self.split(model, metric), recipe=str(recipe),
            recipe_key=recipe.key, metric=metric or s.metric, seed=seed if seeded else -1,
            calibration=f"{calibration_key(s, recipe)},start={self.window_start(model)}" if seeded else "",
            harness_version=self.harness,
        )

    # --- measuring ---------------------------------------------------------------------------------------

    def measure(self, model: str, recipe: Recipe | str, seed: int | None = None, metric: str | None = None,
                compressed: Callable[[], "Compressed"] | None = None) -> Measurement:
        """The stored measurement of `recipe` on `model` by `metric` (default: the suite's), computing and storing
        it first if it is missing. The metric's baseline comes first, stored or measured, so a row is never read
        without the one it is relative to. `compressed`: where the recipe's compressed copy comes from when it
        must be computed (one copy shared by several metrics, `measure_together`)."""
        recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
        seed = self.suite.seeds[0] if seed is None else seed
        base = self.metric(metric)[0].baseline(recipe)
        if base is not None:
            self.measure(model, base, seed, metric)
        return self.stored_or_computed(self.key(model, recipe, seed, metric),
                                       lambda: self.compute(model, recipe, seed, compressed() if compressed else None,
                                                            metric))

    def measure_together(self, model: str, recipe: Recipe | str, metrics: Sequence[str | None],
                         seed: int | None = None) -> list[Measurement]:
        """`recipe` on `model` by each of `metrics` (None: the suite's), each stored or measured in turn, every
        baseline first; the missing ones share one compressed copy (SLEB's search, GPTQ's sweeps run once)."""
        recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
        seed = self.suite.seeds[0] if seed is None else seed
        for name in metrics:  # before any compressed copy exists (a dense model is timed on its own)
            base = self.metric(name)[0].baseline(recipe)
            if base is not None:
                self.measure(model, base, seed, name)
        shared: list["Compressed"] = []

        def compressed() -> "Compressed":
            if not shared:
                shared.append(self.experiment(model).compressed(recipe, seed))
            return shared[0]

        return [self.measure(model, recipe, seed, name, compressed) for name in metrics]

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

    def compute(self, model: str, recipe: Recipe, seed: int, compressed: "Compressed | None" = None,
                metric: str | None = None) -> tuple[float, dict]:
        """`recipe` on `model` by `metric` (default: the suite's), computed now: the value and its details, as
        the metric's `evaluate` gives them (with its baseline's stored measurement, where it has one)."""
        found, context = self.metric(metric)
        base = found.baseline(recipe)
        baseline = None if base is None else self.measure(model, base, seed, metric)
        result = found.evaluate(context, self.experiment(model), recipe, seed, compressed, baseline)
        return result.value, result.details

    # --- throughput: the throughput metric's measurements, under the names callers use -------------------

    def throughput_metric(self) -> tuple[Throughput, MetricContext]:
        metric, context = self.metric(THROUGHPUT)
        assert isinstance(metric, Throughput)
        return metric, context

    @property
    def backend(self) -> "Backend":
        """The throughput backend of this bench (the section's, `auto` resolved once: vLLM where found)."""
        metric, context = self.throughput_metric()
        return metric.backend(context)

    def throughput_key(self, model: str, recipe: Recipe, backend: str | None = None) -> MeasurementKey:
        """The key of `recipe`'s tokens/s on `model`: this bench's backend, or `backend`'s row (reports look up
        either)."""
        metric, context = self.throughput_metric()
        return self.key(model, recipe, self.suite.seeds[0], THROUGHPUT, metric.split(context, model, backend))

    def throughput(self, model: str, recipe: Recipe | str) -> Measurement:
        """The stored tokens/s of `recipe` on `model` (the dense model's first: the speed-up divides by it),
        measured and stored first where missing. A failure stores nothing and keeps what was stored."""
        return self.measure(model, recipe, metric=THROUGHPUT)

    def throughput_case(self, model: str, recipe: Recipe | str, quality: bool = True
                        ) -> tuple[Measurement | None, Measurement]:
        """The suite metric (with `quality`) and the tokens/s of `recipe`, each stored or measured; where both are
        missing, one compression serves both."""
        if not quality:
            return None, self.throughput(model, recipe)
        metric, speed = self.measure_together(model, recipe, (None, THROUGHPUT))
        return metric, speed

    def measure_case(self, case: Case) -> list[Measurement]:
        """A case under every seed that can change it (one measurement where none can)."""
        return [self.measure(case.model, case.recipe, seed) for seed in self.seeds_for(case.recipe)]

    def stored_case(self, case: Case) -> list[Measurement]:
        """The case's stored measurements (every seed that can change it); computes nothing."""
        found = (self.store.get(self.key(case.model, case.recipe, seed)) for seed in self.seeds_for(case.recipe))
        return [m for m in found if m is not None]
