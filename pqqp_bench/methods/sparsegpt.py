"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with OBS weight reconstruction.

Per block of `block` input columns, the mask takes the weights with the smallest `w^2 / [H^-1]_jj^2` over the
whole block (unstructured: the share `p` of every block is pruned), or the M-N smallest of every M consecutive
columns per row (N:M); the remaining weights absorb the error. After quantization (Q->P), targets are rounded
back onto the weight grid the quantizer chose, so the model stays quantized at the same bit width (the
paper's joint sparsification-quantization mode).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..errors import PqqpError
from .base import LayerWork, Param
from .obs import OBS_PARAMS, inverse_hessian_factor, sweep
from .prune import Pruner, keep_mask
from .quantize import WeightGrid


class SparseGPTTargets:
    """Chooses, column by column, zero for pruned weights and the (grid-rounded) current value otherwise."""

    def __init__(self, sparsity: float, nm: tuple[int, int] | None, prior: torch.Tensor | None,
                 tiebreak: torch.Tensor, grid: WeightGrid | None) -> None:
        self.sparsity, self.nm, self.prior, self.tiebreak, self.grid = sparsity, nm, prior, tiebreak, grid
        self.pruned = torch.zeros_like(tiebreak, dtype=torch.bool)

    def start_block(self, start: int, weight: torch.Tensor, block: torch.Tensor, hinv: torch.Tensor) -> None:
        if self.nm is not None:
            return
        stop = start + block.shape[1]
        score = block.pow(2) / torch.diag(hinv).pow(2).unsqueeze(0)
        prior = None if self.prior is None else self.prior[:, start:stop].reshape(1, -1)
        keep = keep_mask(score.reshape(1, -1), self.tiebreak[:, start:stop].reshape(1, -1), prior, self.sparsity, None)
        self.pruned[:, start:stop] = ~keep.view_as(block)

    def target(self, column: int, offset: int, block: torch.Tensor, hinv: torch.Tensor) -> torch.Tensor:
        if self.nm is not None and column % self.nm[1] == 0:
            m = self.nm[1]
            score = block[:, offset:offset + m].pow(2) / torch.diag(hinv)[offset:offset + m].pow(2).unsqueeze(0)
            prior = None if self.prior is None else self.prior[:, column:column + m]
            keep = keep_mask(score, self.tiebreak[:, column:column + m], prior, 0.0, self.nm)
            self.pruned[:, column:column + m] = ~keep
        value = block[:, offset].masked_fill(self.pruned[:, column], 0.0)
        return value if self.grid is None else self.grid.round(value.unsqueeze(1), start=column)[:, 0]


class SparseGPT(Pruner):
    name = "sparsegpt"
    slow = True
    needs_calibration = True
    statistic = "hessian"
    granularity = "weight (unstructured per column block, or N:M groups)"
    summary = "OBS pruning with weight reconstruction (Frantar & Alistarh 2023)"
    params: ClassVar[tuple[Param, ...]] = Pruner.params + OBS_PARAMS

    def validate(self, linears: dict[str, nn.Linear]) -> None:
        super().validate(linears)
        nm, block = self.values["nm"], self.values["block"]
        if nm and block % nm[1]:
            raise PqqpError(f"sparsegpt block={block} must be a multiple of M={nm[1]}: accepted a block size divisible by M")

    @torch.no_grad()
    def apply(self, work: LayerWork) -> None:
        for name, linear in work.linears.items():
            hinv, dead = inverse_hessian_factor(work.stats[name], self.values["damp"])
            weight = linear.weight.data.float().clone()
            weight[:, dead] = 0.0
            targets = SparseGPTTargets(self.sparsity, self.values["nm"], work.masks.get(name),
                                       work.reference[name].abs().float(), work.grids.get(name))
            linear.weight.data.copy_(sweep(weight, hinv, targets, self.values["block"]))
            work.masks[name] = ~targets.pruned
