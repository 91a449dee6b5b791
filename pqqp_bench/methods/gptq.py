"""GPTQ / OPTQ (Frantar et al. 2023): quantize column by column, compensating each rounding error on the
columns not yet quantized through the inverse Hessian of the layer's calibration inputs.

Per-channel grids are fitted on the weights before the sweep, as in the reference; group grids are fitted
when the sweep reaches each group, on its current (already compensated) weights. With `actorder`, columns are
visited by decreasing Hessian diagonal and group grids are fitted up front (the reference's static groups),
so no column-to-group index is needed. A pruning mask set earlier is kept: pruned weights target zero, and
their error is compensated like any other (the known bug of refilling pruned weights cannot happen).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import PqqpError
from .base import LayerWork, Param, boolean
from .obs import inverse_hessian_factor, sweep
from .quantize import WeightGrid, fit_grid
from .rtn import Quantizer
from .sparsegpt import OBS_PARAMS




class GPTQTargets:
    def __init__(self, grid: WeightGrid, dynamic: bool, clip: str | float, keep: torch.Tensor | None,
                 order: torch.Tensor, mode: str = "restricted") -> None:
        self.grid, self.dynamic, self.clip, self.keep, self.order, self.mode = grid, dynamic, clip, keep, order, mode
        self.weight = torch.empty(0)

    def start_block(self, start: int, weight: torch.Tensor, block: torch.Tensor, hinv: torch.Tensor) -> None:
        self.weight, self.stop = weight, start + block.shape[1]

    def target(self, column: int, offset: int, block: torch.Tensor, hinv: torch.Tensor) -> torch.Tensor:
        original = int(self.order[column])
        if self.dynamic and original % self.grid.group == 0:
            current = torch.cat([block[:, offset:], self.weight[:, self.stop:]], dim=1)[:, : self.grid.group]
            fitted = fit_grid(current, self.grid.bits, None, self.clip, self.grid.symmetric, grid=self.mode)
            self.grid.scale[:, original // self.grid.group] = fitted.scale[:, 0]
            self.grid.zero[:, original // self.grid.group] = fitted.zero[:, 0]
        value = self.grid.round(block[:, offset : offset + 1], start=original)[:, 0]
        return value if self.keep is None else value * self.keep[:, column]


class GPTQ(Quantizer):
    name = "gptq"
    slow = True
    granularity = "weight (per output channel or group)"
    needs_calibration = True
    statistic = "hessian"
    summary = "OBS-compensated quantization (Frantar et al. 2023)"
    params: ClassVar[tuple[Param, ...]] = Quantizer.params + (
        Param("sym", boolean, True, "true or false", "symmetric grid (false: asymmetric, with a zero point)"),
        Param("actorder", boolean, False, "true or false", "visit columns by decreasing Hessian diagonal"),
    ) + OBS_PARAMS
    # the damped inverse Hessian's Cholesky factor (float64 inside; benchmarks/vs_gptq_reference.py swaps in the
    # reference's float32 arithmetic to show the sweeps are otherwise identical)
    factor = staticmethod(inverse_hessian_factor)

    def check(self) -> None:
        super().check()
        if self.values["w"] is None:
            raise PqqpError("method 'gptq' needs weight bits w=2..16 (it quantizes weights; use rtn for a=/kv= only)")

    def quantize_weights(self, work: LayerWork) -> None:
        for name, linear in work.linears.items():
            weight = linear.weight.data.float()
            hessian = work.stats[name]
            columns = weight.shape[1]
            order = torch.argsort(torch.diag(hessian), descending=True) if self.values["actorder"] else torch.arange(columns)
            group = self.values["g"]
            dynamic = group is not None and not self.values["actorder"]
            grid = fit_grid(weight, self.values["w"], group, self.values["clip"], self.values["sym"], grid=self.values["grid"])
            keep = work.masks.get(name)
            hinv, dead = self.factor(hessian[order][:, order], self.values["damp"])
            permuted = weight[:, order].clone()
            permuted[:, dead] = 0.0
            targets = GPTQTargets(grid, dynamic, self.values["clip"], None if keep is None else keep[:, order], order,
                                  self.values["grid"])
            result = sweep(permuted, hinv, targets, self.values["block"])
            linear.weight.data.copy_(result[:, torch.argsort(order)])
            work.grids[name] = grid
