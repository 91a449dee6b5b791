"""Measurements through the results store: each (model, recipe, seed) is computed once, ever.

`Bench` is what the pytest plugin and `pqqp run --suite` share. Asked for a measurement, it looks in the store
first; only a missing one is computed, under an inter-process claim (two pytest-xdist workers never compute
the same thing), and stored in one transaction as soon as it exists. So an interrupted run keeps everything
measured so far and a re-run resumes. The model is loaded only when something must be computed, once per model.

What a measurement is, is `metrics.py`'s (perplexity, lm-eval tasks) and the throughput section's; what the stored
numbers mean for the paper (CER, A(Q->P) with its noise, verdicts, order outcomes) is `analysis.py`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import __version__
from .compress import schedule_matters
from .errors import PqqpError
from .prefixes import wanted_prefixes
from .store import Measurement, MeasurementKey, Store
from .suite import Case, Suite
from .spec import Recipe, parse_recipe

if TYPE_CHECKING:
    from .evaluate.throughput import Backend
    from .experiment import Experiment
    from .metrics import Compressed

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
        from .metrics import metric_for

        experiment = self.experiment(model)
        dense = decoder_blocks(experiment.loaded.model)
        narrowest = min(lin.in_features for b in dense for lin in block_linears(b).values())
        tolerance = 0.5 / narrowest + (0.5 / len(dense) if any(s.removes_blocks for s in recipe.stages) else 0.0)
        found = metric_for(self.suite.metric).evaluate(experiment, recipe, seed, self.suite, self.task_managers, compressed)
        return found.value, {"order": recipe.order, **found.details, "sparsity_tolerance": tolerance,
                             "seconds": found.seconds, "device": experiment.device, "environment": self.numbers_environment}

    # --- throughput ------------------------------------------------------------------------------------

    @cached_property
    def backend(self) -> "Backend":
        """The throughput backend of this bench (the section's, `auto` resolved once: vLLM where found)."""
        from .evaluate.throughput import resolve_backend

        if self.suite.section("throughput") is None:
            raise PqqpError(f"suite '{self.suite.name}' has no throughput section: add one (see suites/throughput.yaml)")
        return resolve_backend(self.suite.section("throughput").settings.backend, self.vllm_venv)

    def throughput_key(self, model: str, recipe: Recipe, backend: str | None = None) -> MeasurementKey:
        assert self.suite.section("throughput") is not None
        split = self.suite.section("throughput").settings.split(backend or self.backend.name)
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
        from .metrics import compression_details

        spec, backend = self.suite.section("throughput"), self.backend
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
            "order": recipe.order, **result, **served, "backend_reason": backend.reason, **compression_details(report),
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
