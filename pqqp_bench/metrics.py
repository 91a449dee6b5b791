"""What the store measures, behind one interface: perplexity, lm-eval tasks and generation throughput.

A metric says which names it measures (`accepts`), what of the evaluation goes into the key besides the model,
corpus, recipe and calibration (`split`), which measurement of the same metric it is read against (`baseline`:
throughput's dense model, which the speed-up divides by) and how a compressed copy of the model is measured
(`evaluate`: the value and everything stored beside it). `Bench` holds no metric's code: it builds the key from
`split`, stores the baseline first and what `evaluate` returns, and hands every metric the same `MetricContext`.
A new metric is one class here and its entry in `METRICS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .errors import PqqpError
from .spec import Recipe

if TYPE_CHECKING:
    import torch

    from .compress import CompressionReport
    from .evaluate.throughput import Backend, ThroughputSettings
    from .experiment import Experiment
    from .store import Measurement
    from .suite import Suite

    Compressed = tuple[torch.nn.Module, CompressionReport, float]  # Experiment.compressed's model, report, seconds

THROUGHPUT = "throughput"  # generation tokens/s (the suite's `throughput` section; evaluate/throughput.py)


@dataclass(frozen=True)
class Evaluated:
    """What `evaluate` measured: the value, and the details stored beside it (all of them: each metric decides
    which fields its rows carry)."""

    value: float
    details: dict


@dataclass
class MetricContext:
    """What a bench hands a metric, one per bench and metric name.

    The suite and the bench's lookups a key needs without loading the model (the window start reads only the
    tokenizer), and `state`, which lives as long as the bench: what a metric builds once and reuses (lm-eval's
    task managers, the resolved throughput backend). A metric never imports the bench (`measure.py` comes after
    this module); this is all it sees of it."""

    suite: "Suite"
    name: str  # the metric's name as keyed: the suite's `metric`, or `throughput`
    window_start: Callable[[str], str]  # a model's window start, `bos` or `none` (Bench.window_start)
    environment: Callable[[], dict]  # what besides the code moves a number (environment.numbers_environment)
    vllm_venv: str | None = None  # where vLLM lives when this environment has none (evaluate/throughput.py)
    state: dict[str, Any] = field(default_factory=dict)


class Metric(Protocol):
    """One kind of measurement: its names, its part of the key, its baseline and its evaluation."""

    names: str  # the names it accepts, as an error message lists them

    def accepts(self, name: str) -> bool:
        """Whether this metric measures `name` (a suite's `metric`, or `throughput`)."""
        ...

    def split(self, context: MetricContext, model: str) -> str:
        """The key's split: what of the evaluation, besides model, corpus, recipe and calibration, changes the
        value. Stored rows are found by it, so it must stay byte-identical for the same evaluation."""
        ...

    def baseline(self, recipe: Recipe) -> Recipe | None:
        """The recipe whose measurement of this metric (same model and seed) `evaluate` is given, measured and
        stored first; None where the value stands alone."""
        ...

    def evaluate(self, context: MetricContext, experiment: "Experiment", recipe: Recipe, seed: int,
                 compressed: "Compressed | None" = None, baseline: "Measurement | None" = None) -> Evaluated:
        """Measure `recipe` on the experiment's model: on `compressed` where another measurement shares the
        compressed copy, else on a copy compressed here."""
        ...


def compression_details(report: "CompressionReport") -> dict:
    """What every metric stores of the compression: requested and achieved ratios, structure, reuse, flags."""
    return {"requested": report.requested, "achieved": report.achieved(), "structure": report.structure,
            **({"reused_prefix": report.reused} if report.reused else {}),
            **({"flags": report.flags} if report.flags else {})}


def quality_details(context: MetricContext, experiment: "Experiment", recipe: Recipe, details: dict,
                    seconds: dict[str, float]) -> dict:
    """The stored details of a quality metric (perplexity, lm-eval) around its own: the order, the tolerance the
    analysis allows the achieved sparsity (half a column of the narrowest Linear, plus half a block where blocks
    are removed), the seconds, the device and the numbers environment."""
    from .blocks import block_linears, decoder_blocks

    dense = decoder_blocks(experiment.loaded.model)
    narrowest = min(lin.in_features for b in dense for lin in block_linears(b).values())
    tolerance = 0.5 / narrowest + (0.5 / len(dense) if any(s.removes_blocks for s in recipe.stages) else 0.0)
    return {"order": recipe.order, **details, "sparsity_tolerance": tolerance, "seconds": seconds,
            "device": experiment.device, "environment": context.environment()}


class Perplexity:
    """Token-level perplexity over the evaluation windows (`ppl`), with each window's summed NLL."""

    names = "ppl"

    def accepts(self, name: str) -> bool:
        return name == "ppl"

    def split(self, context: MetricContext, model: str) -> str:
        """The windows: holdout, length, tokens and how they start (`bos` or `none`)."""
        s = context.suite
        return f"holdout={s.holdout:g},seqlen={s.seqlen},tokens={s.eval_tokens},start={context.window_start(model)}"

    def baseline(self, recipe: Recipe) -> Recipe | None:
        return None

    def evaluate(self, context: MetricContext, experiment: "Experiment", recipe: Recipe, seed: int,
                 compressed: "Compressed | None" = None, baseline: "Measurement | None" = None) -> Evaluated:
        case = experiment.run(recipe, seed=seed, compressed=compressed)
        p = case.perplexity
        details = {**compression_details(case.report), "window_nll": p.window_nll, "tokens": p.tokens,
                   "windows": p.windows, "seqlen": p.seqlen, "convention": p.convention, "bos": p.bos}
        return Evaluated(p.ppl, quality_details(context, experiment, recipe, details, case.seconds))


class LmEvalTask:
    """An lm-eval task's metric (`lm-eval:<task>/<metric>`, evaluate/lmeval.py), with per-document samples."""

    names = "lm-eval:<task>/<metric>"

    def accepts(self, name: str) -> bool:
        return name.startswith("lm-eval:")

    def split(self, context: MetricContext, model: str) -> str:
        """The context the task runs with (and the documents scored, where limited)."""
        s = context.suite
        return f"holdout={s.holdout:g},max_length={s.seqlen}" + (f",limit={s.lm_eval_limit}" if s.lm_eval_limit else "")

    def baseline(self, recipe: Recipe) -> Recipe | None:
        return None

    def evaluate(self, context: MetricContext, experiment: "Experiment", recipe: Recipe, seed: int,
                 compressed: "Compressed | None" = None, baseline: "Measurement | None" = None) -> Evaluated:
        from .evaluate.lmeval import evaluate_task, require_lm_eval, task_manager

        require_lm_eval()
        s, managers = context.suite, context.state.setdefault("task_managers", {})
        if s.corpus not in managers:  # building one indexes every lm-eval task: seconds, once per bench
            managers[s.corpus] = task_manager(s.corpus, s.holdout)
        model, report, compress_seconds = compressed or experiment.compressed(recipe, seed)
        result = evaluate_task(model, experiment.loaded.tokenizer, context.name, seqlen=s.seqlen, corpus=s.corpus,
                               holdout=s.holdout, batch_size=s.batch_size, limit=s.lm_eval_limit,
                               manager=managers[s.corpus])
        details = {**compression_details(report), "samples": result.samples, "documents": len(result.samples),
                   "lm_eval_stderr": result.stderr, "max_length": result.max_length, "convention": result.convention}
        return Evaluated(result.value, quality_details(context, experiment, recipe, details,
                                                       {"compress": compress_seconds, "evaluate": result.seconds}))


class Throughput:
    """Generation tokens/s of the compressed model as served (`throughput`; the suite's `throughput` section,
    evaluate/throughput.py): vLLM on an exported checkpoint, or transformers' `generate` where vLLM is missing.

    The key's split names the backend resolved (`auto` is not a figure), so each backend's rows are their own; the
    dense model is the baseline, stored first, and each row keeps its tokens/s and creation for the speed-up.
    The backend is resolved once per bench (finding vLLM starts a Python)."""

    names = THROUGHPUT

    def accepts(self, name: str) -> bool:
        return name == THROUGHPUT

    @staticmethod
    def settings(suite: "Suite") -> "ThroughputSettings":
        """The suite's throughput settings; a suite without the section cannot measure throughput."""
        section = suite.section("throughput")
        if section is None:
            raise PqqpError(f"suite '{suite.name}' has no throughput section: add one (see suites/throughput.yaml)")
        return section.settings

    def backend(self, context: MetricContext) -> "Backend":
        """The backend of this bench: the section's, `auto` resolved once (vLLM where found)."""
        if "backend" not in context.state:
            from .evaluate.throughput import resolve_backend

            context.state["backend"] = resolve_backend(self.settings(context.suite).backend, context.vllm_venv)
        return context.state["backend"]

    def split(self, context: MetricContext, model: str, backend: str | None = None) -> str:
        """The settings with the backend resolved (`backend`: another backend's rows, which reports look up)."""
        return self.settings(context.suite).split(backend or self.backend(context).name)

    def baseline(self, recipe: Recipe) -> Recipe | None:
        return Recipe(()) if recipe.stages else None

    def evaluate(self, context: MetricContext, experiment: "Experiment", recipe: Recipe, seed: int,
                 compressed: "Compressed | None" = None, baseline: "Measurement | None" = None) -> Evaluated:
        import tempfile
        from pathlib import Path

        from .evaluate.throughput import run_transformers, run_vllm
        from .export import export

        settings, backend = self.settings(context.suite), self.backend(context)
        model, report, compress_seconds = compressed or experiment.compressed(recipe, seed)
        served: dict[str, Any]
        if backend.name == "vllm":
            assert backend.python is not None
            with tempfile.TemporaryDirectory(prefix="pqqp-export-") as tmp:
                exported = export(model, experiment.loaded.tokenizer, report, Path(tmp) / "model", settings.dtype)
                result = run_vllm(exported.folder, settings, backend.python, seed)
            served = exported.as_dict()
        else:
            result = run_transformers(model, experiment.loaded.tokenizer, settings, seed, experiment.device)
            served = {"format": "transformers", "low_bit": False, "served_as": "the harness's model (fake quantization)",
                      "notes": [f"transformers backend: {backend.reason}"]}
        value = result["tokens_per_s"]
        dense_value = value if baseline is None else baseline.value
        return Evaluated(value, {
            "order": recipe.order, **result, **served, "backend_reason": backend.reason, **compression_details(report),
            "dense_tokens_per_s": dense_value, "dense_created": baseline.created if baseline else "",
            "speedup": value / dense_value, "seconds": {"compress": compress_seconds, "measure": result["elapsed"]},
        })


METRICS: tuple[Metric, ...] = (Perplexity(), LmEvalTask(), Throughput())


def metric_for(name: str) -> Metric:
    """The metric that measures `name` (a suite's `metric`, or `throughput`)."""
    for metric in METRICS:
        if metric.accepts(name):
            return metric
    raise PqqpError(f"no metric measures {name!r}: accepted {', '.join(m.names for m in METRICS)}")
