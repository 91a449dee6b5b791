"""Basis Sharing: one SVD basis shared by a Linear type across consecutive decoder blocks (Wang et al. 2025,
"Basis Sharing: Cross-Layer Parameter Sharing for Large Language Model Compression", §3; paper §5.4, Fig. 9).

For one Linear type (q, k, v, o, gate, up, down) and a group of n consecutive blocks with weights W_1..W_n
(torch layout out x in, y = x W^T), the stacked matrix W = [W_1^T, ..., W_n^T] (in x n*out) is factored as
W ~ B C: a basis B (in x k) that the whole group shares and per-layer coefficients C = [C_1, ..., C_n]
(k x out each), so that block i computes y = (x B) C_i. The fit whitens as SVD-LLM does (Wang et al. 2024,
§3.1), with the group's inputs pooled: S upper triangular with S^T S = sum_i X_i^T X_i (Cholesky, damped), the
truncated SVD S W ~ U_k S_k V_k^T gives B = S^-1 U_k and C = S_k V_k^T (or S_k in B, see `best_rank`), which
minimises sum_i ||X (W_i^T - B C_i)||_F over rank-k factors, X the pooled inputs (Eckart-Young).
whiten=false takes S = I: the plain truncated SVD of W, which needs no calibration.

Storage is k*in + n*k*out against n*in*out dense, so the kept fraction r sets k = floor(r n in out / (in + n out))
and the nominal ratio is C_S = 1/r. A last group shorter than `group` (blocks % group) shares among its own.

The model stays an ordinary HF model: each Linear holds the dense product (B C_i)^T, which computes what the
factored form computes (up to float rounding), so accuracy is identical; the report records the factors' sizes.

Calibration: Basis Sharing fits every group on the activations of the model it is handed, not on compressed
predecessors. So the blocks run in order on the calibration windows with the weights the stage started from,
each block's Linear inputs accumulated as X^T X (statistics.input_statistics), and a group is fitted once all its
blocks ran; only one group's statistics are held at a time.

Order with pruning (paper §5.4: magnitude pruning P and Basis Sharing S in both orders). In P>S every weight
that was exactly zero when the stage started stays zero: the deployed form is the shared factors plus the
pruning bit mask, with nominal ratio C_P C_S as for P>Q. In S>P the pruner prunes the reconstructed weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ..blocks import block_call_kwargs, block_linears, capture_block_inputs, decoder_blocks, move_outside_blocks, run_block
from ..errors import PqqpError
from .base import Method, Param, boolean, ratio_in_unit, ratio_up_to_one
from .statistics import input_statistics
from .base import positive_int

TYPES = ("q", "k", "v", "o", "gate", "up", "down")  # the Linears of a Llama block, by their names' stems


def linear_types(text: str) -> tuple[str, ...]:
    """`q:k:v` (or `q+k+v`, or `all`) as the listed types in block order, each once."""
    names = {part.strip().lower() for part in text.replace("+", ":").split(":")}
    if names == {"all"}:
        return TYPES
    if not names <= set(TYPES):
        raise ValueError(text)
    return tuple(t for t in TYPES if t in names)


def linear_type(name: str) -> str:
    """The type of a block Linear from its name: `self_attn.q_proj` -> `q`, `mlp.down_proj` -> `down`."""
    return name.rsplit(".", 1)[-1].removesuffix("_proj")


def typed_linears(block: nn.Module, types: tuple[str, ...]) -> dict[str, nn.Linear]:
    """The block's Linear of each type in `types`; a one-line error if one is missing."""
    found = {linear_type(name): linear for name, linear in block_linears(block).items()}
    missing = [t for t in types if t not in found]
    if missing:
        raise PqqpError(f"share: no {', '.join(missing)} Linear in {type(block).__name__} (it has "
                        f"{', '.join(sorted(found))}): accepted targets among {':'.join(TYPES)} that the block has")
    return {t: found[t] for t in types}


def shared_rank(r: float, n: int, d_in: int, d_out: int) -> int:
    """The largest k with k*d_in + n*k*d_out <= r*n*d_in*d_out: basis plus coefficients within the budget."""
    return math.floor(r * n * d_in * d_out / (d_in + n * d_out) + 1e-9)


def whitening(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper-triangular S with S^T S = H + damp * mean(diag H) * I (SVD-LLM's Cholesky whitening, damped so that
    few calibration tokens or dead inputs still give a factor)."""
    h = hessian.double()
    h = h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    lower, info = torch.linalg.cholesky_ex(h)
    if info.item():
        raise PqqpError(f"share: the calibration X^T X is singular (order {h.shape[0]}): accepted damp > 0, "
                        f"e.g. damp=0.01, or more calibration tokens")
    return lower.T


def best_rank(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors P (rows x rank), Q (rank x cols) with P Q the truncated SVD U_k S_k V_k^T of `matrix` (Eckart-Young).

    Found from the eigenvectors of the smaller Gram matrix, about three times cheaper on the CPU than an SVD of
    the matrix; S_k then sits on the side that needs no division: P = U_k, Q = U_k^T A when rows <= cols,
    else P = A V_k, Q = V_k^T (the product, and the span of P, are the same either way).
    """
    if matrix.shape[0] <= matrix.shape[1]:
        u = torch.linalg.eigh(matrix @ matrix.T).eigenvectors[:, -rank:].flip(1)
        return u, u.T @ matrix
    v = torch.linalg.eigh(matrix.T @ matrix).eigenvectors[:, -rank:].flip(1)
    return matrix @ v, v.T


def fit_shared_basis(weights: list[torch.Tensor], rank: int, scale: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Basis B (in x rank) and coefficients C_i (rank x out) with W_i^T ~ B C_i for every weight (out x in).

    `scale` is the whitening S (in x in, upper triangular): B C = S^-1 [S W]_k, the best rank-k fit in the norm
    ||S .||_F; None fits the plain SVD [W]_k. In float64.
    """
    stacked = torch.cat([w.double().T for w in weights], dim=1)
    basis, coefficients = best_rank(stacked if scale is None else scale @ stacked, rank)
    if scale is not None:
        basis = torch.linalg.solve_triangular(scale, basis, upper=True)
    return basis, list(coefficients.split([w.shape[0] for w in weights], dim=1))


def block_groups(n_blocks: int, size: int) -> list[list[int]]:
    """Consecutive blocks in groups of `size`; the last one holds the remainder (as Basis Sharing does)."""
    return [list(range(start, min(start + size, n_blocks))) for start in range(0, n_blocks, size)]


@dataclass(frozen=True)
class Fit:
    """One Linear type in one group of blocks: the weights' shape and the shared rank (None: left dense, r=1)."""

    target: str
    blocks: tuple[int, ...]
    d_out: int
    d_in: int
    rank: int | None

    @property
    def dense(self) -> int:
        return len(self.blocks) * self.d_in * self.d_out

    @property
    def stored(self) -> int:
        """Parameters of the basis (d_in x k) and the coefficients (k x d_out per block)."""
        return self.dense if self.rank is None else self.rank * (self.d_in + len(self.blocks) * self.d_out)


class Share(Method):
    """Basis Sharing (Wang et al. 2025): per Linear type, one whitened-SVD basis shared by `group` consecutive
    blocks, written back as dense weights. Nominal ratio C_S = 1/r; r=1 leaves the model unchanged."""

    name = "share"
    slow = True
    kind = "share"
    scope = "model"
    granularity = "Linear type across a group of consecutive blocks (shared basis, per-layer coefficients)"
    needs_calibration = True  # per instance: whiten=false (or r=1) needs none, set in __init__
    summary = "cross-layer shared SVD basis with SVD-LLM whitening (Basis Sharing, Wang et al. 2025)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("r", ratio_up_to_one, 0.8, "a float in (0, 1]",
              "kept fraction of each type's parameters: basis + coefficients <= r * dense (C_S = 1/r)"),
        Param("group", positive_int, 2, "a positive integer", "consecutive decoder blocks that share one basis"),
        Param("whiten", boolean, True, "true or false",
              "fit in the calibration-whitened norm (SVD-LLM); false: plain SVD, no calibration"),
        Param("damp", ratio_in_unit, 0.01, "a float in [0, 1)", "whitening dampening, as a fraction of mean(diag X^T X)"),
        Param("targets", linear_types, TYPES, f"types joined by ':' among {':'.join(TYPES)}, or all",
              "the Linear types that share a basis; the others stay dense"),
    )

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.needs_calibration = self.values["whiten"] and self.values["r"] < 1.0

    def ratio(self) -> float:
        return 1.0 / self.values["r"]

    def validate(self, linears: dict[str, nn.Linear]) -> None:
        found = {linear_type(name) for name in linears}
        missing = [t for t in self.values["targets"] if t not in found]
        if missing:
            raise PqqpError(f"share: no {', '.join(missing)} Linear in the decoder blocks (they have "
                            f"{', '.join(sorted(found))}): accepted targets among {':'.join(TYPES)} that the blocks have")

    def plan(self, blocks: nn.ModuleList) -> list[list[Fit]]:
        """Each group's fit of every target type, checked before anything changes."""
        r, size, targets = self.values["r"], self.values["group"], self.values["targets"]
        if size > len(blocks):
            raise PqqpError(f"share:group={size} is larger than the model's {len(blocks)} decoder blocks: "
                            f"accepted group <= {len(blocks)}")
        plan = []
        for group in block_groups(len(blocks), size):
            members = [typed_linears(blocks[i], targets) for i in group]
            fits = []
            for target in targets:
                shapes = {tuple(m[target].weight.shape) for m in members}
                if len(shapes) > 1:
                    raise PqqpError(f"share: the {target} Linears of blocks {group} differ in shape {sorted(shapes)}: "
                                    "accepted blocks whose Linears of one type have one shape")
                d_out, d_in = shapes.pop()
                rank = shared_rank(r, len(group), d_in, d_out)
                if rank == 0:
                    least = (d_in + len(group) * d_out) / (len(group) * d_in * d_out)
                    raise PqqpError(f"share:r={r:g} leaves no basis vector for {target} ({d_out} x {d_in}, "
                                    f"{len(group)} blocks): accepted r >= {least:.3g}")
                fits.append(Fit(target, tuple(group), d_out, d_in, None if r == 1.0 else rank))
            plan.append(fits)
        return plan

    @torch.no_grad()
    def apply_model(self, model: Any, calibration: torch.Tensor | None, device: torch.device, seed: int,
                    progress: bool = True) -> dict:
        """Share a basis in every group and target type, in place; return the ranks and parameter counts.

        Deterministic: every calibration window, no sampling (`seed` is not used).
        """
        blocks = decoder_blocks(model)
        plan = self.plan(blocks)
        whiten = self.needs_calibration
        if whiten and (calibration is None or calibration.numel() == 0):
            raise PqqpError("share needs calibration samples for whiten=true: pass calibration token ids, or whiten=false")
        home = next(model.parameters()).device
        hidden: list[torch.Tensor] = []
        calls: list[dict] = [{} for _ in blocks]
        if whiten:
            calibration = calibration.to(device)
            move_outside_blocks(model, blocks, device)
            calls = block_call_kwargs(model, blocks, calibration[0])
            hidden = capture_block_inputs(model, blocks, calibration)
        kept_zeros = 0
        for fits in tqdm(plan, desc=f"share {self.canonical()}", unit="group", leave=False, disable=not progress):
            group = list(fits[0].blocks)
            members = [typed_linears(blocks[i], self.values["targets"]) for i in group]
            for i in group:
                blocks[i].to(device)
            hessians: dict[str, torch.Tensor] = {}
            if whiten:
                hidden, hessians = self.group_statistics(blocks, group, members, hidden, calls)
            for fit in fits:
                kept_zeros += self.share(fit, [m[fit.target] for m in members], hessians.get(fit.target))
            for i in group:
                blocks[i].to(home)
        model.to(home)
        return self.summary_of(plan, blocks, kept_zeros)

    @staticmethod
    def group_statistics(blocks: nn.ModuleList, group: list[int], members: list[dict[str, nn.Linear]],
                         hidden: list[torch.Tensor], calls: list[dict]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Run the group's blocks in order; return their outputs and, per type, the X^T X summed over the group."""

        summed: dict[str, torch.Tensor] = {}
        for index, member in zip(group, members):
            with input_statistics(member, "hessian") as stats:
                hidden = run_block(blocks[index], hidden, calls[index])
            for t, h in stats.items():
                summed[t] = summed[t] + h if t in summed else h
        return hidden, summed

    def share(self, fit: Fit, linears: list[nn.Linear], hessian: torch.Tensor | None) -> int:
        """Replace the group's weights of one type by (B C_i)^T, keeping zero weights at zero; return their count."""
        if fit.rank is None:
            return 0
        scale = None if hessian is None else whitening(hessian, self.values["damp"])
        basis, coefficients = fit_shared_basis([linear.weight.data for linear in linears], fit.rank, scale)
        zeros = 0
        for linear, coefficient in zip(linears, coefficients):
            pruned = linear.weight.data == 0
            linear.weight.data.copy_((basis @ coefficient).T.to(linear.weight.dtype).masked_fill(pruned, 0.0))
            zeros += int(pruned.sum())
        return zeros

    @staticmethod
    def summary_of(plan: list[list[Fit]], blocks: nn.ModuleList, kept_zeros: int) -> dict:
        """What the report records: per type the rank of each group and the parameter counts, and in total the
        kept fraction and the sharing ratio C_S = dense / stored over every decoder Linear (others count dense)."""
        types: dict[str, dict] = {}
        for fit in (fit for fits in plan for fit in fits):
            entry = types.setdefault(fit.target, {"rank": [], "stored": 0, "dense": 0})
            entry["rank"].append(fit.rank)
            entry["stored"] += fit.stored
            entry["dense"] += fit.dense
        for entry in types.values():
            entry["ratio"] = entry["stored"] / entry["dense"]
        everything = sum(lin.weight.numel() for b in blocks for lin in block_linears(b).values())
        stored = everything - sum(e["dense"] - e["stored"] for e in types.values())
        return {"groups": [list(fits[0].blocks) for fits in plan], "types": types, "stored": stored,
                "dense": everything, "ratio": stored / everything, "share": everything / stored, "kept_zeros": kept_zeros}
