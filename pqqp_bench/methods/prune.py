"""Pruners of one signature: a score per weight, then a mask per output row (unstructured) or per group of
M consecutive input weights (N:M), as in Wanda (Sun et al. 2024, §3) and SparseGPT's N:M variant.

Ties in the score are broken by the magnitude of the weight at the start of the pass, then by position: after
quantization many weights share one value, and breaking those ties by tensor index would bias the mask.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..errors import PqqpError
from .base import LayerWork, Method, Param, n_of_m, ratio_in_unit


def ascending_order(score: torch.Tensor, tiebreak: torch.Tensor) -> torch.Tensor:
    """Indices along the last dim sorting by (score, tiebreak), both ascending, deterministically."""
    by_tiebreak = torch.argsort(tiebreak, dim=-1, stable=True)
    by_score = torch.argsort(torch.gather(score, -1, by_tiebreak), dim=-1, stable=True)
    return torch.gather(by_tiebreak, -1, by_score)


def prune_lowest(score: torch.Tensor, tiebreak: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """Kept-mask removing the `count` lowest-scored entries along the last dim (count may vary per row); ties in
    the score go by `tiebreak`, then by position. Long rows take `threshold_mask`, which gives the same mask
    without sorting every row."""
    count = torch.as_tensor(count, device=score.device)
    if score.shape[-1] < 64 or bool(torch.isnan(score).any()):
        return ranked_mask(score, tiebreak, count)
    return threshold_mask(score, tiebreak, count)


def ranked_mask(score: torch.Tensor, tiebreak: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """`prune_lowest` by ranking every entry by (score, tiebreak, position)."""
    order = ascending_order(score, tiebreak)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    while count.dim() < rank.dim():
        count = count.unsqueeze(-1)
    return rank >= count


def threshold_mask(score: torch.Tensor, tiebreak: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """`ranked_mask`'s mask from each row's count-th smallest score: entries below it are pruned, entries equal to
    it too where exactly that many are needed, and only rows where more entries tie at the threshold than are
    needed are ranked in full. With continuous scores that is almost no row (SparseGPT's column blocks spent a
    third of their time in the two full sorts); after quantization (magnitude of grid values) it can be many."""
    shape, n = score.shape, score.shape[-1]
    rows, ties = score.reshape(-1, n), tiebreak.reshape(-1, n)
    counts = count.expand(shape[:-1]).reshape(-1).to(torch.long)
    k = counts.clamp(1, n)
    if bool((k == k[0]).all()):
        threshold = rows.kthvalue(int(k[0]), dim=-1, keepdim=True).values
    else:
        threshold = rows.sort(dim=-1).values.gather(1, (k - 1).unsqueeze(1))
    below, equal = rows < threshold, rows == threshold
    need = counts - below.sum(dim=1)
    keep = ~(below | equal)
    ambiguous = (equal.sum(dim=1) > need) & (counts > 0)
    if bool(ambiguous.any()):
        keep[ambiguous] = ranked_mask(rows[ambiguous], ties[ambiguous], counts[ambiguous])
    keep[counts <= 0] = True
    return keep.reshape(shape)


def keep_mask(
    score: torch.Tensor,
    tiebreak: torch.Tensor,
    prior: torch.Tensor | None,
    sparsity: float,
    nm: tuple[int, int] | None,
) -> torch.Tensor:
    """The kept-weight mask of one [out, in] weight.

    Unstructured: each output row loses `round(sparsity * in)` more weights than earlier stages took, so
    successive pruning stages add up (stage ratios sum to the total). N:M: each group of M consecutive input
    weights keeps N. Weights an earlier stage pruned (`prior` False) always stay pruned.
    """
    score = score.float()
    tiebreak = tiebreak.float().abs()
    if prior is not None:
        score = score.masked_fill(~prior, float("-inf"))
    if nm is not None:
        n, m = nm
        rows, cols = score.shape
        grouped = prune_lowest(score.reshape(rows, cols // m, m), tiebreak.reshape(rows, cols // m, m), m - n)
        mask = grouped.reshape(rows, cols)
        return mask if prior is None else mask & prior
    already = 0 if prior is None else (~prior).sum(dim=-1)
    extra = int(round(sparsity * score.shape[-1]))
    return prune_lowest(score, tiebreak, already + extra)


class Pruner(Method):
    """Unstructured or N:M pruning of every Linear weight in a decoder block, by a per-weight score."""

    kind = "prune"
    granularity = "weight (unstructured per output row, or N:M groups)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("p", ratio_in_unit, None, "a float in [0, 1)", "fraction of each row's weights set to zero"),
        Param("nm", n_of_m, None, "N:M with 0 < N < M, e.g. 2:4", "keep N of every M consecutive input weights"),
    )

    @property
    def sparsity(self) -> float:
        nm = self.values["nm"]
        return 1.0 - nm[0] / nm[1] if nm else self.values["p"]

    def check(self) -> None:
        if self.values["nm"] is None and self.values["p"] is None:
            raise PqqpError(f"method '{self.name}' needs p=<ratio in [0, 1)> or nm=<N:M>, e.g. {self.name}:p=0.5")
        if self.values["nm"] and self.values["p"] not in (None, self.sparsity):
            raise PqqpError(
                f"method '{self.name}' got both p={self.values['p']} and nm="
                f"{self.values['nm'][0]}:{self.values['nm'][1]}: give one (nm implies p={self.sparsity:g})"
            )

    def ratio(self) -> float:
        return 1.0 / (1.0 - self.sparsity)

    def validate(self, linears: dict[str, nn.Linear]) -> None:
        nm = self.values["nm"]
        for name, linear in linears.items():
            if nm and linear.in_features % nm[1]:
                raise PqqpError(
                    f"nm={nm[0]}:{nm[1]} needs in_features divisible by {nm[1]}, but {name} has "
                    f"{linear.in_features}: accepted M dividing every layer's input size"
                )

    def score(self, weight: torch.Tensor, stat: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def apply(self, work: LayerWork) -> None:
        for name, linear in work.linears.items():
            weight = linear.weight.data
            mask = keep_mask(
                self.score(weight, work.stats.get(name)),
                work.reference[name],
                work.masks.get(name),
                self.sparsity,
                self.values["nm"],
            )
            weight.mul_(mask)
            work.masks[name] = mask


class Magnitude(Pruner):
    name = "magnitude"
    needs_calibration = False
    summary = "smallest |W| per output row (Han et al. 2015)"

    def score(self, weight: torch.Tensor, stat: torch.Tensor | None) -> torch.Tensor:
        return weight.abs()


class Wanda(Pruner):
    """Wanda (Sun et al. 2024, Eq. 1): score |W_ij| * ||X_j||_2 over the calibration tokens."""

    name = "wanda"
    needs_calibration = True
    statistic = "sqnorm"
    summary = "|W| times input-feature norm, per output row (Sun et al. 2024)"

    def score(self, weight: torch.Tensor, stat: torch.Tensor | None) -> torch.Tensor:
        assert stat is not None, "wanda needs input statistics"
        return weight.abs().float() * stat.float().sqrt().unsqueeze(0)
