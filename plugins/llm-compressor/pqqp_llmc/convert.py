"""From llm-compressor's quantized modules to what the harness works with: plain Linears and weight grids.

After a quantization modifier, a Linear carries a `quantization_scheme`, `weight_scale`/`weight_zero_point`
parameters and a forward that fake-quantizes its weight on every call. GPTQ has already written its
quantized values into the weight; QuantizationModifier (round-to-nearest) has not, only computed the scales.
Either way the weight is put through compressed-tensors' own `fake_quantize` with the module's scale and
zero point (for GPTQ's weights a no-op), written into the plain weight, and every trace of quantization is
removed: the harness's later stages then act on exactly what llm-compressor computed, and its reports and
exports see an ordinary Linear. The grid goes back to the harness as a `WeightGrid`: compressed-tensors'
symmetric int grid is `(clamp(round(w / scale) + zp, -2^(B-1), 2^(B-1) - 1) - zp) * scale` with zp = 0, the
harness's symmetric grid exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pqqp_bench.blocks import block_linears, decoder_blocks
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods.quantize import WeightGrid


@dataclass(frozen=True)
class Target:
    """One decoder-block Linear: its harness path (`blocks.<i>.<name>`), module name in the model, module."""

    path: str
    name: str
    module: nn.Linear


def decoder_targets(model: nn.Module) -> list[Target]:
    """The Linears the harness compresses (those of the decoder blocks; never lm_head or embeddings), with the
    module names llm-compressor matches them by."""
    names = {id(module): name for name, module in model.named_modules()}
    return [
        Target(f"blocks.{index}.{name}", names[id(linear)], linear)
        for index, block in enumerate(decoder_blocks(model))
        for name, linear in block_linears(block).items()
    ]


def weight_grid(module: nn.Module) -> WeightGrid:
    """The harness grid of a module llm-compressor quantized (symmetric int, per channel or per group)."""
    args = module.quantization_scheme.weights
    if args.type != "int" or not args.symmetric or args.strategy not in ("channel", "group"):
        raise PqqpError(f"llm-compressor left a {args.type} {args.strategy} grid (symmetric={args.symmetric}): "
                        "accepted symmetric int per channel or per group")
    rows, columns = module.weight.shape
    scale = module.weight_scale.detach().float().reshape(rows, -1)
    zero = module.weight_zero_point.detach().float().reshape(rows, -1)
    return WeightGrid(args.num_bits, scale.clone(), zero.clone(), columns // scale.shape[1], symmetric=True)


@torch.no_grad()
def materialize(module: nn.Module) -> WeightGrid:
    """Write the module's fake-quantized weight into it (compressed-tensors' QDQ with its scale and zero point)
    and return the grid."""
    from compressed_tensors.quantization import fake_quantize

    args = module.quantization_scheme.weights
    grid = weight_grid(module)
    weight = module.weight.data
    weight.copy_(fake_quantize(weight, module.weight_scale.data, module.weight_zero_point.data, args).to(weight.dtype))
    return grid


def strip(module: nn.Module) -> None:
    """Remove the quantization scheme, qparams and fake-quantizing forward from a module (compressed-tensors'
    own clean-up; the status flags go with the rest of oneshot's instance attributes)."""
    from compressed_tensors.quantization import QuantizationMetadata

    QuantizationMetadata.clear_quantization(module)


def quantized(module: nn.Module) -> bool:
    return getattr(getattr(module, "quantization_scheme", None), "weights", None) is not None


def finish_quantized(targets: list[Target]) -> dict[str, WeightGrid]:
    """Materialize and strip every target llm-compressor quantized; their grids by harness path."""
    grids = {}
    for target in targets:
        if quantized(target.module):
            grids[target.path] = materialize(target.module)
        strip(target.module)
    return grids


def kept_masks(targets: list[Target]) -> dict[str, torch.Tensor]:
    """The weights a pruner left non-zero (True = kept), by harness path. llm-compressor does not hand its mask
    out; its pruners zero exactly the weights they prune, so the zeros are the mask (a weight that was already
    zero, e.g. quantized to zero before, counts as pruned: it scores lowest and the pruner takes it first)."""
    return {target.path: target.module.weight.data != 0 for target in targets}


def zero_fraction(targets: list[Target]) -> float:
    zeros = sum(int((target.module.weight.data == 0).sum()) for target in targets)
    return zeros / max(1, sum(target.module.weight.numel() for target in targets))
