"""Order predictors (paper Problem 1, App. D.7): pick an order of n methods without measuring all n! orders.

Every predictor has one signature, `predict(methods, context) -> Prediction`, so `pqqp order --predictor NAME`,
a suite's `order_search.predictor` and the benchmark (benchmarks/order_prediction.py) pick one by name:

- `intensity`: the Progressive Intensity rule (ordering.recommend): each method alone on the whole model, mapped
  to its CER on the reference quantizer's curve, weakest first. It sees no interaction between methods.
- `probe`: every order applied to a sample of decoder blocks, on the calibration inputs the dense model gives them,
  scored by the error of the sampled blocks' outputs (`block_error`); the order with the smallest error wins. The
  paper's layer-wise analysis (§4) finds lower layer-wise degradation for weak->strong orders: this measures that
  degradation directly, for each order, on k of the L blocks, with no evaluation pass.
- `pairwise`: the probe on each pair of methods in both orders (n(n-1) two-method probes instead of n! n-method
  ones); the order is the methods sorted by their pairwise wins. By the paper's transposition argument (§3.3) an
  order is optimal when no adjacent swap improves it, and a swap of neighbours is decided by that pair.
- `probe-intensity`: each method alone on the sampled blocks, weakest (smallest block error) first: the
  intensity rule at the probe's price.

A model-scope unit (block removal: SLEB) cannot act on a sample of blocks: the probe predictors order the
layer-scope units among themselves and put model-scope units first (`place_model_scope`). A shared rotation
(the set's basis) is applied to the whole model once, before the blocks are sampled.

Costs count what a predictor computes: block compressions (one stage applied to one decoder block), block-forward
tokens (tokens passed through one decoder block) and seconds; `exhaustive_cost` gives the same for measuring
every order on the whole model.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import nn

from .blocks import block_attention, block_call_kwargs, block_linears, capture_block_inputs, decoder_blocks, run_block
from .compress import compress, compress_block
from .errors import PqqpError
from .methods import LayerWork, Method
from .ordering import MethodSet, Order, recommend
from .settings import PREDICTORS
from .spec import Recipe


@dataclass(frozen=True)
class Cost:
    """What a prediction computed. `full_runs`: whole-model compressions and evaluations (the intensity rule's
    single runs; measured ones are counted whether or not a store already held them)."""

    compressions: int = 0
    forward_tokens: int = 0
    seconds: float = 0.0
    full_runs: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.compressions + other.compressions, self.forward_tokens + other.forward_tokens,
                    self.seconds + other.seconds, self.full_runs + other.full_runs)


@dataclass(frozen=True)
class Prediction:
    """The predicted order (indices into the set's units), the scores it was chosen by (lower is better, per
    candidate: an order, a pair or a method), and its cost."""

    order: Order
    scores: dict[str, float]
    cost: Cost


@dataclass
class BlockProbe:
    """One sampled decoder block with its dense calibration inputs, call arguments and dense outputs."""

    index: int
    block: nn.Module
    inputs: list[torch.Tensor]
    kwargs: dict
    outputs: list[torch.Tensor]


@dataclass
class ProbeContext:
    """What the probe predictors work on: the dense model, calibration ids [n, seqlen], the sampled block indices,
    and the single-method metrics for `intensity` (a callable: a set's unit index -> M, higher is better)."""

    model: nn.Module | None = None
    calibration: torch.Tensor | None = None
    blocks: int = 2
    seed: int = 0
    device: torch.device = torch.device("cpu")
    single_metric: Callable[[MethodSet, int], float] | None = None
    single_cost: Callable[[MethodSet, int], Cost] | None = None
    _probes: dict[tuple, tuple[list[BlockProbe], Cost]] = field(default_factory=dict, repr=False)

    def sample(self) -> tuple[int, ...]:
        """`blocks` indices spread evenly over the depth: the middle of each of `blocks` equal slices."""
        total = len(decoder_blocks(self.model))
        k = min(self.blocks, total)
        return tuple(sorted({min(total - 1, int((i + 0.5) * total / k)) for i in range(k)}))

    def probes(self, basis: tuple[Method, ...]) -> tuple[list[BlockProbe], Cost]:
        """The sampled blocks of the dense model (rotated by `basis` first, if any), built once per basis."""
        if self.model is None or self.calibration is None:
            raise PqqpError("the probe predictors need the dense model and calibration samples: run them through a bench")
        key = tuple(str(m) for m in basis)
        if key not in self._probes:
            self._probes[key] = sample_blocks(self.model, self.calibration, self.sample(), basis, self.seed, self.device)
        return self._probes[key]


class Predictor(Protocol):
    name: str

    def predict(self, methods: MethodSet, context: ProbeContext) -> Prediction: ...


@torch.no_grad()
def sample_blocks(model: nn.Module, calibration: torch.Tensor, sample: tuple[int, ...], basis: tuple[Method, ...],
                  seed: int, device: torch.device) -> tuple[list[BlockProbe], Cost]:
    """Run the dense model (a rotated copy where `basis` is given) over the calibration samples up to the last
    sampled block, keeping each sampled block with its inputs and outputs (copies: the model is not changed)."""
    start = time.perf_counter()
    compressions = 0
    if basis:
        model = copy.deepcopy(model)
        torch.manual_seed(seed)
        compress(model, Recipe(basis), calibration, device=device, seed=seed, progress=False)
        compressions = len(basis) * len(decoder_blocks(model))
    blocks = decoder_blocks(model)
    calibration = calibration.to(device)
    calls = block_call_kwargs(model, blocks, calibration[0])
    inputs = capture_block_inputs(model, blocks, calibration)
    tokens = calibration.numel()
    probes, forwards = [], 0
    for index in range(max(sample) + 1):
        outputs = run_block(blocks[index], inputs, calls[index])
        forwards += tokens
        if index in sample:
            probes.append(BlockProbe(index, copy.deepcopy(blocks[index]), inputs, calls[index], outputs))
        inputs = outputs
    return probes, Cost(compressions, forwards, time.perf_counter() - start)


@torch.no_grad()
def compressed_block(probe: BlockProbe, stages: tuple[Method, ...], seed: int) -> tuple[nn.Module, int]:
    """A copy of the sampled block with `stages` applied in order, each calibrated on the block's dense inputs
    through the block as the earlier stages left it (the engine's `compress_block`; for block 0, whose inputs are
    dense in a whole-model run too, the weights equal the engine's bit for bit), and the tokens it ran forward."""
    block = copy.deepcopy(probe.block)
    linears = block_linears(block)
    work = LayerWork(probe.index, block, linears, block_attention(block),
                     reference={n: lin.weight.data.clone() for n, lin in linears.items()}, seed=seed)
    counted = [0]

    def count(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        counted[0] += x.shape[:-1].numel()

    handle = block.register_forward_hook(count, with_kwargs=True)
    try:
        torch.manual_seed(seed)
        compress_block(work, stages, probe.inputs, probe.kwargs, {}, {})
    finally:
        handle.remove()
    return block, counted[0]


@torch.no_grad()
def block_error(probe: BlockProbe, stages: tuple[Method, ...], seed: int) -> tuple[float, Cost]:
    """The squared error of the compressed block's outputs relative to the block's own contribution,
    sum ||y~ - y||^2 / sum ||y - x||^2 over the calibration inputs, with the cost of computing it."""
    start = time.perf_counter()
    block, forwards = compressed_block(probe, stages, seed)
    outputs = run_block(block, probe.inputs, probe.kwargs)
    forwards += sum(x.shape[:-1].numel() for x in probe.inputs)
    error = sum(float((o.float() - y.float()).pow(2).sum()) for o, y in zip(outputs, probe.outputs))
    scale = sum(float((y.float() - x.float()).pow(2).sum()) for x, y in zip(probe.inputs, probe.outputs))
    return error / scale, Cost(len(stages), forwards, time.perf_counter() - start)


def probe_error(methods: MethodSet, units: tuple[int, ...], context: ProbeContext) -> tuple[float, Cost]:
    """The mean `block_error` over the sampled blocks of the layer-scope `units` applied in that order."""
    probes, _ = context.probes(methods.basis)
    stages = tuple(s for i in units for s in methods.units[i].stages)
    for stage in stages:  # the engine's check, before any work: e.g. a group size that does not divide a layer
        stage.validate(block_linears(probes[0].block))
    total, cost = 0.0, Cost()
    for probe in probes:
        error, spent = block_error(probe, stages, context.seed)
        total, cost = total + error, cost + spent
    return total / len(probes), cost


def layer_units(methods: MethodSet) -> tuple[list[int], list[int]]:
    """The set's units split into those the probe can apply to one block (every stage layer-scope) and the rest."""
    layer = [i for i, u in enumerate(methods.units) if all(s.scope == "layer" for s in u.stages)]
    return layer, [i for i in range(len(methods.units)) if i not in layer]


def place_model_scope(layer_order: tuple[int, ...], model_units: list[int]) -> Order:
    """The full order: model-scope units (block removal) first, in the order given, then the layer-scope ones."""
    return tuple(model_units) + tuple(layer_order)


def sampling_cost(methods: MethodSet, context: ProbeContext) -> Cost:
    """The dense pass that samples the blocks, counted once per set (it is shared by all its probes)."""
    return context.probes(methods.basis)[1]


@dataclass(frozen=True)
class Intensity:
    """The Progressive Intensity rule: single-method M on the whole model, weakest (highest M) first."""

    name: str = "intensity"

    def predict(self, methods: MethodSet, context: ProbeContext) -> Prediction:
        if context.single_metric is None:
            raise PqqpError("predictor 'intensity' needs each method's single-run metric: run it through a bench")
        singles = [context.single_metric(methods, i) for i in range(len(methods.units))]
        cost = Cost()
        if context.single_cost is not None:
            for i in range(len(methods.units)):
                cost = cost + context.single_cost(methods, i)
        return Prediction(recommend(singles), {str(methods.units[i]): -m for i, m in enumerate(singles)}, cost)


def probed(methods: MethodSet, candidates: list[tuple[int, ...]], context: ProbeContext
           ) -> tuple[dict[tuple[int, ...], float], Cost]:
    """Each candidate (units in order) probed on the sampled blocks, with the cost of sampling them and probing."""
    cost, errors = sampling_cost(methods, context), {}
    for units in candidates:
        errors[units], spent = probe_error(methods, units, context)
        cost = cost + spent
    return errors, cost


@dataclass(frozen=True)
class Probe:
    """Every order of the layer-scope units on the sampled blocks; the smallest block error wins (the first
    candidate of equal ones)."""

    name: str = "probe"

    def predict(self, methods: MethodSet, context: ProbeContext) -> Prediction:
        layer, model_units = layer_units(methods)
        errors, cost = probed(methods, list(itertools.permutations(layer)), context)
        best = min(errors, key=errors.get)
        return Prediction(place_model_scope(best, model_units), {describe(methods, o): e for o, e in errors.items()}, cost)


@dataclass(frozen=True)
class Pairwise:
    """Each pair of layer-scope units probed in both orders; units sorted by pairwise wins (Copeland). Ties (a
    cycle of preferences) go to the unit whose orders starting with it had the smaller summed error."""

    name: str = "pairwise"

    def predict(self, methods: MethodSet, context: ProbeContext) -> Prediction:
        layer, model_units = layer_units(methods)
        pairs = [o for i, j in itertools.combinations(layer, 2) for o in ((i, j), (j, i))]
        errors, cost = probed(methods, pairs, context)
        wins = {i: sum(errors[(i, j)] <= errors[(j, i)] for j in layer if j != i) for i in layer}
        leading = {i: sum(e for o, e in errors.items() if o[0] == i) for i in layer}
        order = tuple(sorted(layer, key=lambda i: (-wins[i], leading[i])))
        return Prediction(place_model_scope(order, model_units), {describe(methods, o): e for o, e in errors.items()}, cost)


@dataclass(frozen=True)
class ProbeIntensity:
    """Each layer-scope unit alone on the sampled blocks; the smallest block error (the weakest) first."""

    name: str = "probe-intensity"

    def predict(self, methods: MethodSet, context: ProbeContext) -> Prediction:
        layer, model_units = layer_units(methods)
        errors, cost = probed(methods, [(i,) for i in layer], context)
        order = tuple(sorted(layer, key=lambda i: errors[(i,)]))
        return Prediction(place_model_scope(order, model_units), {describe(methods, o): e for o, e in errors.items()}, cost)


def describe(methods: MethodSet, units: tuple[int, ...]) -> str:
    return " > ".join(str(methods.units[i]) for i in units)


def predictor(name: str) -> Predictor:
    """The predictor called `name` (one of PREDICTORS)."""
    table: dict[str, Predictor] = {p.name: p for p in (Intensity(), Probe(), Pairwise(), ProbeIntensity())}
    if name not in table:
        raise PqqpError(f"unknown order predictor {name!r}: accepted {', '.join(PREDICTORS)}")
    return table[name]


def run_cost(stages: tuple[Method, ...], layers: int, calib_tokens: int, eval_tokens: int) -> Cost:
    """One whole-model compression of `stages` and its evaluation: a block compression per stage and block;
    block-forward tokens of each calibrated pass (statistics and propagation through every block,
    `compress.layer_pass`) and of the evaluation. SLEB's own scoring passes are not counted (a lower bound)."""
    cost = Cost(0, eval_tokens * layers, 0.0, 1)
    for stage in stages:
        calibrated = stage.needs_calibration and stage.scope == "layer"
        cost = cost + Cost(layers, calib_tokens * ((layers if stage.statistic else 0) + layers - 1) if calibrated else 0)
    return cost


def exhaustive_cost(methods: MethodSet, layers: int, calib_tokens: int, eval_tokens: int) -> Cost:
    """Measuring every order on the whole model, each from scratch (`run_cost` n! times; no prefix reuse)."""
    one = run_cost(methods.recipe(methods.orders()[0]).stages, layers, calib_tokens, eval_tokens)
    count = math.factorial(len(methods.units))
    return Cost(one.compressions * count, one.forward_tokens * count, 0.0, count)
