"""Fake-quantization grids shared by the quantizers: weights, activations (per token, dynamic) and the KV cache.

Weights and activations use a symmetric signed grid with levels -2^(B-1) .. 2^(B-1)-1, so zero is exactly
representable and pruned weights stay zero. Its scale is `clip * absmax / (2^(B-1)-1)` (the `restricted` grid:
the absmax lands on level 2^(B-1)-1, the level -2^(B-1) is used only under clipping), or, for weights with
`grid=full`, `clip * 2 * absmax / (2^B-1)` (GPTQ's reference quantizer, llm-compressor and compressed-tensors:
the absmax lands half a level beyond 2^(B-1)-1, and -2^(B-1) is used). The KV cache uses an asymmetric grid
per (token, head), as in QuaRot (Ashkboos et al. 2024, §4).

Where a recovery stage trains through the quantized model (LoRA), activation and KV rounding pass gradients
straight through (the STE of Bengio et al. 2013); without a graph to build, they compute exactly what they did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

TINY = 1e-12
KV_ATTENTION = "pqqp_kv_fake_quant"


def qmax_of(bits: int) -> int:
    return 2 ** (bits - 1) - 1


class StraightThrough(torch.autograd.Function):
    """The rounded values forward, the identity's gradient backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
        return rounded

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """`rounded` (computed from `x.detach()`), differentiable as if it were `x` where a graph is being built."""
    return StraightThrough.apply(x, rounded) if torch.is_grad_enabled() and x.requires_grad else rounded


def fake_quant_symmetric(x: torch.Tensor, bits: int, clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Round `x` to the symmetric B-bit grid whose scale is set by the absmax of its last dim."""
    qmax = qmax_of(bits)
    v = x.detach()
    scale = (v.abs().amax(dim=-1, keepdim=True) * clip).clamp(min=TINY) / qmax
    return straight_through(x, (v / scale).round().clamp(-qmax - 1, qmax) * scale)


def fake_quant_asymmetric(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round `x` to the unsigned B-bit grid spanning [min, max] of its last dim (zero kept exact)."""
    levels = 2**bits - 1
    v = x.detach()
    low = v.amin(dim=-1, keepdim=True).clamp(max=0)
    high = v.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (high - low).clamp(min=TINY) / levels
    zero = (-low / scale).round()
    return straight_through(x, ((v / scale).round() + zero).clamp(0, levels).sub(zero).mul(scale))


def grouped(weight: torch.Tensor, group: int | None) -> torch.Tensor:
    """View [out, in] as [out, in/group, group] (per-channel: one group of size in)."""
    rows, cols = weight.shape
    size = cols if group is None else group
    return weight.reshape(rows, cols // size, size)


def levels(bits: int, symmetric: bool) -> tuple[int, int]:
    """The smallest and largest integer level of a B-bit grid."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def round_to_grid(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """(clamp(round(x / scale) + zero) - zero) * scale, with scale and zero broadcast against x."""
    return (x / scale).round().add(zero).clamp(*levels(bits, symmetric)).sub(zero).mul(scale)


@dataclass
class WeightGrid:
    """The grid a quantizer chose for one [out, in] weight: a scale and zero point per (row, group).

    `w_hat = (clamp(round(w / scale) + zero, qmin, qmax) - zero) * scale`; symmetric grids have zero = 0 and
    levels -2^(B-1) .. 2^(B-1)-1, asymmetric ones 0 .. 2^B-1. A later stage that moves weights (SparseGPT's
    updates after quantization) rounds them back onto this grid, and the engine checks that they are on it.
    """

    bits: int
    scale: torch.Tensor  # [out, groups]
    zero: torch.Tensor  # [out, groups]
    group: int  # input columns per group (in_features for per-channel)
    symmetric: bool = True

    def columns(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero of input columns start..stop-1, as [out, stop-start]."""
        index = torch.arange(start, stop, device=self.scale.device) // self.group
        return self.scale[:, index], self.zero[:, index]

    def round(self, weight: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Round the columns start..start+weight.shape[1]-1 of the weight onto the grid."""
        if start == 0 and weight.shape[1] == self.scale.shape[1] * self.group:  # whole matrix: broadcast per group
            groups = grouped(weight.float(), self.group)
            rounded = round_to_grid(groups, self.scale.unsqueeze(-1), self.zero.unsqueeze(-1), self.bits, self.symmetric)
            return rounded.reshape(weight.shape).to(weight.dtype)
        scale, zero = self.columns(start, start + weight.shape[1])
        return round_to_grid(weight.float(), scale, zero, self.bits, self.symmetric).to(weight.dtype)

    def holds(self, weight: torch.Tensor) -> bool:
        """Whether every weight already lies on the grid (up to float rounding of the scale)."""
        scale, _ = self.columns(0, weight.shape[1])
        return bool(((self.round(weight) - weight).abs() <= 1e-4 * scale).all())


def clip_ratios(clip: str | float, steps: int = 40, max_shrink: float = 0.75) -> list[float]:
    """Candidate clip ratios: the GPTQ/QuaRot `mse` grid search over [1 - max_shrink, 1], none, or one value."""
    if clip == "mse":
        return [1.0 - max_shrink * step / steps for step in range(steps)]
    return [1.0] if clip == "none" else [float(clip)]


def symmetric_scale(absmax: torch.Tensor, bits: int, ratio: float, grid: str = "restricted") -> torch.Tensor:
    """The step of a symmetric B-bit grid clipped at `ratio * absmax`: restricted `/ (2^(B-1)-1)`, full
    `* 2 / (2^B-1)` (module docstring)."""
    if grid == "full":
        return (absmax * ratio).clamp(min=TINY) * 2 / (2**bits - 1)
    return (absmax * ratio).clamp(min=TINY) / qmax_of(bits)


def fit_grid(
    weight: torch.Tensor, bits: int, group: int | None, clip: str | float = "mse", symmetric: bool = True,
    norm: float = 2.4, grid: str = "restricted",
) -> WeightGrid:
    """Per (row, group), the clip ratio whose grid rounds the weights with the least L_norm error; `grid` picks the
    symmetric grid (restricted or full, `symmetric_scale`).

    The search is the hot loop of RTN and of GPTQ's group grids: the ranges are taken once, and |e|^norm is
    computed as exp(norm * log(max(|e|, 1e-12))), about half the cost of a float `pow` on CPU; the floor keeps
    exact zeros (pruned weights, common) off log's slow path and adds at most 1e-29 per weight. Its choice does
    not move with the CPU's kernels (README, Reproducibility: weight-only RTN agrees to 1e-5 between them).
    """
    weight = weight.float()
    groups = grouped(weight, group)
    best_err = torch.full(groups.shape[:-1], float("inf"), device=weight.device)
    scale = torch.ones_like(best_err)
    zero = torch.zeros_like(scale)
    absmax, low, high = groups.abs().amax(dim=-1), groups.amin(dim=-1).clamp(max=0), groups.amax(dim=-1).clamp(min=0)
    qmin, qmax = levels(bits, symmetric)
    for ratio in clip_ratios(clip):
        if symmetric:
            s, z = symmetric_scale(absmax, bits, ratio, grid), torch.zeros_like(absmax)
            rounded = (groups / s.unsqueeze(-1)).round_().clamp_(qmin, qmax).mul_(s.unsqueeze(-1))
        else:
            s = ((high - low) * ratio).clamp(min=TINY) / qmax
            z = (-low * ratio / s).round()
            rounded = round_to_grid(groups, s.unsqueeze(-1), z.unsqueeze(-1), bits, symmetric)
        err = rounded.sub_(groups).abs_().clamp_(min=TINY).log_().mul_(norm).exp_().sum(dim=-1)
        better = err < best_err
        best_err, scale, zero = torch.where(better, err, best_err), torch.where(better, s, scale), torch.where(better, z, zero)
    return WeightGrid(bits, scale, zero, groups.shape[-1], symmetric)


def quantize_weight(weight: torch.Tensor, bits: int, group: int | None, clip: str | float,
                    grid: str = "restricted") -> torch.Tensor:
    """Round-to-nearest of a [out, in] weight onto its symmetric grid, per output channel or group."""
    return fit_grid(weight, bits, group, clip, grid=grid).round(weight).to(weight.dtype)


@dataclass(frozen=True)
class ActivationFakeQuant:
    """Forward pre-hook: quantize a Linear's input per token, dynamically, at `bits` (symmetric)."""

    bits: int
    clip: float = 1.0

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (fake_quant_symmetric(args[0], self.bits, self.clip), *args[1:])


@dataclass(frozen=True)
class KVFakeQuant:
    """Marks an attention module whose keys (after RoPE) and values are quantized per token and head."""

    bits: int


def kv_fake_quant_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """An attention function registered with transformers: rotates queries and keys (QuaRot's online
    Hadamard, if the module carries one), quantizes K and V (if the module carries a KV quantizer), then
    runs SDPA. K is quantized after RoPE and rotation, as a KV cache stores it. Selected through the model
    config's attention implementation, so it also acts in lm-eval or generation.
    """
    rotation: torch.Tensor | None = getattr(module, "pqqp_qk_rotation", None)
    if rotation is not None:
        rotation = rotation.to(query)
        query, key = query @ rotation, key @ rotation
    kv: KVFakeQuant | None = getattr(module, "pqqp_kv", None)
    if kv is not None:
        key = fake_quant_asymmetric(key, kv.bits)
        value = fake_quant_asymmetric(value, kv.bits)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def enable_attention_function(config) -> None:
    """Switch a model to the attention function above (registering it with transformers once)."""
    AttentionInterface.register(KV_ATTENTION, kv_fake_quant_attention)
    AttentionMaskInterface.register(KV_ATTENTION, sdpa_mask)
    config._attn_implementation = KV_ATTENTION


def enable_kv_quant(attention: nn.Module, config, bits: int) -> None:
    """Quantize this attention module's KV cache at `bits`."""
    attention.pqqp_kv = KVFakeQuant(bits)
    enable_attention_function(config)
