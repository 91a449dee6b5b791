"""What every weight quantizer shares: its parameters (weight, activation and KV bits, groups, clipping, grid;
paper App. C) and the activation and KV-cache fake quantization it installs. A quantizer (RTN, GPTQ, a plugin's)
supplies `quantize_weights`."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..errors import PqqpError
from .base import (B_ORIG, LayerWork, Method, Param, bits_or_none, clip_mode, grid_mode, positive_int_or_none,
                   ratio_up_to_one)
from .quantize import ActivationFakeQuant, enable_kv_quant

BITS = "an integer 2..16, or none"


class Quantizer(Method):
    """Shared parameters and the activation/KV part of every weight quantizer."""

    kind = "quant"
    params: ClassVar[tuple[Param, ...]] = (
        Param("w", bits_or_none, None, BITS, "weight bits (symmetric)"),
        Param("a", bits_or_none, None, BITS, "activation bits: every decoder Linear input, per token, dynamic"),
        Param("kv", bits_or_none, None, BITS, "KV-cache bits: keys after RoPE and values, per token and head"),
        Param("g", positive_int_or_none, None, "a positive group size dividing in_features, or none", "weight group size (none: per output channel)"),
        Param("clip", clip_mode, "mse", "mse, none, or a ratio in (0, 1]", "weight clipping: MSE grid search, none, or a fixed ratio"),
        Param("grid", grid_mode, "restricted", "restricted or full",
              "symmetric weight grid: restricted (step absmax/(2^(B-1)-1)) or full (step 2*absmax/(2^B-1), levels "
              "-2^(B-1)..2^(B-1)-1, as GPTQ's reference and compressed-tensors)"),
        Param("aclip", ratio_up_to_one, 1.0, "a ratio in (0, 1]", "activation clipping ratio"),
    )

    def check(self) -> None:
        if all(self.values[k] is None for k in ("w", "a", "kv")):
            raise PqqpError(f"method '{self.name}' quantizes nothing: give at least one of w=, a=, kv= (bits 2..16)")

    def ratio(self) -> float:
        """C_Q = B_orig / B_Q from the weight bits (memory of the weights, paper §2)."""
        bits = self.values["w"]
        return B_ORIG / bits if bits else 1.0

    def validate(self, linears: dict[str, nn.Linear]) -> None:
        group = self.values["g"]
        for name, linear in linears.items():
            if group and linear.in_features % group:
                raise PqqpError(
                    f"group size g={group} does not divide in_features={linear.in_features} of {name}: "
                    f"accepted a divisor of every layer's input size, or g=none for per-channel"
                )

    def quantize_weights(self, work: LayerWork) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def apply(self, work: LayerWork) -> None:
        bits = {k: self.values[k] for k in ("w", "a")}
        if bits["w"]:
            self.quantize_weights(work)
        for name, linear in work.linears.items():
            if bits["a"]:
                linear.register_forward_pre_hook(ActivationFakeQuant(bits["a"], self.values["aclip"]))
            work.bits[name] = {k: v for k, v in bits.items() if v}
        if self.values["kv"] and work.attention is not None:
            enable_kv_quant(work.attention, work.attention.config, self.values["kv"])
            work.kv_bits = self.values["kv"]
