"""The metrics a suite's `metric` key names, behind one interface: `accepts(name)` and `evaluate(...)`, which
compresses a fresh copy of the model (or takes the copy a throughput case shares) and measures it.

`Bench.compute` asks `metric_for(suite.metric)` and stores what comes back: the value, its details (what the
compression asked for and achieved, plus the metric's own per-window or per-document units, which the paired
bootstrap resamples) and the seconds. A new metric is one class here and its entry in `METRICS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .errors import PqqpError
from .spec import Recipe

if TYPE_CHECKING:
    import torch

    from .compress import CompressionReport
    from .experiment import Experiment
    from .suite import Suite

    Compressed = tuple[torch.nn.Module, CompressionReport, float]  # Experiment.compressed's model, report, seconds


@dataclass(frozen=True)
class Evaluated:
    value: float
    details: dict
    seconds: dict[str, float]


class Metric(Protocol):
    def accepts(self, metric: str) -> bool: ...

    def evaluate(self, experiment: "Experiment", recipe: Recipe, seed: int, suite: "Suite", cache: dict,
                 compressed: "Compressed | None" = None) -> Evaluated: ...


def compression_details(report: "CompressionReport") -> dict:
    """What every metric stores of the compression: requested and achieved ratios, structure, reuse, flags."""
    return {"requested": report.requested, "achieved": report.achieved(), "structure": report.structure,
            **({"reused_prefix": report.reused} if report.reused else {}),
            **({"flags": report.flags} if report.flags else {})}


class Perplexity:
    """Token-level perplexity over the evaluation windows (`ppl`), with each window's summed NLL."""

    def accepts(self, metric: str) -> bool:
        return metric == "ppl"

    def evaluate(self, experiment: "Experiment", recipe: Recipe, seed: int, suite: "Suite", cache: dict,
                 compressed: "Compressed | None" = None) -> Evaluated:
        case = experiment.run(recipe, seed=seed, compressed=compressed)
        p = case.perplexity
        return Evaluated(p.ppl, {**compression_details(case.report), "window_nll": p.window_nll, "tokens": p.tokens,
                                 "windows": p.windows, "seqlen": p.seqlen, "convention": p.convention, "bos": p.bos},
                         case.seconds)


class LmEvalTask:
    """An lm-eval task's metric (`lm-eval:<task>/<metric>`, evaluate/lmeval.py), with per-document samples."""

    def accepts(self, metric: str) -> bool:
        return metric.startswith("lm-eval:")

    def evaluate(self, experiment: "Experiment", recipe: Recipe, seed: int, suite: "Suite", cache: dict,
                 compressed: "Compressed | None" = None) -> Evaluated:
        from .evaluate.lmeval import evaluate_task, require_lm_eval, task_manager

        require_lm_eval()
        if suite.corpus not in cache:
            cache[suite.corpus] = task_manager(suite.corpus, suite.holdout)
        model, report, compress_seconds = compressed or experiment.compressed(recipe, seed)
        result = evaluate_task(model, experiment.loaded.tokenizer, suite.metric, seqlen=suite.seqlen,
                               corpus=suite.corpus, holdout=suite.holdout, batch_size=suite.batch_size,
                               limit=suite.lm_eval_limit, manager=cache[suite.corpus])
        return Evaluated(result.value, {**compression_details(report), "samples": result.samples,
                                        "documents": len(result.samples), "lm_eval_stderr": result.stderr,
                                        "max_length": result.max_length, "convention": result.convention},
                         {"compress": compress_seconds, "evaluate": result.seconds})


METRICS: tuple[Metric, ...] = (Perplexity(), LmEvalTask())


def metric_for(name: str) -> Metric:
    """The metric that measures `name` (a suite's `metric`)."""
    for metric in METRICS:
        if metric.accepts(name):
            return metric
    raise PqqpError(f"no metric measures {name!r}: accepted ppl or lm-eval:<task>/<metric>")
