"""Apply a recipe to a model as the paper composes methods: f1 > f2 is (f2 ∘ f1)(φ) (§2).

Schedules (`passes`): `staged`, the default, gives every stage its own pass over the model the earlier stages
left; `fused` runs consecutive layer-scope stages block by block in one pass (cheaper for a single recipe, but a
stage's statistics then also see earlier blocks compressed by the stages after it: another model). A pass is the
SparseGPT/GPTQ sequential scheme: for each block, in order, move it to the compute device, collect the input
statistics its stages ask for (forward hooks over the calibration inputs), apply them, free the statistics, then
run the compressed block to produce the calibration inputs of the next block. Model-scope stages (block removal,
rotations) act on the whole model between passes.

At the end of every pass the engine's state is a complete compressed model of the recipe's prefix; a later
recipe with that prefix can start from it (`CompressionState`, prefixes.py) and ends bit for bit where a run from
scratch would.

Order semantics (paper §3, design notes): in P->Q the quantizer keeps the pruning mask (pruned weights stay
exactly zero); in Q->P the pruner scores the quantized weights, with statistics gathered through the
quantized activations and KV cache, and breaks score ties by the weight's magnitude before the recipe's first
layer-scope pass over the block.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .blocks import block_attention, block_call_kwargs, block_linears, capture_block_inputs, decoder_blocks, move_outside_blocks, run_block
from .errors import PqqpError
from .methods import B_ORIG, LayerWork, Method
from .methods.statistics import input_statistics
from .methods.quantize import WeightGrid
from .offload import home_of, refuse_model_scope, visiting
from .settings import check_schedule
from .spec import Recipe


@dataclass
class LinearRecord:
    """What one Linear ended up with: mask sparsity (weights forced to zero by pruning), all zeros, bits."""

    name: str
    numel: int
    mask_sparsity: float
    zero_fraction: float
    w_bits: int | None
    a_bits: int | None


@dataclass
class CompressionReport:
    """What a recipe asked for next to what it achieved, per Linear and in total, with timings.

    `dense_numel` counts the decoder Linear weights before compression, so removed blocks (SLEB) count as
    pruned; `structure` holds what model-scope stages recorded (removed blocks, rotations, shared bases: a `share`
    entry, dense / stored parameters, multiplies into the achieved total). `grids` holds the
    weight grid each quantized Linear ended on (by the `LinearRecord` name, `blocks.<i>.<linear>`): what an
    export to integer formats needs to write the very weights that were evaluated. It is not part of `as_dict`.
    """

    recipe: str
    requested: dict[str, float]
    dense_numel: int = 0
    linears: list[LinearRecord] = field(default_factory=list)
    kv_bits: list[int | None] = field(default_factory=list)
    structure: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    grids: dict[str, WeightGrid] = field(default_factory=dict, repr=False)
    reused: str = ""  # the cached recipe prefix this compression started from (prefixes.py), if any

    def achieved(self) -> dict[str, float | None]:
        present = sum(r.numel for r in self.linears) or 1
        dense = self.dense_numel or present
        kept = sum(r.numel * (1.0 - r.mask_sparsity) for r in self.linears)
        sparsity = 1.0 - kept / dense
        zeros = sum(r.zero_fraction * r.numel for r in self.linears) / present
        bits = {r.w_bits for r in self.linears}
        mean_bits = sum((r.w_bits or B_ORIG) * r.numel for r in self.linears) / present
        prune = 1.0 / (1.0 - sparsity)
        quant = B_ORIG / mean_bits
        share = math.prod(s.get("share", 1.0) for s in self.structure)  # sharing stages' C_S (dense / stored)
        return {
            "sparsity": sparsity,
            "zero_fraction": zeros,
            "w_bits": bits.pop() if len(bits) == 1 else round(mean_bits, 4),
            "a_bits": max({r.a_bits for r in self.linears} - {None}, default=None),
            "kv_bits": max(set(self.kv_bits) - {None}, default=None),
            "prune": prune,
            "quant": quant,
            "total": prune * quant * share,
            **({"share": share} if share != 1.0 else {}),
        }

    def as_dict(self) -> dict:
        fields = {k: v for k, v in asdict(replace(self, grids={})).items() if k != "grids"}
        return {**fields, "achieved": self.achieved()}


def bits_label(achieved: dict) -> str:
    """The achieved bit widths as text, e.g. `W4 A4 KV4` (empty where nothing is quantized)."""
    return " ".join(f"{k.upper()}{achieved[f'{k}_bits']}" for k in ("w", "a", "kv") if achieved.get(f"{k}_bits"))


def broken_invariants(work: LayerWork, name: str, weight: torch.Tensor) -> tuple[torch.Tensor | None, bool]:
    """What the Linear `name` no longer keeps of earlier stages: its pruned weights that are non-zero (None
    without a mask), and whether its weights left their grid. `record` refuses either (our methods never do
    it); `reconcile` takes the weights as they are after a plugin stage."""
    mask = work.masks.get(name)
    refilled = None if mask is None else ~mask.to(weight.device) & (weight != 0)
    grid = work.grids.get(name)
    return refilled, grid is not None and not grid.holds(weight.to(grid.scale.device))


def record(work: LayerWork, prefix: str) -> list[LinearRecord]:
    """The achieved state of each Linear of a block, after checking that masks and grids were kept."""
    rows = []
    for name, linear in work.linears.items():
        mask = work.masks.get(name)
        weight = linear.weight.data if mask is None else linear.weight.data.to(mask.device)  # blocks may be home again
        bits = work.bits.get(name, {})
        refilled, off_grid = broken_invariants(work, name, weight)
        if refilled is not None and bool(refilled.any()):
            raise RuntimeError(f"{prefix}.{name}: a later stage made pruned weights non-zero (mask not kept)")
        if off_grid:
            raise RuntimeError(f"{prefix}.{name}: a later stage moved weights off the {work.grids[name].bits}-bit grid")
        rows.append(LinearRecord(
            f"{prefix}.{name}", weight.numel(), 0.0 if mask is None else 1.0 - mask.float().mean().item(),
            (weight == 0).float().mean().item(), bits.get("w"), bits.get("a"),
        ))
    return rows


def compress_block(work: LayerWork, stages: tuple[Method, ...], inputs: list[torch.Tensor], kwargs: dict, seconds: dict,
                   broken: dict[str, Counter]) -> None:
    for stage in stages:
        start = time.perf_counter()
        if stage.statistic is not None:
            with input_statistics(work.linears, stage.statistic) as stats:
                run_block(work.block, inputs, kwargs)
            work.stats = stats
        stage.apply(work)
        work.stats = {}
        if not stage.builtin():
            broken.setdefault(stage.canonical(), Counter()).update(reconcile(work))
        seconds[stage.canonical()] = seconds.get(stage.canonical(), 0.0) + time.perf_counter() - start


def reconcile(work: LayerWork) -> Counter:
    """After a plugin stage, take the block's weights as they are where the stage broke what earlier stages set.

    Our own methods keep every earlier mask and grid (`record` raises if not: a bug). A plugin wraps a library
    that may not (GPTQ implementations that refill pruned weights, pruners that move quantized weights off
    their grid): then the mask shrinks to the weights still zero, the grid and its bits are dropped, and the
    counts returned here become the report's `flags`, so the achieved ratio is the honest one and the case
    says why it missed the requested one.
    """
    counts: Counter = Counter()
    for name, linear in work.linears.items():
        refilled, off_grid = broken_invariants(work, name, linear.weight.data)
        if refilled is not None:
            mask = work.masks[name].to(refilled.device)
            counts["pruned"] += int((~mask).sum())
            if refilled.any():
                counts["refilled"] += int(refilled.sum())
                counts["linears refilled"] += 1
                work.masks[name] = mask | refilled
        if off_grid:
            counts["linears off their grid"] += 1
            del work.grids[name]
            work.bits.get(name, {}).pop("w", None)
    return counts


def flag_lines(broken: dict[str, Counter]) -> list[str]:
    """One line per plugin stage that broke an earlier stage's masks or grids."""
    lines = []
    for stage, counts in broken.items():
        if counts["refilled"]:
            lines.append(f"{stage} refilled {counts['refilled'] / counts['pruned']:.1%} of the weights pruned before it "
                         f"(in {counts['linears refilled']} Linears)")
        if counts["linears off their grid"]:
            lines.append(f"{stage} moved {counts['linears off their grid']} quantized Linears off their grid: "
                         "counted as not quantized")
    return lines




def segments(stages: tuple[Method, ...]) -> list[tuple[Method, ...]]:
    """Split a recipe into runs of layer-scope stages (one calibration pass each) and single model-scope stages."""
    runs: list[tuple[Method, ...]] = []
    for stage in stages:
        if stage.scope == "layer" and runs and runs[-1][-1].scope == "layer":
            runs[-1] += (stage,)
        else:
            runs.append((stage,))
    return runs


def passes(stages: tuple[Method, ...], schedule: str) -> list[tuple[Method, ...]]:
    """The recipe's passes over the model, in order. `staged` (the default) is the paper's composition
    (f2 ∘ f1)(φ) (§2): every stage has a pass of its own, calibrated on the model the earlier stages left.
    `fused` runs consecutive layer-scope stages block by block in one pass (cheaper for a single recipe): a
    stage's statistics then see the earlier blocks compressed by the later stages of its run as well."""
    check_schedule(schedule)
    return [(stage,) for stage in stages] if schedule == "staged" else segments(stages)


def cut_points(stages: tuple[Method, ...], schedule: str) -> list[int]:
    """The stage counts k after which the model is exactly `stages[:k]` compressed alone: the ends of passes.
    Those prefixes are the ones a later recipe can start from (`prefixes.PrefixCache`)."""
    ends, done = [], 0
    for run in passes(stages, schedule):
        done += len(run)
        ends.append(done)
    return ends


def schedule_matters(stages: tuple[Method, ...]) -> bool:
    """Whether `fused` and `staged` can give different models: only where a stage that reads calibration
    activations is followed, within one fused run, by another stage (the fused statistics then see earlier
    blocks compressed by that later stage too). A stage without calibration (RTN) before a calibrated one gives
    the same model in both schedules: in both, the calibrated stage sees the blocks before it fully compressed."""
    return any(any(s.needs_calibration for s in run[:-1]) for run in segments(stages) if run[0].scope == "layer")


def keeps_reference(stages: tuple[Method, ...], schedule: str) -> bool:
    """Whether the engine must keep each block's weights from its first layer-scope pass to the end of the
    recipe: under `staged`, a layer-scope pruner after another layer-scope stage breaks its score ties by those
    weights (prune.py: after quantization many weights share one value; ties by position would bias the mask).
    `fused` breaks them by the weights at the start of each pass, as it always has."""
    layer = [s for s in stages if s.scope == "layer"]
    return schedule == "staged" and any(s.kind == "prune" for s in layer[1:])


def block_work(block: nn.Module, index: int, works: dict[int, LayerWork], seed: int) -> LayerWork:
    """The block's LayerWork, kept across passes so that masks, grids and bits set earlier stay in force
    (its `reference` weights are set by `layer_pass` for the length of the block's pass)."""
    work = works.get(id(block))
    if work is None:
        linears = block_linears(block)
        work = LayerWork(index, block, linears, block_attention(block), reference={}, seed=seed)
        works[id(block)] = work
    work.index = index
    return work


def adopt_weight_grids(model: PreTrainedModel, result: dict, works: dict[int, LayerWork], seed: int) -> None:
    """Move what a model-scope quantizer hands back out of its `result` into the block works: `bits` (weight bits)
    and `grids` (WeightGrid), each keyed by `blocks.<i>.<linear>`; a model-scope pruner's `masks` (bool, True =
    kept) likewise. Later stages then keep those grids, and
    `record()` reports the bits and checks that the weights sit on the grids, as for a layer-scope quantizer."""
    bits, grids, masks = result.pop("bits", {}), result.pop("grids", {}), result.pop("masks", {})
    blocks = decoder_blocks(model)
    for path in dict.fromkeys([*bits, *grids, *masks]):
        _, index, name = path.split(".", 2)
        work = block_work(blocks[int(index)], int(index), works, seed)
        if path in bits:  # weight bits, or a dict of bits by what is quantized ({"w": 4, "a": 8})
            work.bits.setdefault(name, {}).update(bits[path] if isinstance(bits[path], dict) else {"w": bits[path]})
        if path in grids:
            work.grids[name] = grids[path]
        if path in masks:
            earlier = work.masks.get(name)
            work.masks[name] = masks[path] if earlier is None else masks[path] & earlier.to(masks[path].device)


def layer_pass(
    model: PreTrainedModel, stages: tuple[Method, ...], calibration: torch.Tensor | None, device: torch.device,
    works: dict[int, LayerWork], seconds: dict[str, float], progress: bool, seed: int, broken: dict[str, Counter],
    keep_reference: bool = False,
) -> None:
    """Apply layer-scope `stages` block by block, calibrating each block on the compressed blocks before it.

    Each block's `reference` weights are those at the start of its pass; with `keep_reference`, those at the start
    of its first pass of the recipe, kept across passes (`keeps_reference`)."""
    blocks = decoder_blocks(model)
    home = next(p.device for p in model.parameters() if not p.is_meta)  # where the weights outside the blocks live
    needs_inputs = any(s.needs_calibration for s in stages)
    inputs: list[torch.Tensor] = []
    calls: list[dict] = [{} for _ in blocks]
    if needs_inputs:
        start = time.perf_counter()
        calibration = calibration.to(device)
        move_outside_blocks(model, blocks, device)
        calls = block_call_kwargs(model, blocks, calibration[0])
        inputs = capture_block_inputs(model, blocks, calibration)
        seconds["capture"] = seconds.get("capture", 0.0) + time.perf_counter() - start
    label = " > ".join(s.canonical() for s in stages)
    for index, block in enumerate(tqdm(blocks, desc=f"compress {label}", disable=not progress, unit="block", leave=False)):
        with visiting(home_of(model), index, block, device, changed=True):
            work = block_work(block, index, works, seed)
            if not (keep_reference and work.reference):
                work.reference = {n: lin.weight.data.clone() for n, lin in work.linears.items()}
            compress_block(work, stages, inputs, calls[index], seconds, broken)
            if not keep_reference:
                work.reference = {}  # held for the block's pass only: kept for every block it costs a model copy
            if needs_inputs and index + 1 < len(blocks):
                start = time.perf_counter()
                inputs = run_block(block, inputs, calls[index])
                seconds["propagate"] = seconds.get("propagate", 0.0) + time.perf_counter() - start
    move_outside_blocks(model, blocks, home)


@dataclass
class CompressionState:
    """A recipe part-way, at the end of a pass: the model after its first `done` stages, and what the engine
    carries from pass to pass (each block's masks, grids, bits and reference weights; the report so far; the
    torch random state). A later recipe that starts with the same stages can go on from here (`compress(start=)`)
    and end exactly where a run from scratch would."""

    model: PreTrainedModel
    done: int
    works: dict[int, LayerWork]
    report: CompressionReport
    broken: dict[str, Counter]
    rng: torch.Tensor | None = None

    def clone(self) -> "CompressionState":
        """A deep copy whose works point at the copied model's blocks (one memo: shared objects stay shared)."""
        present = {id(b) for b in decoder_blocks(self.model)}  # the works of removed blocks are not needed again
        live = {k: w for k, w in self.works.items() if k in present}
        model, works, report, broken = copy.deepcopy((self.model, live, self.report, self.broken))
        works = {id(work.block): work for work in works.values()}
        return CompressionState(model, self.done, works, report, broken, None if self.rng is None else self.rng.clone())

    def nbytes(self) -> int:
        """Bytes of tensors held: the model's parameters and buffers, reference weights, packed masks, grids."""
        total = sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])
        for work in self.works.values():
            total += sum(t.numel() * t.element_size() for t in work.reference.values())
            total += sum(packed.numel() for packed, _ in work.masks._packed.values())
            total += sum(t.numel() * t.element_size() for g in work.grids.values() for t in vars(g).values()
                         if isinstance(t, torch.Tensor))
        return total


@torch.no_grad()
def compress(
    model: PreTrainedModel,
    recipe: Recipe,
    calibration: torch.Tensor | None = None,
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    schedule: str = "staged",
    start: CompressionState | None = None,
    keep_reference: bool | None = None,
    at_cut: Callable[[CompressionState], None] | None = None,
) -> CompressionReport:
    """Compress `model` in place with `recipe`; `calibration` is [n, seqlen] token ids (needed by some methods).

    `schedule` (`passes`): `staged`, one pass per stage as the paper composes methods, or `fused`, consecutive
    layer-scope stages in one pass. Model-scope stages (block removal, rotations) act on the whole model between
    passes. Blocks are moved to `device` one at a time and back, so peak device memory is one block plus the
    calibration activations, as in the reference SparseGPT/GPTQ code; a model offloaded to disk (offload.py) has
    each block read for its turn and the compressed block written back.

    `start`: a state of this recipe's first `start.done` stages (its `model` is `model`), from which only the
    remaining passes run. `at_cut` is called with the state at the end of every pass, the last included (a prefix
    cache copies what it keeps; `prefixes.py`). `keep_reference` (default: `keeps_reference`; staged only)
    keeps each block's first-pass weights to the end, for a later prefix's pruners.
    """
    runs = passes(recipe.stages, schedule)
    keep = keeps_reference(recipe.stages, schedule) if keep_reference is None else keep_reference and schedule == "staged"
    if start is None:
        report = CompressionReport(str(recipe), recipe.ratios(), sum(
            lin.weight.numel() for b in decoder_blocks(model) for lin in block_linears(b).values()))
        state = CompressionState(model, 0, {}, report, {})
    else:
        if start.model is not model or start.done not in cut_points(recipe.stages, schedule):
            raise RuntimeError(f"a state after {start.done} stages is not a prefix of '{recipe}' ({schedule})")
        state = start
        state.report.recipe, state.report.requested = str(recipe), recipe.ratios()
        if state.rng is not None:
            torch.set_rng_state(state.rng)
    report, works, broken = state.report, state.works, state.broken
    home = next(p.device for p in model.parameters() if not p.is_meta)
    device = torch.device(device) if device is not None else home
    refuse_model_scope(model, recipe.stages)
    first = block_linears(decoder_blocks(model)[0])
    for stage in recipe.stages[state.done:]:
        stage.validate(first)
    needed = [s.name for s in recipe.stages[state.done:] if s.needs_calibration]
    if needed and (calibration is None or calibration.numel() == 0):
        raise PqqpError(f"recipe '{recipe}' needs calibration samples (for {', '.join(needed)}): pass calibration token ids")
    done = 0
    for run in runs:
        done += len(run)
        if done <= state.done:
            continue
        if run[0].scope == "layer":
            layer_pass(model, run, calibration, device, works, report.seconds, progress, seed, broken, keep)
        else:
            model_stage(model, run[0], calibration, device, seed, progress, works, report, broken)
        state.done = done
        if at_cut is not None:
            state.rng = torch.get_rng_state()
            at_cut(state)
    disk = home_of(model)
    for index, block in enumerate(decoder_blocks(model)):
        work = block_work(block, index, works, seed)
        with visiting(disk, index, block, device) if disk else nullcontext():
            report.linears += record(work, f"blocks.{index}")
        report.grids.update({f"blocks.{index}.{name}": grid for name, grid in work.grids.items()})
        report.kv_bits.append(work.kv_bits)
    report.flags = flag_lines(broken)
    return report


def model_stage(model: PreTrainedModel, stage: Method, calibration: torch.Tensor | None, device: torch.device,
                seed: int, progress: bool, works: dict[int, LayerWork], report: CompressionReport,
                broken: dict[str, Counter]) -> None:
    """Apply one model-scope stage (block removal, a rotation, a model-wide quantizer) and carry what it did into
    the block works (grids, bits, masks) and the report (its structure record, plugin flags)."""
    began = time.perf_counter()
    engine = {"layer_pass": layer_pass} if stage.uses_layer_pass else {}
    result = stage.apply_model(model, calibration, device, seed, progress=progress, **engine)
    for block in decoder_blocks(model):  # a model-scope stage may have replaced Linear modules
        if id(block) in works:
            works[id(block)].linears = block_linears(block)
    adopt_weight_grids(model, result, works, seed)
    if not stage.builtin():
        for index, block in enumerate(decoder_blocks(model)):
            broken.setdefault(stage.canonical(), Counter()).update(reconcile(block_work(block, index, works, seed)))
    report.structure.append({"stage": stage.canonical(), **result})
    report.seconds[stage.canonical()] = time.perf_counter() - began
