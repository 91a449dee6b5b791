"""Fake-quantization grids shared by the quantizers: weights, activations (per token, dynamic) and the KV cache.

Weights and activations use a symmetric signed grid with levels -2^(B-1) .. 2^(B-1)-1 and scale
`clip * absmax / (2^(B-1)-1)`, so zero is exactly representable and pruned weights stay zero. The KV cache
uses an asymmetric grid per (token, head), as in QuaRot (Ashkboos et al. 2024, §4).
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


def fake_quant_symmetric(x: torch.Tensor, bits: int, clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Round `x` to the symmetric B-bit grid whose scale is set by the absmax of its last dim."""
    qmax = qmax_of(bits)
    scale = (x.abs().amax(dim=-1, keepdim=True) * clip).clamp(min=TINY) / qmax
    return (x / scale).round().clamp(-qmax - 1, qmax) * scale


def fake_quant_asymmetric(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round `x` to the unsigned B-bit grid spanning [min, max] of its last dim (zero kept exact)."""
    levels = 2**bits - 1
    low = x.amin(dim=-1, keepdim=True).clamp(max=0)
    high = x.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (high - low).clamp(min=TINY) / levels
    zero = (-low / scale).round()
    return ((x / scale).round() + zero).clamp(0, levels).sub(zero).mul(scale)


def grouped(weight: torch.Tensor, group: int | None) -> torch.Tensor:
    """View [out, in] as [out, in/group, group] (per-channel: one group of size in)."""
    rows, cols = weight.shape
    size = cols if group is None else group
    return weight.reshape(rows, cols // size, size)


def mse_clip(groups: torch.Tensor, bits: int, grid: int = 40, max_shrink: float = 0.75, norm: float = 2.4) -> torch.Tensor:
    """Per-group clip ratio in [1-max_shrink, 1] minimising the L_norm rounding error (the GPTQ/QuaRot `mse` search)."""
    best_err = torch.full(groups.shape[:-1] + (1,), float("inf"), device=groups.device)
    best = torch.ones_like(best_err)
    for step in range(grid):
        ratio = 1.0 - max_shrink * step / grid
        err = (fake_quant_symmetric(groups, bits, ratio) - groups).abs().pow(norm).sum(dim=-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, ratio), best)
    return best


def quantize_weight(weight: torch.Tensor, bits: int, group: int | None, clip: str | float) -> torch.Tensor:
    """Round-to-nearest of a [out, in] weight, per output channel or per group of input weights."""
    groups = grouped(weight.float(), group)
    ratio = mse_clip(groups, bits) if clip == "mse" else (1.0 if clip == "none" else float(clip))
    return fake_quant_symmetric(groups, bits, ratio).reshape(weight.shape).to(weight.dtype)


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
    """An attention function registered with transformers: quantizes K and V, then runs SDPA.

    K is quantized after the rotary embedding, as a KV cache stores it; the function is selected by setting
    the model config's attention implementation, so it also acts in lm-eval or generation.
    """
    kv: KVFakeQuant | None = getattr(module, "pqqp_kv", None)
    if kv is not None:
        key = fake_quant_asymmetric(key, kv.bits)
        value = fake_quant_asymmetric(value, kv.bits)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def enable_kv_quant(attention: nn.Module, config, bits: int) -> None:
    """Quantize this attention module's KV cache at `bits`; switches the model to the KV-quant attention."""
    AttentionInterface.register(KV_ATTENTION, kv_fake_quant_attention)
    AttentionMaskInterface.register(KV_ATTENTION, sdpa_mask)
    attention.pqqp_kv = KVFakeQuant(bits)
    config._attn_implementation = KV_ATTENTION
