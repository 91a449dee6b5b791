"""The `order_search` section (App. D.7): method sets whose every order is measured, against the order a predictor
recommends (by default the intensity rule, increasing CER from the single runs; or a probe on sampled blocks,
predictors.py).

    order_search: {reference: rtn, predictor: probe, probe_blocks: 2, sets: ['wanda:p=0.3; rtn:w=6,a=6,kv=6', ...]}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tabulate import tabulate

from ..analysis import Analysis
from ..errors import PqqpError
from ..hypothesis import cer, higher_is_better
from ..measure import METRIC, Missing
from ..ordering import MeasuredSet, MethodSet, OrderOutcome, OrderSummary, cost_ratio, outcome, parse_method_set, summarize
from ..report import DPI, Table, figure_pixels, fmt, number, save, short_model
from ..settings import PREDICTORS
from ..suite import Case, Suite, model_id, short
from .base import Board, Plot, Section

if TYPE_CHECKING:
    from ..predictors import Cost, ProbeContext

KEYS = ("sets", "reference", "predictor", "probe_blocks")


@dataclass(frozen=True)
class OrderSpec:
    """One method set of the `order_search` section on one model."""

    suite: Suite
    model: str
    methods: MethodSet

    @property
    def id(self) -> str:
        return f"{model_id(self.model)}-{self.methods.id}"


@dataclass(frozen=True)
class OrderRule:
    """The predictor over every method set of the section on one model (`test_order_rule`)."""

    model: str

    @property
    def id(self) -> str:
        return model_id(self.model)


@dataclass(frozen=True)
class OrderSearch(Section):
    """Method sets whose recommended order is checked against every permutation. `reference` is the quantizer whose
    curve (the suite's `curve_bits`) the intensity rule reads the CERs on."""

    key = "order_search"
    sets: tuple[MethodSet, ...] = ()
    reference: str = "rtn"
    predictor: str = "intensity"  # which predictor recommends the order (predictors.PREDICTORS)
    probe_blocks: int = 2  # decoder blocks the probe predictors sample

    @classmethod
    def parse(cls, value: Any) -> "OrderSearch | None":
        """`order_search: {reference: rtn, predictor: probe, probe_blocks: 4, sets: ['wanda:p=0.3; rtn:w=6', ...]}`;
        `sets` may also be one string with '|' between sets (the command line's `--pqqp-order-sets`)."""
        if value is None or isinstance(value, OrderSearch):
            return value
        accepted = "accepted a mapping {sets: [method sets], reference: quantizer template, predictor: name, probe_blocks: n}"
        if not isinstance(value, dict):
            raise PqqpError(f"bad value order_search={value!r} in the suite: {accepted}")
        unknown = sorted(set(value) - set(KEYS))
        if unknown:
            raise PqqpError(f"unknown order_search key '{unknown[0]}' in the suite: accepted {', '.join(KEYS)}")
        predictor = str(value.get("predictor") or "intensity")
        if predictor not in PREDICTORS:
            raise PqqpError(f"bad value order_search.predictor={predictor!r} in the suite: accepted {', '.join(PREDICTORS)}")
        blocks = value.get("probe_blocks", 2)
        if isinstance(blocks, str) and blocks.strip().isdigit():
            blocks = int(blocks)
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise PqqpError(f"bad value order_search.probe_blocks={blocks!r} in the suite: accepted a positive integer")
        sets = value.get("sets")
        if isinstance(sets, str):
            sets = [text for text in sets.split("|") if text.strip()]
        if not isinstance(sets, list) or not sets:
            raise PqqpError(f"bad value order_search.sets={sets!r} in the suite: accepted a non-empty list of method "
                            f"sets, e.g. ['wanda:p=0.3; rtn:w=6,a=6,kv=6']")
        parsed = tuple(parse_method_set(str(text)) for text in sets)
        if len({m.id for m in parsed}) != len(parsed):
            raise PqqpError("order_search.sets names the same method set twice: accepted distinct sets")
        return cls(parsed, str(value.get("reference") or "rtn"), predictor, blocks)

    def check(self, suite: Suite) -> None:
        suite.curve(self.reference)

    def cases(self, suite: Suite, model: str) -> list[Case]:
        """The reference quantizer's curve, each method alone, and every order of each set."""
        found = [Case(model, recipe, "quant", short(recipe)) for recipe in suite.curve(self.reference).values()]
        for method_set in self.sets:
            found += [Case(model, method_set.single(i), "single", short(method_set.single(i)))
                      for i in range(len(method_set.units))]
            found += [Case(model, method_set.recipe(order), "order", short(method_set.recipe(order)))
                      for order in method_set.orders()]
        return found

    def specs(self, suite: Suite) -> list[OrderSpec]:
        return [OrderSpec(suite, m, s) for m in suite.models for s in self.sets]

    def tests(self, suite: Suite) -> dict[str, list]:
        return {"pqqp_order": self.specs(suite), "pqqp_order_rule": [OrderRule(m) for m in suite.models]}

    def report(self, analysis: Analysis) -> str:
        found = order_outcomes(analysis)
        if not found:
            return ""
        rows = [(spec.model, spec.methods.name, spec.methods.describe(r.recommended), spec.methods.describe(r.best),
                 f"{r.rank}/{len(r.metrics)}", fmt(r.regret, 4), fmt(r.random_regret, 4)) for spec, r in found]
        name = predictor_name(analysis.suite)
        rule = "the intensity rule (increasing CER)" if name == "intensity rule" else f"the {name}"
        text = f"Order search: {rule} against every order\n" + tabulate(
            rows, headers=["model", "methods", "recommended", "best", "rank", "regret", "random regret"])
        for model in dict.fromkeys(spec.model for spec, _ in found):
            text += f"\n{model}: " + summary_text(summarize([r for spec, r in found if spec.model == model]), name)
        return text

    def collect(self, analysis: Analysis, model: str) -> tuple[tuple[OrderSpec, OrderOutcome], ...]:
        return tuple(order_outcomes(analysis, model))

    def tables(self, board: Board, suite: Suite) -> list[Table]:
        orders = board.part(self.key)
        if not orders:
            return []
        rows = tuple((str(i), spec.methods.name, spec.methods.describe(r.recommended), spec.methods.describe(r.best),
                      f"{r.rank}/{len(r.metrics)}", number(-r.metric(r.recommended)), number(-r.best_metric),
                      number(r.regret, 4), number(r.random_regret, 4)) for i, (spec, r) in enumerate(orders, 1))
        summary = summarize([r for _, r in orders])
        name = predictor_name(suite)
        how = ("The rule orders methods by increasing CER from their single runs alone (n runs, not n!)."
               if name == "intensity rule" else
               f"The {name} orders methods from probes on {self.probe_blocks} sampled decoder blocks "
               f"(predictors.py), measuring nothing on the whole model.")
        return [Table(f"Order search: the {name} against every order",
                      ("#", "methods", "recommended (weakest first)", "best measured", "rank", "ppl recommended", "ppl best",
                       "regret", "random-order regret"), rows,
                      f"{how} Regret: ppl lost against the best order; a random order's is the mean over all orders. "
                      f"Summary: {summary_text(summary, name)}.")]

    def plots(self, suite: Suite) -> tuple[Plot, ...]:
        return (Plot("orders", plot_orders, "the intensity rule's regret per method set next to a random order's",
                     figure_pixels(1, 1)),)


def probe_context(analysis: Analysis, model: str) -> "ProbeContext":
    """What the order predictors work on for `model` (predictors.py): for `intensity`, the single-method metrics
    and their stored cost; for the probes, the dense model and the calibration samples (loaded only for them)."""
    import torch

    from ..predictors import ProbeContext

    search = analysis.suite.section("order_search")
    name, blocks = (search.predictor, search.probe_blocks) if search else ("intensity", 2)
    contexts = analysis.memo.setdefault("probe contexts", {})
    if model not in contexts:
        if name == "intensity":
            context = ProbeContext(blocks=blocks, seed=analysis.suite.seeds[0])
        else:
            experiment = analysis.bench.experiment(model)
            context = ProbeContext(experiment.loaded.model, experiment.calibration, blocks=blocks,
                                   seed=analysis.suite.seeds[0], device=torch.device(experiment.device))
        context.single_metric = lambda methods, i: analysis.oriented(model, methods.single(i))
        contexts[model] = context
    return contexts[model]


def order_outcome(analysis: Analysis, spec: OrderSpec, exhaustive: bool = True) -> tuple[OrderOutcome | None, dict]:
    """The suite's order predictor on one method set (`order_search.predictor`, default the intensity rule:
    single-method M and CER on the reference quantizer's curve, weakest first), and (`exhaustive`) every
    order's M with the recommendation's rank and regret."""
    from ..predictors import predictor

    methods = spec.methods
    search = analysis.suite.section("order_search")
    name = search.predictor if search else "intensity"
    prediction = predictor(name).predict(methods, probe_context(analysis, spec.model))
    details = {"predictor": name, "recommended": prediction.order, "scores": prediction.scores,
               "cost": prediction.cost}
    if name == "intensity":
        singles = [analysis.oriented(spec.model, methods.single(i)) for i in range(len(methods.units))]
        curve = analysis.curve(spec.model, search.reference) if search else None
        details.update(singles=singles, cers=[cer(m, curve) if curve else None for m in singles])
    if not exhaustive:
        return None, details
    metrics = {order: analysis.oriented(spec.model, methods.recipe(order)) for order in methods.orders()}
    return outcome(prediction.order, metrics), details


def measured_set(analysis: Analysis, spec: OrderSpec) -> MeasuredSet:
    """Every order of the set with its per-window NLLs (the suite's first seed), for scoring predictors."""
    if analysis.suite.metric != METRIC:
        raise PqqpError(f"order predictors are scored on perplexity windows, the suite's metric is "
                        f"{analysis.suite.metric!r}: accepted metric ppl")
    orders = tuple(spec.methods.orders())
    found = [analysis.bench.measure(spec.model, spec.methods.recipe(o)) for o in orders]
    return MeasuredSet(spec.methods.name, orders, np.array([m.details["window_nll"] for m in found], dtype=float),
                       found[0].details["seqlen"] - 1)


def order_evidence(analysis: Analysis, spec: OrderSpec, result: OrderOutcome | None, details: dict) -> str:
    """What the predictor saw (the single methods with their M and CER, or the probes' block errors), its
    recommendation and cost beside the exhaustive search's, and (exhaustive) every order ranked."""
    methods, metric, search = spec.methods, analysis.suite.metric, analysis.suite.section("order_search")
    sign = 1.0 if higher_is_better(metric) else -1.0  # M back to the metric's own value
    n, name = len(methods.units), details.get("predictor", "intensity")
    if "singles" in details:
        seen = tabulate([(str(methods.units[i]), fmt(sign * m, 5), str(c) if c is not None else "-")
                         for i, (m, c) in enumerate(zip(details["singles"], details["cers"]))],
                        headers=["method alone", metric, f"CER on {search.reference}" if search else "CER"])
        how = "increasing CER, weakest first"
        cost = (f"cost: {n} single runs for the rule vs {len(methods.orders())} orders exhaustively "
                f"({cost_ratio(n):g}x more joint compressions)")
    else:
        seen = tabulate([(k, fmt(v, 5)) for k, v in details["scores"].items()],
                        headers=["probed on the sampled blocks", "block output error"])
        how = f"{name}: smallest error of the sampled blocks' outputs"
        cost = probe_cost_text(analysis, spec, details["cost"])
    text = f"{seen}\nrecommended ({how}): {methods.describe(details['recommended'])}\n{cost}"
    if result is None:
        return text
    ranked = sorted(result.metrics, key=lambda om: -om[1])
    rows = [(1 + sum(other > m for _, other in result.metrics), methods.describe(order), fmt(sign * m, 5),
             fmt(result.best_metric - m, 4), "recommended" if order == result.recommended else "")
            for order, m in ranked]
    text += "\n" + tabulate(rows, headers=["rank", "order", metric, "regret", ""])
    text += (f"\nrecommended order: rank {result.rank} of {len(rows)}, regret {fmt(result.regret, 4)} "
             f"(random order: best with chance {fmt(result.random_hit_rate, 3)}, expected regret "
             f"{fmt(result.random_regret, 4)})")
    return text


def probe_cost_text(analysis: Analysis, spec: OrderSpec, cost: Cost) -> str:
    """A probe predictor's cost beside the exhaustive search's (every order compressed and evaluated)."""
    from ..blocks import decoder_blocks
    from ..predictors import exhaustive_cost

    s = analysis.suite
    layers = len(decoder_blocks(probe_context(analysis, spec.model).model))
    full = exhaustive_cost(spec.methods, layers, s.calib_samples * s.seqlen, s.eval_tokens)
    return (f"cost: {cost.compressions} block compressions, {cost.forward_tokens:,} block-forward tokens, "
            f"{cost.seconds:.1f} s; the exhaustive search: {full.full_runs} whole-model runs, {full.compressions} "
            f"block compressions, {full.forward_tokens:,} block-forward tokens "
            f"({cost.forward_tokens / full.forward_tokens:.1%} of its tokens)")


def order_outcomes(analysis: Analysis, model: str | None = None) -> list[tuple[OrderSpec, OrderOutcome]]:
    search = analysis.suite.section("order_search")
    found = []
    for spec in search.specs(analysis.suite) if search else ():
        if model is not None and spec.model != model:
            continue
        try:
            result, _ = order_outcome(analysis, spec)
        except Missing:
            continue
        found.append((spec, result))
    return found


def predictor_name(suite: Suite) -> str:
    """The suite's order predictor as prose: `intensity rule` or `probe predictor`."""
    name = suite.section("order_search").predictor if suite.section("order_search") else "intensity"
    return "intensity rule" if name == "intensity" else f"{name} predictor"


def summary_text(summary: OrderSummary, predictor: str = "intensity rule") -> str:
    return (f"{predictor} over {summary.sets} method sets: best order chosen in {summary.hit_rate:.0%} "
            f"(random order: {summary.random_hit_rate:.0%}), mean regret {fmt(summary.mean_regret, 4)} "
            f"(random order: {fmt(summary.random_regret, 4)}), mean rank {fmt(summary.mean_rank, 3)}")


def plot_orders(board: Board, suite: Suite, path: Path) -> None:
    """Per method set: the rule's regret and a random order's expected regret (ppl lost vs the best order)."""
    import numpy as np
    from matplotlib import style
    from matplotlib.figure import Figure

    width, height = figure_pixels(1, 1)
    with style.context("default"):
        fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        index = np.arange(len(board.part("order_search")))
        ax.bar(index - 0.2, [r.regret for _, r in board.part("order_search")], 0.4, label="intensity rule")
        ax.bar(index + 0.2, [r.random_regret for _, r in board.part("order_search")], 0.4, label="random order (mean)")
        ax.set_xticks(index, [str(i + 1) for i in index])
        ax.set_xlabel("method set (as numbered in the table)")
        ax.set_ylabel("regret: ppl lost vs the best order")
        ax.grid(True, axis="y", alpha=0.3)
        if board.part("order_search"):
            ax.legend(fontsize=7)
        fig.suptitle(f"{short_model(board.model)}: order search", fontsize=10)
        save(fig, path)


SECTION = OrderSearch
