"""Mixed-precision weight quantization with iterative HAWQ-V2 bit allocation, in progressive or regressive order
(paper §5.4 "Mixed-precision Quantization", Fig. 10, App. C; Dong et al. 2020, "HAWQ-V2: Hessian Aware
trace-Weighted Quantization of Neural Networks").

HAWQ-V2 gives each layer i the sensitivity Ω_i(b) = Tr(H_i) / n_i · ||Q_b(W_i) - W_i||² (its eqs. 3-4), with
Tr(H_i) the trace of the loss Hessian with respect to the layer's n_i weights, estimated by Hutchinson's method
(its Alg. 1), and picks the bit widths that minimise Σ_i Ω_i(b_i) under a size budget. The paper treats each
bit width as a compression method of its own and allocates them *iteratively* rather than in one shot
(App. C): for each bit width b in turn, the traces are re-estimated on the current, partially quantized model,
the remaining layers are re-allocated among the bit widths not yet used, and the layers allocated b are
quantized now. Progressive order (`prog`, 8 -> 2) quantizes the high-bit layers (weak perturbations) first and
the low-bit ones (strong) last; regressive order (`regr`, 2 -> 8) the opposite. The order matters because the
traces, and GPTQ's calibration, of the later groups see the earlier groups already quantized.

The allocation is an exact multiple-choice knapsack solved by dynamic programming over layers: the achieved
mean bit width (weighted by parameter count) never exceeds `avg`. Sizes are counted in units of the greatest
common divisor of the Linear sizes (110 592 weights for SmolLM2-135M: 960 units), so the DP is exact; since more
bits lower Ω, the optimum leaves less of the budget unused than the cheapest remaining upgrade (SmolLM2-135M,
avg=4.5, bits 3:4:6:8: exactly 4.5). A model whose sizes make more than `MAX_UNITS` units gets coarser units with
sizes rounded up, which keeps the budget but may leave up to about one unit per layer of it unused.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace
from fractions import Fraction
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from ..blocks import block_attention, block_linears, decoder_blocks
from ..errors import PqqpError
from .base import B_ORIG, LayerWork, Method, Param, clip_mode, positive_int_or_none
from .gptq import GPTQ
from .quantize import WeightGrid, fit_grid
from .base import positive_int

ORDERS = {"prog": "progressive: most bits first, fewest last (8 -> 2)", "regr": "regressive: fewest bits first (2 -> 8)"}
BASES = ("rtn", "gptq")
MAX_UNITS = 16384  # sizes coarser than this many units are rounded up (see the module docstring)


def bit_choices(text: str) -> tuple[int, ...]:
    """`2:3:4` -> (2, 3, 4): strictly increasing integers in 2..16."""
    values = tuple(int(part) for part in text.split(":"))
    if not values or any(not 2 <= v <= 16 for v in values) or list(values) != sorted(set(values)):
        raise ValueError(text)
    return values


def one_of(*accepted: str):
    def parse(text: str) -> str:
        if text.lower() not in accepted:
            raise ValueError(text)
        return text.lower()

    return parse


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


# --- Hutchinson trace (HAWQ-V2 Alg. 1) ------------------------------------------------------------------


@contextmanager
def only_trainable(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Gradients for `params` only (the rest of the model frozen), restored afterwards."""
    before = {id(p): p.requires_grad for p in model.parameters()}
    chosen = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    try:
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(before[id(p)])


def rademacher(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random ±1 tensor shaped like `like`."""
    signs = torch.randint(0, 2, like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return signs.mul_(2).sub_(1)


def hutchinson_traces(model: nn.Module, weights: dict[str, nn.Parameter], samples: torch.Tensor, probes: int,
                      seed: int, progress: bool = False) -> dict[str, float]:
    """Tr(H_i) of the mean next-token loss over `samples` ([n, seqlen] ids) for each weight i, by Hutchinson's
    estimator (HAWQ-V2 Alg. 1): Tr(H_i) = E[v_iᵀ (H v)_i] with v Rademacher over all the weights at once (the
    cross terms v_iᵀ H_ij v_j have mean zero), H v by double backprop. Per sample, one gradient with its graph
    serves all `probes` probes; the estimate is the mean over samples and probes.

    SDPA runs its math kernel here: the fused kernels' backward has no derivative of its own.
    """
    params = list(weights.values())
    device = params[0].device
    generator = torch.Generator(device=device).manual_seed(seed)
    totals = torch.zeros(len(params), dtype=torch.float64, device=device)
    with torch.enable_grad(), only_trainable(model, params), sdpa_kernel(SDPBackend.MATH):
        for sample in tqdm(samples, desc="hutchinson", unit="sample", leave=False, disable=not progress):
            ids = sample.unsqueeze(0).to(device)
            loss = model(ids, labels=ids, use_cache=False).loss
            grads = torch.autograd.grad(loss, params, create_graph=True)
            for probe in range(probes):
                vs = [rademacher(p, generator) for p in params]
                hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=probe + 1 < probes)
                totals += torch.stack([(hv.double() * v).sum() for hv, v in zip(hvs, vs)])
            del loss, grads
    return dict(zip(weights, (totals / (len(samples) * probes)).tolist()))


# --- allocation: multiple-choice knapsack by DP ---------------------------------------------------------------


def size_units(sizes: Sequence[int], limit: int = MAX_UNITS) -> tuple[int, list[int]]:
    """A unit of weights and each size in units: their gcd (exact), or, if that makes more than `limit` units,
    a coarser unit with each size rounded up (so a budget met in units is met in weights)."""
    unit = math.gcd(*sizes)
    if sum(sizes) // unit > limit:
        unit = -(-sum(sizes) // limit)
    return unit, [-(-n // unit) for n in sizes]


def allocate(sizes: Sequence[int], sensitivity: torch.Tensor, choices: Sequence[int], budget: int) -> list[int]:
    """Bits from `choices` (increasing) per layer, minimising Σ_i sensitivity[i, k_i] subject to
    Σ_i sizes[i] · bits_i <= budget (sizes and budget in the same integer units): the multiple-choice knapsack,
    solved exactly by DP over layers on the budget above the all-lowest-bits size. Ties go to more bits.
    Returns None when even the lowest bits exceed the budget."""
    spare = budget - choices[0] * sum(sizes)
    if spare < 0:
        return None
    cost = torch.zeros(spare + 1, dtype=torch.float64)  # least Σ sensitivity of the layers so far, per spare used at most
    picks = torch.empty(len(sizes), spare + 1, dtype=torch.int8 if len(choices) < 128 else torch.int16)
    for i, size in enumerate(sizes):
        candidates = torch.full((len(choices), spare + 1), math.inf, dtype=torch.float64)
        for k, bits in enumerate(choices):
            extra = size * (bits - choices[0])
            if extra <= spare:
                candidates[k, extra:] = cost[: spare + 1 - extra] + float(sensitivity[i, k])
        cost, last = candidates.flip(0).min(dim=0)  # of equal minima, the most bits (the budget is used)
        picks[i] = len(choices) - 1 - last
    allocation, left = [], spare
    for i in reversed(range(len(sizes))):
        k = int(picks[i, left])
        allocation.append(choices[k])
        left -= sizes[i] * (choices[k] - choices[0])
    return allocation[::-1]


# --- the method -------------------------------------------------------------------------------------------------


def rtn_error(weight: torch.Tensor, bits: int, group: int | None, clip: str | float) -> tuple[WeightGrid, float]:
    """The RTN grid of a weight at `bits` and its squared rounding error ||Q_b(W) - W||²."""
    grid = fit_grid(weight, bits, group, clip)
    return grid, float((grid.round(weight.float()) - weight.float()).double().pow(2).sum())


class MPQ(Method):
    """Weight-only mixed precision over the decoder-block Linears, bits allocated iteratively by HAWQ-V2.

    Every step re-estimates the traces on the current model and re-allocates the layers not yet quantized
    among the bit widths not yet used, with the budget left by the layers already quantized (which count
    with their bits): an allocation feasible at one step stays feasible at the next, so the budget is met.
    Ω uses the RTN rounding error also when `base=gptq` (GPTQ's own error is known only after it runs).
    Exact zeros stay zero (an earlier pruning stage's mask is kept): RTN's symmetric grid maps zero to zero,
    and GPTQ is handed them as its mask. A negative trace estimate counts as zero (HAWQ-V2 assumes H ⪰ 0).
    """

    name = "mpq"
    kind = "quant"
    slow = True
    uses_layer_pass = True
    scope = "model"
    granularity = "weight (bits per Linear, per output channel or group)"
    needs_calibration = True
    summary = "mixed-precision weights, iterative HAWQ-V2 allocation in progressive or regressive order"
    params: ClassVar[tuple[Param, ...]] = (
        Param("avg", positive_float, None, "a number of bits between the smallest and largest of bits=",
              "target mean weight bits, weighted by parameter count (C_Q = 16 / avg)"),
        Param("bits", bit_choices, (2, 3, 4, 5, 6, 7, 8), "increasing integers 2..16 joined by ':', e.g. 3:4:6:8",
              "the bit widths a Linear may get (the paper's App. C: 2..8)"),
        Param("order", one_of(*ORDERS), "prog", " or ".join(ORDERS),
              "prog: quantize the most-bits layers first and the fewest-bits last (weaker first); regr: the reverse"),
        Param("base", one_of(*BASES), "rtn", " or ".join(BASES), "the per-layer quantizer at the allocated bits"),
        Param("g", positive_int_or_none, None, "a positive group size dividing in_features, or none",
              "weight group size (none: per output channel)"),
        Param("clip", clip_mode, "mse", "mse, none, or a ratio in (0, 1]", "weight clipping: MSE grid search, none, or a fixed ratio"),
        Param("probes", positive_int, 2, "a positive integer", "Hutchinson probes per calibration window and step"),
        Param("samples", positive_int, 4, "a positive integer", "calibration windows the traces are estimated on (the first ones)"),
        Param("seqlen", positive_int_or_none, 256, "a positive integer, or none",
              "tokens per window for the traces, the first ones (none: the whole calibration window)"),
    )

    def check(self) -> None:
        avg, bits = self.values["avg"], self.values["bits"]
        if avg is None:
            raise PqqpError(f"method 'mpq' needs avg=<mean weight bits>: accepted {bits[0]}..{bits[-1]}, e.g. mpq:avg=4.5")
        if not bits[0] <= avg <= bits[-1]:
            raise PqqpError(f"bad value avg={avg:g} for method 'mpq': accepted {bits[0]}..{bits[-1]} "
                            f"(the smallest and largest of bits={':'.join(map(str, bits))})")

    def ratio(self) -> float:
        """C_Q = B_orig / avg (memory of the weights, paper §2)."""
        return B_ORIG / self.values["avg"]

    def validate(self, linears: dict[str, nn.Linear]) -> None:
        group = self.values["g"]
        for name, linear in linears.items():
            if group and linear.in_features % group:
                raise PqqpError(f"group size g={group} does not divide in_features={linear.in_features} of {name}: "
                                f"accepted a divisor of every layer's input size, or g=none for per-channel")

    @property
    def sequence(self) -> tuple[int, ...]:
        """The bit widths in the order their layers are quantized."""
        bits = self.values["bits"]
        return tuple(reversed(bits)) if self.values["order"] == "prog" else bits

    @torch.no_grad()
    def apply_model(self, model: Any, calibration: torch.Tensor | None, device: torch.device, seed: int,
                    progress: bool = True, layer_pass: Callable[..., None] | None = None) -> dict:
        """Quantize every decoder Linear in place at its allocated bits, one bit width at a time in `order`.

        Returns the per-Linear `bits` and `grids` (by `blocks.<i>.<linear>`, for the engine's records) and the
        allocation: the bits and the last trace estimate of each Linear (per block, in `linears` order) and,
        per step, the bit width, how many Linears it quantized and the budget share left after it.
        """
        if calibration is None or calibration.numel() == 0:
            raise PqqpError("mpq needs calibration samples: pass calibration token ids")
        if layer_pass is None and self.values["base"] == "gptq":
            raise PqqpError("mpq with base=gptq runs through the engine (compress.compress), which gives it its layer pass")
        home = next(model.parameters()).device
        model.to(device)
        try:
            result = self.allocate_and_quantize(model, calibration.to(device), device, seed, progress, layer_pass)
        finally:
            model.to(home)
        result["grids"] = {p: replace(g, scale=g.scale.to(home), zero=g.zero.to(home)) for p, g in result["grids"].items()}
        return result

    def allocate_and_quantize(self, model: nn.Module, calibration: torch.Tensor, device: torch.device, seed: int,
                              progress: bool, layer_pass: Callable[..., None] | None) -> dict:
        blocks = decoder_blocks(model)
        linears = {f"blocks.{i}.{name}": lin for i, b in enumerate(blocks) for name, lin in block_linears(b).items()}
        paths = list(linears)
        unit, units = size_units([lin.weight.numel() for lin in linears.values()])
        size = dict(zip(paths, units))
        total = sum(lin.weight.numel() for lin in linears.values())
        budget = math.floor(Fraction(self.values["avg"]) * total / unit)  # in unit-bits: Σ size·bits <= budget
        windows = calibration[: self.values["samples"], : self.values["seqlen"]]
        errors = self.rounding_errors(linears, progress)
        assigned: dict[str, int] = {}
        grids: dict[str, WeightGrid] = {}
        traces: dict[str, float] = {}
        steps = []
        sequence = self.sequence
        bar = tqdm(sequence, desc=f"mpq {self.values['order']}", unit="step", leave=False, disable=not progress)
        for step, bits in enumerate(bar):
            remaining = [p for p in paths if p not in assigned]
            if not remaining:
                break
            options = sorted(sequence[step:])
            left = budget - sum(size[p] * b for p, b in assigned.items())
            if len(options) == 1:
                allocation = dict.fromkeys(remaining, bits)
            else:
                bar.set_postfix_str(f"traces of {len(remaining)} Linears")
                traces.update(hutchinson_traces(model, {p: linears[p].weight for p in remaining}, windows,
                                                self.values["probes"], seed + step, progress))
                omega = torch.tensor([[max(traces[p], 0.0) / linears[p].weight.numel() * errors[p][b][1] for b in options]
                                      for p in remaining], dtype=torch.float64)
                chosen = allocate([size[p] for p in remaining], omega, options, left)
                if chosen is None:
                    lowest = Fraction(sum(units) * self.values["bits"][0] * unit, total)
                    raise PqqpError(f"bad value avg={self.values['avg']:g} for method 'mpq': with this model's Linear "
                                    f"sizes in units of {unit} weights, accepted avg >= {float(lowest):.4f}")
                allocation = dict(zip(remaining, chosen))
            group = [p for p in remaining if allocation[p] == bits]
            bar.set_postfix_str(f"{len(group)} Linears at {bits} bits")
            grids.update(self.quantize(model, linears, group, bits, errors, calibration, device, seed, progress,
                                       layer_pass))
            assigned.update(dict.fromkeys(group, bits))
            steps.append({"bits": bits, "linears": len(group),
                          "budget_left": round((left - bits * sum(size[p] for p in group)) / budget, 6)})
        used = sum(linears[p].weight.numel() * b for p, b in assigned.items())
        if used > Fraction(self.values["avg"]) * total:
            raise RuntimeError(f"mpq exceeded its budget: mean {used / total} bits > avg={self.values['avg']}")
        return {
            "bits": assigned, "grids": grids,
            "mean_bits": round(used / total, 4), "sequence": list(sequence), "steps": steps,
            "linears": list(block_linears(blocks[0])),
            "allocation": per_block(blocks, lambda path: assigned[path]),
            "traces": per_block(blocks, lambda path: float(f"{traces[path]:.4g}") if path in traces else None),
        }

    def rounding_errors(self, linears: dict[str, nn.Linear], progress: bool) -> dict[str, dict[int, tuple[WeightGrid, float]]]:
        """Each Linear's RTN grid and squared rounding error at each bit width, computed once: a Linear is left
        unchanged until it is quantized, so its errors hold at every step."""
        g, clip = self.values["g"], self.values["clip"]
        return {path: {b: rtn_error(lin.weight.data, b, g, clip) for b in self.values["bits"]}
                for path, lin in tqdm(linears.items(), desc="mpq rounding errors", unit="Linear", leave=False,
                                      disable=not progress)}

    def quantize(self, model: nn.Module, linears: dict[str, nn.Linear], group: list[str], bits: int, errors: dict,
                 calibration: torch.Tensor, device: torch.device, seed: int, progress: bool,
                 layer_pass: Callable[..., None] | None) -> dict[str, WeightGrid]:
        """Quantize the Linears `group` at `bits` on the current model: RTN with the grid found for Ω, or GPTQ
        through the engine's block-by-block pass, calibrated on the model as it is now."""
        if not group:
            return {}
        if self.values["base"] == "rtn":
            for path in group:
                grid = errors[path][bits][0]
                weight = linears[path].weight.data
                weight.copy_(grid.round(weight))
            return {path: errors[path][bits][0] for path in group}
        works = gptq_works(model, set(group), seed)
        stage = GPTQ(w=bits, g=self.values["g"], clip=self.values["clip"])
        layer_pass(model, (stage,), calibration, device, works, {}, progress, seed, {})
        return {f"blocks.{w.index}.{name}": grid for w in works.values() for name, grid in w.grids.items()}


def per_block(blocks: nn.ModuleList, value) -> list[list]:
    """`value(path)` for every decoder Linear, as one list per block in the block's Linear order."""
    return [[value(f"blocks.{i}.{name}") for name in block_linears(block)] for i, block in enumerate(blocks)]


def gptq_works(model: nn.Module, group: set[str], seed: int) -> dict[int, LayerWork]:
    """The engine's per-block works restricted to the Linears `group` (paths `blocks.<i>.<linear>`), each
    handed its exact zeros as a mask, so GPTQ keeps them zero (a pruned weight stays pruned)."""
    works = {}
    for index, block in enumerate(decoder_blocks(model)):
        chosen = {n: lin for n, lin in block_linears(block).items() if f"blocks.{index}.{n}" in group}
        work = LayerWork(index, block, chosen, block_attention(block), reference={}, seed=seed)
        for name, linear in chosen.items():
            zeros = linear.weight.data == 0
            if zeros.any():
                work.masks[name] = ~zeros
        works[id(block)] = work
    return works
