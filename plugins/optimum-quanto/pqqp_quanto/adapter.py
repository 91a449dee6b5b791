"""Quantize a model's decoder Linears with optimum-quanto, then give the harness plain Linears back.

quanto replaces each `nn.Linear` by a `QLinear`; once frozen, its forward uses the packed integer weight, so a
later pruner that zeroes `.weight` in place changes nothing that is computed, and `torch.nn.utils.prune` turns
the weight back into a float tensor that the QLinear re-quantizes at every call (pruned weights come back
non-zero). So after quanto has quantized (and, for activations, calibrated), every QLinear's weight is
dequantized by quanto and copied into the *original* `nn.Linear` object, which goes back in its place: the
modules the harness already holds (its per-block `LayerWork`) stay the ones that compute, and later stages act
on exactly the weights quanto produced. Activation quantization becomes a forward pre-hook that runs quanto's
`quantize_activation` with the calibrated per-tensor input scale.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version

import torch
from optimum.quanto import (
    AffineOptimizer,
    Calibration,
    HqqOptimizer,
    MaxOptimizer,
    QLinear,
    SymmetricOptimizer,
    qfloat8_e4m3fn,
    qfloat8_e5m2,
    qint2,
    qint4,
    qint8,
    qtype,
    quantize,
    quantize_activation,
)
from pqqp_bench.blocks import block_linears, decoder_blocks
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods.quantize import WeightGrid
from torch import nn
from tqdm.auto import tqdm

from .grids import affine_grid, symmetric_grid

LIBRARY = f"optimum-quanto {version('optimum-quanto')}"
WEIGHT_QTYPES = {8: qint8, 4: qint4, 2: qint2}
ACTIVATION_QTYPES = {"int8": qint8, "fp8": qfloat8_e4m3fn, "e5m2": qfloat8_e5m2}
AUTO = "auto"  # quanto's own group size: 128, else 96, 64, 32 when it divides in_features > 128; else per row


@dataclass(frozen=True)
class Settings:
    """What to ask quanto for: weight bits, activation type, group size, zero point and optimizer."""

    bits: int
    activations: str | None
    group: int | str | None  # AUTO, a group size, or None (one group per output row)
    zero_point: str  # "float" (quanto's default) or "int"
    optimizer: str  # "max" or "hqq"


@dataclass
class Target:
    """One decoder Linear: its harness path, its name in the model, and the module and parameters to restore."""

    path: str
    name: str
    linear: nn.Linear
    weight: nn.Parameter
    bias: nn.Parameter | None


@dataclass(frozen=True)
class QuantoActivation:
    """Forward pre-hook: quanto's static per-tensor activation quantization, with the calibrated input scale."""

    qtype: qtype
    scale: torch.Tensor

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (quantize_activation(x, qtype=self.qtype, scale=self.scale.to(x.device)).dequantize(), *args[1:])


class IntegerZeroPoint(AffineOptimizer):
    """quanto's affine optimizer called with its `zeropoint=True` option: the shift is rounded to an integer level,
    so zero is exactly representable (quanto's QLinear never passes that option itself)."""

    def __init__(self, inner: AffineOptimizer) -> None:
        self.inner = inner

    def __call__(self, base: torch.Tensor, qtype: qtype, axis: int, group_size: int | None = None,
                 zeropoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner(base, qtype, axis, group_size, zeropoint=True)


def weight_optimizer(settings: Settings) -> AffineOptimizer | None:
    """The optimizer handed to `quantize` (None: quanto's default, absmax for int8 and min-max for int4/int2)."""
    if settings.bits == 8:
        return None
    inner = HqqOptimizer() if settings.optimizer == "hqq" else MaxOptimizer()
    return IntegerZeroPoint(inner) if settings.zero_point == "int" else inner


def targets(model: nn.Module) -> list[Target]:
    """Every decoder-block Linear the harness tracks, with its submodule name in `model`."""
    names = {id(module): name for name, module in model.named_modules()}
    found = []
    for index, block in enumerate(decoder_blocks(model)):
        for name, linear in block_linears(block).items():
            found.append(Target(f"blocks.{index}.{name}", names[id(linear)], linear, linear.weight, linear.bias))
    return found


def refuse_hooked(found: list[Target]) -> None:
    """Calibration runs quanto's QLinears in place of the Linears: a forward pre-hook an earlier stage put on a
    Linear (QuaRot's online Hadamard, another quantizer's activations) would not run, and the scales would be wrong."""
    hooked = [t.path for t in found if t.linear._forward_pre_hooks]
    if hooked:
        raise PqqpError(f"quanto activation calibration cannot run through the forward pre-hooks an earlier stage "
                        f"put on {hooked[0]} (and {len(hooked) - 1} more): accepted a=none after such a stage, "
                        "or quanto first")


def set_group_sizes(model: nn.Module, found: list[Target], settings: Settings) -> None:
    """Override quanto's group size choice where a group size (or per-row, None) was asked for."""
    if settings.bits == 8 or settings.group == AUTO:
        return
    for target in found:
        model.get_submodule(target.name).weight_group_size = settings.group


def calibrate(model: nn.Module, calibration: torch.Tensor, device: torch.device, progress: bool) -> None:
    """quanto's `Calibration`: absmax input/output scales, momentum-averaged over one forward per window, in order."""
    home = next(p.device for p in model.parameters() if not p.is_meta)
    model.to(device)
    try:
        with Calibration():
            windows = tqdm(calibration, desc="quanto calibration", unit="window", leave=False, disable=not progress)
            for window in windows:
                model(window.unsqueeze(0).to(device), use_cache=False)
    finally:
        model.to(home)


def quanto_grid(qlinear: QLinear) -> WeightGrid:
    """The grid quanto's optimizer chooses for this QLinear, asked with the very arguments its `qweight` uses."""
    weight = qlinear.weight.detach()
    if isinstance(qlinear.optimizer, SymmetricOptimizer):
        return symmetric_grid(qlinear.optimizer(weight, qtype=qlinear.weight_qtype, axis=0), weight)
    group = qlinear.weight_group_size
    scale, shift = qlinear.optimizer(weight, qtype=qlinear.weight_qtype, axis=0, group_size=group)
    return affine_grid(qlinear.weight_qtype.bits, scale, shift, group or weight.shape[1], weight)


def put_back(model: nn.Module, target: Target, weight: torch.Tensor) -> None:
    """Return the original Linear to its place, holding `weight` (quanto's dequantized weight)."""
    target.linear.weight = target.weight
    target.linear.bias = target.bias
    target.weight.data.copy_(weight)
    parent, _, child = target.name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, target.linear)


def unwrap(model: nn.Module, target: Target, settings: Settings) -> tuple[WeightGrid | None, int]:
    """Freeze one QLinear, copy quanto's dequantized weight into the original Linear, hook its activations.

    Returns the grid (None if quanto's weights are not on it: a kernel-specific packing such as tinygemm's
    bf16 int4 layout) and the group size used.
    """
    qlinear = model.get_submodule(target.name)
    grid = quanto_grid(qlinear)
    qlinear.freeze()
    weight = qlinear.weight.dequantize()
    group = qlinear.weight_group_size or weight.shape[1]
    put_back(model, target, weight)
    if settings.activations is not None:
        hook = QuantoActivation(ACTIVATION_QTYPES[settings.activations], qlinear.input_scale.detach().clone())
        target.linear.register_forward_pre_hook(hook)
    return (grid if grid.holds(target.linear.weight.data) else None), group


def quantize_model(model: nn.Module, calibration: torch.Tensor | None, device: torch.device, settings: Settings,
                   progress: bool = False) -> dict:
    """Quantize every decoder Linear with quanto; return bits, grids and what the report should record."""
    found = targets(model)
    activations = ACTIVATION_QTYPES[settings.activations] if settings.activations else None
    if activations is not None:
        refuse_hooked(found)
    quantize(model, weights=WEIGHT_QTYPES[settings.bits], activations=activations,
             optimizer=weight_optimizer(settings), include=[t.name for t in found])
    set_group_sizes(model, found, settings)
    if activations is not None:
        calibrate(model, calibration, device, progress)
    bits: dict[str, int | dict[str, int]] = {}
    grids: dict[str, WeightGrid] = {}
    groups: Counter = Counter()
    off_grid: list[str] = []
    for target in found:
        grid, group = unwrap(model, target, settings)
        groups["per-row" if group == target.linear.in_features else str(group)] += 1
        bits[target.path] = {"w": settings.bits, "a": 8} if activations is not None else settings.bits
        if grid is None:
            off_grid.append(target.path)
        else:
            grids[target.path] = grid
    return {"bits": bits, "grids": grids, "library": LIBRARY, "weights": WEIGHT_QTYPES[settings.bits].name,
            "activations": activations.name if activations is not None else "none", "group_sizes": dict(groups),
            **({"grid_not_reproduced": off_grid} if off_grid else {})}
