"""Order selection (paper Problem 1, App. D.7): recommend an order of n methods from the n single runs.

The Progressive Intensity Hypothesis gives a rule that needs no joint run at all: measure each method alone,
map its metric to a compression equivalent ratio (Def. 3), and apply the methods by increasing CER, the weakest
first. On a monotone quantization curve a higher single-method M is a lower CER, so the rule sorts by M
(ties keep the order the methods were given). Checking the rule costs every permutation (n!): `OrderOutcome`
gives the recommended order's rank among them and its regret, the metric lost against the best order, next to
what a uniformly random order would lose.

Pure functions over numbers and recipes; measuring is `measure.Bench`'s.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np

from .errors import PqqpError
from .methods.base import Method
from .spec import Recipe, parse_recipe

Order = tuple[int, ...]


@dataclass(frozen=True)
class MethodSet:
    """n methods to order. Each unit is one or more stages applied together (`rtn:w=4 > lora`); leading
    rotations of any unit form the shared basis, applied first in every order (a rotation must lead)."""

    units: tuple[Recipe, ...]
    basis: tuple[Method, ...] = ()

    @property
    def name(self) -> str:
        """The set as written, the shared rotation leading: `quarot > rtn:w=4 ; wanda:p=0.3`."""
        return "".join(f"{m} > " for m in self.basis) + " ; ".join(str(u) for u in self.units)

    @property
    def id(self) -> str:
        return "".join(("".join(f"{m}>" for m in self.basis) + " + ".join(str(u) for u in self.units)).split())

    def single(self, index: int) -> Recipe:
        """Method `index` alone (after the shared basis)."""
        return Recipe(self.basis + self.units[index].stages)

    def recipe(self, order: Order) -> Recipe:
        return Recipe(self.basis + tuple(s for i in order for s in self.units[i].stages))

    def orders(self) -> list[Order]:
        """Every permutation, in lexicographic order of the units' indices."""
        return list(itertools.permutations(range(len(self.units))))

    def describe(self, order: Order) -> str:
        return " > ".join(str(self.units[i]) for i in order)


_STARTS_METHOD = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(:|>|$)")


def split_methods(text: str) -> list[str]:
    """`wanda:p=0.3, rtn:w=4,a=4,kv=4, sparsegpt:p=0.1` -> the three method texts.

    ';' always separates. A ',' separates only where a method name follows (`, sparsegpt:...`, `, quarot`);
    otherwise it separates the parameters of one method (`w=4,a=4`).
    """
    units: list[str] = []
    for chunk in text.split(";"):
        for item in chunk.split(","):
            match = _STARTS_METHOD.match(item)
            starts = match is not None and "=" not in item.split(":")[0]
            if starts or not units or not units[-1].strip():
                units.append(item)
            else:
                units[-1] += "," + item
        units.append("")
    return [u.strip() for u in units if u.strip()]


def parse_method_set(text: str) -> MethodSet:
    """A set of methods to order, as `pqqp order --methods` and a suite's `order_search.sets` write it."""
    if not isinstance(text, str) or not text.strip():
        raise PqqpError(f"method set {text!r} is empty: write methods separated by ', ' or ';', "
                        f"e.g. 'wanda:p=0.3, rtn:w=4,a=4,kv=4, sparsegpt:p=0.1'")
    recipes = [parse_recipe(t) for t in split_methods(text)]
    basis: tuple[Method, ...] = ()
    units = []
    for recipe in recipes:
        if not recipe.methods:
            raise PqqpError(f"'{recipe}' in method set {text!r} compresses nothing: accepted pruners, quantizers, "
                            f"sharing or tuning stages (a rotation goes with the method after it: 'quarot > rtn:w=4')")
        if recipe.basis and basis and recipe.basis != basis:
            raise PqqpError(f"method set {text!r} has two different rotations: accepted one shared rotation")
        basis = recipe.basis or basis
        units.append(Recipe(recipe.methods))
    if len(units) < 2:
        raise PqqpError(f"method set {text!r} has {len(units)} method: at least 2 are needed to order")
    if len(set(units)) != len(units):
        raise PqqpError(f"method set {text!r} names a method twice: accepted distinct methods")
    if len(units) > 6:
        raise PqqpError(f"method set {text!r} has {len(units)} methods: at most 6 (6! = 720 orders) are accepted")
    return MethodSet(tuple(units), basis)


def recommend(single_metrics: list[float]) -> Order:
    """The intensity order: by decreasing single-method M (increasing CER), weakest first; a stable sort."""
    for i, m in enumerate(single_metrics):
        if math.isnan(m):
            raise PqqpError(f"single-method metric {i} is nan: a finite metric (or -inf for a collapse) is required")
    return tuple(sorted(range(len(single_metrics)), key=lambda i: -single_metrics[i]))


@dataclass(frozen=True)
class OrderOutcome:
    """How the recommended order did among all orders of one method set (M is higher-is-better)."""

    recommended: Order
    metrics: tuple[tuple[Order, float], ...]  # every order with its M

    @property
    def best(self) -> Order:
        return max(self.metrics, key=lambda om: om[1])[0]

    @property
    def best_metric(self) -> float:
        return max(m for _, m in self.metrics)

    def metric(self, order: Order) -> float:
        return dict(self.metrics)[order]

    @property
    def rank(self) -> int:
        """1 + the number of orders strictly better than the recommended one."""
        mine = self.metric(self.recommended)
        return 1 + sum(m > mine for _, m in self.metrics)

    @property
    def hit(self) -> bool:
        return self.rank == 1

    @property
    def regret(self) -> float:
        """M(best order) - M(recommended order) >= 0: what following the rule lost."""
        return self.best_metric - self.metric(self.recommended)

    @property
    def random_hit_rate(self) -> float:
        """The chance that a uniformly random order is a best one."""
        return sum(m == self.best_metric for _, m in self.metrics) / len(self.metrics)

    @property
    def random_regret(self) -> float:
        """The expected regret of a uniformly random order (exact: the mean over all orders)."""
        return sum(self.best_metric - m for _, m in self.metrics) / len(self.metrics)


def outcome(recommended: Order, metrics: dict[Order, float]) -> OrderOutcome:
    n = len(recommended)
    if sorted(recommended) != list(range(n)):
        raise PqqpError(f"recommended order {recommended} is not a permutation of 0..{n - 1}")
    missing = [o for o in itertools.permutations(range(n)) if o not in metrics]
    if missing:
        raise PqqpError(f"orders {missing[:3]} have no metric: all {math.factorial(n)} orders are needed")
    for order, m in metrics.items():
        if math.isnan(m):
            raise PqqpError(f"order {order} has metric nan: finite metrics (or -inf for a collapse) are required")
    return OrderOutcome(tuple(recommended), tuple(sorted(metrics.items())))


@dataclass(frozen=True)
class OrderSummary:
    """The rule over many method sets: how often it picks a best order, and its mean regret, vs random."""

    sets: int
    hit_rate: float
    mean_regret: float
    random_hit_rate: float
    random_regret: float
    mean_rank: float


def summarize(outcomes: list[OrderOutcome]) -> OrderSummary:
    if not outcomes:
        raise PqqpError("no method set has all its orders measured: nothing to summarize")
    n = len(outcomes)
    return OrderSummary(n, sum(o.hit for o in outcomes) / n, sum(o.regret for o in outcomes) / n,
                        sum(o.random_hit_rate for o in outcomes) / n, sum(o.random_regret for o in outcomes) / n,
                        sum(o.rank for o in outcomes) / n)


def cost_ratio(n: int) -> float:
    """Joint compressions an exhaustive search runs (n!) per single-method run the rule needs (n)."""
    return math.factorial(n) / n


# --------------------------------------------------------------------------------- scoring order predictors


@dataclass(frozen=True)
class MeasuredSet:
    """One method set with every order measured on the same evaluation windows: `nll` [orders, windows] holds
    each window's summed NLL, every window scoring `tokens` tokens; `orders` lists the rows' orders."""

    name: str
    orders: tuple[Order, ...]
    nll: np.ndarray
    tokens: int

    def ppl(self, windows: np.ndarray | None = None) -> np.ndarray:
        """Each order's perplexity on all windows ([orders]) or per resample (`windows` [R, w] -> [R, orders])."""
        if windows is None:
            return np.exp(self.nll.sum(axis=1) / (self.tokens * self.nll.shape[1]))
        picked = self.nll[:, windows]  # [orders, R, w]
        return np.exp(picked.sum(axis=2) / (self.tokens * windows.shape[1])).T

    def row(self, order: Order) -> int:
        if order not in self.orders:
            raise PqqpError(f"order {order} of set '{self.name}' was not measured: measured {list(self.orders)}")
        return self.orders.index(order)


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def text(self, digits: int = 2) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class PredictorScore:
    """A predictor over many measured sets. `within_noise`: sets whose picked order is not worse than the best
    beyond window noise (the paired bootstrap interval of ppl(pick) - ppl(best) reaches 0); `exact`: sets whose
    pick is the measured best. Regrets are ppl(pick) - ppl(best), with percentile bootstrap intervals (windows
    resampled, shared by every order and set; for the mean, the sets too)."""

    sets: int
    within_noise: int
    exact: int
    mean_regret: Interval
    worst_regret: Interval

    @property
    def within_noise_rate(self) -> float:
        return self.within_noise / self.sets


def within_noise(measured: MeasuredSet, pick: Order, replicates: np.ndarray, level: float) -> bool:
    """Whether `pick` is within the window noise of the set's best order: the `level` percentile interval of the
    paired bootstrap difference ppl(pick) - ppl(best) over `replicates` ([R, windows] indices) contains 0."""
    full = measured.ppl()
    best, mine = int(np.argmin(full)), measured.row(pick)
    if mine == best:
        return True
    resampled = measured.ppl(replicates)
    diff = resampled[:, mine] - resampled[:, best]
    return bool(np.quantile(diff, (1 - level) / 2) <= 0.0)


def regrets(measured: MeasuredSet, picks: np.ndarray, replicates: np.ndarray | None = None) -> np.ndarray:
    """ppl(pick) - ppl(best) for the order rows `picks` ([k]); per replicate [R, k] where `replicates` is given."""
    ppl = measured.ppl(replicates)
    if replicates is None:
        return ppl[picks] - ppl.min()
    return ppl[:, picks] - ppl.min(axis=1, keepdims=True)


def resampling(sets: list[MeasuredSet], resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap's draws: window indices [R, windows], shared by every set (all are measured on the same
    windows), and set indices [R, sets]."""
    windows = {s.nll.shape[1] for s in sets}
    if len(windows) != 1:
        raise PqqpError(f"the sets were measured on {sorted(windows)} windows: the same windows are required")
    width = windows.pop()
    rng = np.random.default_rng(seed)
    return rng.integers(0, width, size=(resamples, width)), rng.integers(0, len(sets), size=(resamples, len(sets)))


def score_predictor(sets: list[MeasuredSet], picks: list[Order], *, resamples: int = 2000, level: float = 0.95,
                    seed: int = 0) -> PredictorScore:
    """How the orders `picks` (one per set) did: within-noise and exact hits, mean and worst regret with intervals."""
    if not sets or len(sets) != len(picks):
        raise PqqpError(f"{len(picks)} picks for {len(sets)} sets: one pick per measured set is required")
    replicates, chosen = resampling(sets, resamples, seed)
    full = np.array([regrets(s, np.array([s.row(p)]))[0] for s, p in zip(sets, picks)])
    per_rep = np.stack([regrets(s, np.array([s.row(p)]), replicates)[:, 0] for s, p in zip(sets, picks)], axis=1)
    alpha = (1 - level) / 2
    means = np.take_along_axis(per_rep, chosen, axis=1).mean(axis=1)
    worst = per_rep.max(axis=1)
    return PredictorScore(
        len(sets), sum(within_noise(s, p, replicates, level) for s, p in zip(sets, picks)),
        sum(s.row(p) == int(np.argmin(s.ppl())) for s, p in zip(sets, picks)),
        Interval(float(full.mean()), *map(float, np.quantile(means, [alpha, 1 - alpha]))),
        Interval(float(full.max()), *map(float, np.quantile(worst, [alpha, 1 - alpha]))))


def score_random(sets: list[MeasuredSet], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
                 ) -> tuple[float, Interval]:
    """A uniformly random order: its expected within-noise rate (the mean fraction of a set's orders within noise)
    and its expected regret (the mean over each set's orders), with the same bootstrap as `score_predictor`."""
    replicates, chosen = resampling(sets, resamples, seed)
    rate = float(np.mean([np.mean([within_noise(s, o, replicates, level) for o in s.orders]) for s in sets]))
    full = np.array([regrets(s, np.arange(len(s.orders))).mean() for s in sets])
    per_rep = np.stack([regrets(s, np.arange(len(s.orders)), replicates).mean(axis=1) for s in sets], axis=1)
    means = np.take_along_axis(per_rep, chosen, axis=1).mean(axis=1)
    alpha = (1 - level) / 2
    return rate, Interval(float(full.mean()), *map(float, np.quantile(means, [alpha, 1 - alpha])))
