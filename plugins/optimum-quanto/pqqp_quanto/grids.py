"""The weight grids quanto quantizes onto, in the harness's `WeightGrid` terms.

quanto has three weight grids (optimum-quanto 0.2.7):

* int8 (`AbsmaxOptimizer`): `q = clamp(round(w / s), -128, 127)`, `w_hat = q * s`, one scale per output row.
  That is exactly the harness's symmetric 8-bit `WeightGrid` (zero = 0): zero is a level.
* int4 / int2 with an integer zero point (the optimizer called with `zeropoint=True`):
  `q = clamp(round(w / s) + z, 0, 2^B - 1)`, `w_hat = (q - z) * s` with z an integer in 0..2^B-1. That is exactly
  the harness's asymmetric `WeightGrid` with zero = z: zero is a level (q = z).
* int4 / int2 with a float shift (quanto's default, `MaxOptimizer` or `HqqOptimizer`): shift = -min (or HQQ's
  optimised value), `q = clamp(round((w + shift) / s), 0, 2^B - 1)`, `w_hat = q * s - shift`. The levels sit at
  `(k - shift / s) * s` with shift / s not an integer, which `WeightGrid` cannot express (it rounds w / s to an
  integer *before* adding its zero point), and zero is in general not a level. `ShiftedGrid` is that grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pqqp_bench.methods.quantize import WeightGrid


@dataclass
class ShiftedGrid(WeightGrid):
    """quanto's float-shift affine grid, plus an exact zero for pruned weights.

    `round` computes quanto's own formula in the dtype of the scale (quanto's dtype: the model's), so it reproduces
    quanto's dequantized weights bit for bit. `zero` holds shift / scale for information only; `shift` is what
    counts. A weight that is exactly zero stays zero: zero is not one of quanto's levels, but a pruned weight is
    stored by the pruning mask, not as a code, so a later pruner may zero weights without leaving the grid.
    """

    shift: torch.Tensor | None = None  # [out, groups], the scale's dtype

    def parameters(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and shift of input columns start..stop-1, as [out, stop-start]."""
        index = torch.arange(start, stop, device=self.scale.device) // self.group
        return self.scale[:, index], self.shift[:, index]

    def round(self, weight: torch.Tensor, start: int = 0) -> torch.Tensor:
        scale, shift = self.parameters(start, start + weight.shape[1])
        codes = ((weight.to(scale.dtype) + shift) / scale).round().clamp(0, 2**self.bits - 1)
        value = codes * scale - shift
        return torch.where(weight == 0, torch.zeros_like(value), value).to(weight.dtype)


def as_rows(values: torch.Tensor, rows: int) -> torch.Tensor:
    """quanto's [out * groups, 1] (or [out, 1]) scale / shift as [out, groups]."""
    return values.reshape(rows, -1)


def symmetric_grid(scale: torch.Tensor, weight: torch.Tensor) -> WeightGrid:
    """quanto's int8 grid of a [out, in] weight, from `AbsmaxOptimizer`'s per-row scale."""
    rows, columns = weight.shape
    scale = as_rows(scale, rows).float()
    return WeightGrid(8, scale, torch.zeros_like(scale), columns, symmetric=True)


def affine_grid(bits: int, scale: torch.Tensor, shift: torch.Tensor, group: int, weight: torch.Tensor) -> WeightGrid:
    """quanto's int4/int2 grid: a plain asymmetric `WeightGrid` for an integer zero point, else a `ShiftedGrid`."""
    rows = weight.shape[0]
    scale, shift = as_rows(scale, rows), as_rows(shift, rows)
    if not shift.dtype.is_floating_point:  # quanto's zeropoint=True: an integer level that dequantizes to zero
        return WeightGrid(bits, scale.float(), shift.float(), group, symmetric=False)
    return ShiftedGrid(bits, scale, (shift / scale).float(), group, symmetric=False, shift=shift)
