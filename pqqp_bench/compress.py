"""Apply a recipe to a model, decoder block by decoder block (the SparseGPT/GPTQ sequential scheme).

For each block, in order: move it to the compute device, then for each stage of the recipe, in recipe order,
collect the input statistics the stage asks for (forward hooks over the calibration inputs), apply the stage,
free the statistics; finally run the compressed block to produce the calibration inputs of the next block.
So every block is calibrated on inputs produced by the already-compressed blocks before it, and a joint
recipe costs one pass over the model.

Order semantics (paper §3, design notes): in P->Q the quantizer keeps the pruning mask (pruned weights stay
exactly zero); in Q->P the pruner scores the quantized weights, with statistics gathered through the
quantized activations and KV cache, and breaks score ties by the weight's magnitude before the block's pass.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .errors import PqqpError
from .methods import B_ORIG, LayerWork, Method
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
    """What a recipe asked for next to what it achieved, per Linear and in total, with timings."""

    recipe: str
    requested: dict[str, float]
    linears: list[LinearRecord] = field(default_factory=list)
    kv_bits: list[int | None] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def achieved(self) -> dict[str, float | None]:
        total = sum(r.numel for r in self.linears) or 1
        sparsity = sum(r.mask_sparsity * r.numel for r in self.linears) / total
        zeros = sum(r.zero_fraction * r.numel for r in self.linears) / total
        w_bits = {r.w_bits for r in self.linears}
        bits = max(w_bits - {None}) if w_bits - {None} else None
        prune = 1.0 / (1.0 - sparsity)
        quant = B_ORIG / bits if bits else 1.0
        return {
            "sparsity": sparsity,
            "zero_fraction": zeros,
            "w_bits": bits,
            "a_bits": max({r.a_bits for r in self.linears} - {None}, default=None),
            "kv_bits": max(set(self.kv_bits) - {None}, default=None),
            "prune": prune,
            "quant": quant,
            "total": prune * quant,
        }

    def as_dict(self) -> dict:
        return {**asdict(self), "achieved": self.achieved()}


class _Captured(Exception):
    """Raised by the hook on the first block to stop the forward pass once its inputs are caught."""


def decoder_blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The model's stack of decoder blocks: the ModuleList with `num_hidden_layers` entries."""
    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise PqqpError(f"cannot find the decoder blocks of {type(model).__name__}: accepted decoder-only HF models")


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def block_attention(block: nn.Module) -> nn.Module | None:
    for name in ("self_attn", "attention", "attn"):
        if isinstance(getattr(block, name, None), nn.Module):
            return getattr(block, name)
    return None


def capture_block_inputs(
    model: PreTrainedModel, blocks: nn.ModuleList, samples: torch.Tensor, device: torch.device
) -> tuple[list[torch.Tensor], dict]:
    """Run the model up to its first block on each sample; return the block inputs and the call's kwargs."""
    inputs: list[torch.Tensor] = []
    kwargs: dict = {}

    def catch(module: nn.Module, args: tuple, kw: dict) -> None:
        inputs.append(args[0] if args else kw["hidden_states"])
        kwargs.update({k: v for k, v in kw.items() if k not in ("hidden_states", "past_key_values")})
        raise _Captured

    handle = blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for sample in samples:
            try:
                model(sample.unsqueeze(0).to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    kwargs["use_cache"] = False
    return inputs, kwargs


def run_block(block: nn.Module, inputs: list[torch.Tensor], kwargs: dict) -> list[torch.Tensor]:
    outputs = []
    for x in inputs:
        out = block(x, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


@contextmanager
def input_statistics(linears: dict[str, nn.Linear], kind: str) -> Iterator[dict[str, torch.Tensor]]:
    """Accumulate, through forward hooks, each Linear's input statistic over the tokens it sees.

    `sqnorm`: sum over tokens of x_j^2 per input feature (Wanda's ||X_j||_2^2). `hessian`: X^T X (GPTQ's H/2).
    The hooks see the inputs after any activation fake-quant pre-hook, i.e. what the layer really computes on.
    """
    stats: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            value = (x * x).sum(dim=0) if kind == "sqnorm" else x.T @ x
            stats[name] = stats[name] + value if name in stats else value

        return hook

    handles = [linear.register_forward_hook(hook_for(name)) for name, linear in linears.items()]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def record(work: LayerWork, prefix: str) -> list[LinearRecord]:
    rows = []
    for name, linear in work.linears.items():
        weight = linear.weight.data
        mask = work.masks.get(name)
        bits = work.bits.get(name, {})
        rows.append(
            LinearRecord(
                f"{prefix}.{name}",
                weight.numel(),
                0.0 if mask is None else 1.0 - mask.float().mean().item(),
                (weight == 0).float().mean().item(),
                bits.get("w"),
                bits.get("a"),
            )
        )
        if mask is not None and bool((weight[~mask] != 0).any()):
            raise RuntimeError(f"{prefix}.{name}: a later stage made pruned weights non-zero (mask not kept)")
    return rows


def compress_block(work: LayerWork, stages: tuple[Method, ...], inputs: list[torch.Tensor], kwargs: dict, seconds: dict) -> None:
    for stage in stages:
        start = time.perf_counter()
        if stage.statistic is not None:
            with input_statistics(work.linears, stage.statistic) as stats:
                run_block(work.block, inputs, kwargs)
            work.stats = stats
        stage.apply(work)
        work.stats = {}
        seconds[stage.canonical()] = seconds.get(stage.canonical(), 0.0) + time.perf_counter() - start


@torch.no_grad()
def compress(
    model: PreTrainedModel,
    recipe: Recipe,
    calibration: torch.Tensor | None = None,
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
) -> CompressionReport:
    """Compress `model` in place with `recipe`; `calibration` is [n, seqlen] token ids (needed by some methods).

    Blocks are moved to `device` one at a time and back, so peak device memory is one block plus the
    calibration activations, as in the reference SparseGPT/GPTQ implementations.
    """
    report = CompressionReport(str(recipe), recipe.ratios())
    if not recipe.stages:
        return report
    blocks = decoder_blocks(model)
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    for stage in recipe.stages:
        stage.validate(block_linears(blocks[0]))
    needs_inputs = any(s.needs_calibration for s in recipe.stages)
    if needs_inputs and (calibration is None or calibration.numel() == 0):
        needed = ", ".join(s.name for s in recipe.stages if s.needs_calibration)
        raise PqqpError(f"recipe '{recipe}' needs calibration samples (for {needed}): pass calibration token ids")
    inputs, kwargs = ([], {})
    start = time.perf_counter()
    if needs_inputs:
        move_outside_blocks(model, blocks, device)
        inputs, kwargs = capture_block_inputs(model, blocks, calibration, device)
    report.seconds["capture"] = time.perf_counter() - start
    bar = tqdm(blocks, desc=f"compress {recipe}", disable=not progress, unit="block", leave=False)
    for index, block in enumerate(bar):
        block.to(device)
        linears = block_linears(block)
        work = LayerWork(
            index, block, linears, block_attention(block),
            reference={n: l.weight.data.clone() for n, l in linears.items()}, seed=seed,
        )
        compress_block(work, recipe.stages, inputs, kwargs, report.seconds)
        report.linears += record(work, f"blocks.{index}")
        report.kv_bits.append(work.kv_bits)
        if needs_inputs and index + 1 < len(blocks):
            start = time.perf_counter()
            inputs = run_block(block, inputs, kwargs)
            report.seconds["propagate"] = report.seconds.get("propagate", 0.0) + time.perf_counter() - start
        block.to(home)
    model.to(home)
    return report


def move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> None:
    """Move every parameter and buffer that is not inside a decoder block (embeddings, norms, rotary) to `device`."""
    inside = {id(m) for m in blocks.modules()}
    for module in model.modules():
        if id(module) in inside:
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            tensor.data = tensor.data.to(device)
