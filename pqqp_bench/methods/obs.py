"""The Optimal-Brain-Surgeon column sweep shared by SparseGPT (Frantar & Alistarh 2023, Alg. 1) and GPTQ
(Frantar et al. 2023, Alg. 1).

Both walk the input columns of a weight in blocks. For each column they choose a target value (zero for a
pruned weight, the nearest grid point for a quantized one), and spread the error `(w - q) / [H^-1]_jj` over the
columns not yet visited, using the upper Cholesky factor of the inverse Hessian `H = X^T X` of the layer's
calibration inputs. What differs is only how each method picks its targets, which a `Targets` object supplies.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import PqqpError
from .base import Param, positive_int_or_none, ratio_in_unit

OBS_PARAMS = (
    Param("damp", ratio_in_unit, 0.01, "a float in [0, 1)", "dampening, as a fraction of mean(diag H)"),
    Param("block", positive_int_or_none, 128, "a positive integer", "columns per lazy-update block"),
)
"""The sweep's own parameters, shared by SparseGPT and GPTQ."""


class Targets(Protocol):
    """What a method decides during the sweep."""

    def start_block(self, start: int, weight: torch.Tensor, block: torch.Tensor, hinv: torch.Tensor) -> None:
        """Called before the columns start..start+block.shape[1]-1; `weight` is the whole matrix as of now."""

    def target(self, column: int, offset: int, block: torch.Tensor, hinv: torch.Tensor) -> torch.Tensor:
        """The value column `column` (at `offset` within the block) must take, given the updated block."""


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, and the mask of dead inputs (H_jj = 0).

    Dead inputs never fire on the calibration data; as in the reference implementations their diagonal is
    set to 1 and their weights to zero, which leaves the calibration outputs unchanged.
    """
    hessian = hessian.clone().double()
    dead = torch.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    hessian += damp * torch.diag(hessian).mean() * torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    lower, info = torch.linalg.cholesky_ex(hessian)
    if info.item():
        raise PqqpError(f"the Hessian with damp={damp:g} is not positive definite (too few calibration tokens for "
                        f"{hessian.shape[0]} inputs?): accepted a larger damp, e.g. 0.01, or more calibration samples")
    inverse = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inverse, upper=True).float(), dead


def sweep(weight: torch.Tensor, hinv: torch.Tensor, targets: Targets, blocksize: int = 128) -> torch.Tensor:
    """Visit the columns of `weight` ([out, in], float32) in order; return the compensated result."""
    weight = weight.clone()
    columns = weight.shape[1]
    for start in range(0, columns, blocksize):
        stop = min(start + blocksize, columns)
        block = weight[:, start:stop].clone()
        block_hinv = hinv[start:stop, start:stop]
        errors = torch.zeros_like(block)
        targets.start_block(start, weight, block, block_hinv)
        for offset in range(stop - start):
            q = targets.target(start + offset, offset, block, block_hinv)
            error = (block[:, offset] - q) / block_hinv[offset, offset]
            block[:, offset:] -= error.unsqueeze(1) @ block_hinv[offset, offset:].unsqueeze(0)
            block[:, offset] = q
            errors[:, offset] = error
        weight[:, start:stop] = block
        weight[:, stop:] -= errors @ hinv[start:stop, stop:]
    return weight
