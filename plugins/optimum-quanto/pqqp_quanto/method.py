"""The `quanto` method: optimum-quanto's weight (and optional activation) quantization in a pqqp-bench recipe.

`quanto:w=4` quantizes every decoder Linear's weight to quanto's qint4 (min-max affine, quanto's own group size),
`quanto:w=4,g=64` with groups of 64 input weights, `quanto:w=8,a=int8` to W8A8 with activation scales calibrated
by quanto's `Calibration` on the harness's calibration windows. See adapter.py for why the model comes back
with plain Linears holding quanto's dequantized weights.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any, Callable, ClassVar

import torch
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods import B_ORIG, Method, Param
from torch import nn

from .adapter import AUTO, Settings, quantize_model

ACTIVATION_NAMES = {"none": None, "8": "int8", "int8": "int8", "qint8": "int8", "fp8": "fp8", "e4m3": "fp8",
                    "qfloat8": "fp8", "e5m2": "e5m2"}


def weight_bits(text: str) -> int:
    """`4`, `int4` or `qint4` -> 4; quanto's integer weight types only (8, 4, 2)."""
    value = int(text.lower().removeprefix("qint").removeprefix("int"))
    if value not in (8, 4, 2):
        raise ValueError(text)
    return value


def activation_type(text: str) -> str | None:
    if text.lower() not in ACTIVATION_NAMES:
        raise ValueError(text)
    return ACTIVATION_NAMES[text.lower()]


def group_size(text: str) -> int | str | None:
    """`auto` (quanto's choice), `none` (one group per output row), or a positive group size."""
    if text.lower() in (AUTO, "none"):
        return None if text.lower() == "none" else AUTO
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def one_of(*accepted: str) -> Callable[[str], str]:
    """A parser accepting exactly these words (any case)."""

    def parse(text: str) -> str:
        if text.lower() not in accepted:
            raise ValueError(text)
        return text.lower()

    return parse


class Quanto(Method):
    """optimum-quanto: int8 (absmax, per row), int4/int2 (affine, grouped) weights; int8/fp8 activations."""

    name = "quanto"
    implements = "rtn"  # round-to-nearest (min-max affine, no clipping search): beside ours in the implementations table
    kind = "quant"
    scope = "model"
    granularity = "weight (int8 per output row; int4/int2 per group of g input weights)"
    needs_calibration = False  # per instance: activations need calibration (set in __init__)
    summary = "optimum-quanto qint8/qint4/qint2 weights, static int8/fp8 activations (dequantized into nn.Linear)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("w", weight_bits, None, "8, 4 or 2 (quanto's qint8, qint4, qint2)", "weight bits"),
        Param("a", activation_type, None, "none, int8 (or 8), fp8 (e4m3) or e5m2",
              "activations: every decoder Linear input, per tensor, static scale calibrated by quanto"),
        Param("g", group_size, AUTO, "auto, none, or a positive group size dividing in_features",
              "int4/int2 group size: auto is quanto's choice (128, 96, 64 or 32 dividing in_features > 128, else "
              "per row), none one group per output row"),
        Param("zp", one_of("float", "int"), "float", "float or int",
              "int4/int2 zero point: float is quanto's default shift (zero not exact), int its zeropoint=True option"),
        Param("opt", one_of("max", "hqq"), "max", "max or hqq", "int4/int2 scale/shift optimizer: min-max or HQQ"),
    )

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.needs_calibration = self.values["a"] is not None

    def check(self) -> None:
        bits, group = self.values["w"], self.values["g"]
        if bits is None:
            raise PqqpError("method 'quanto' needs w=<8, 4 or 2>, e.g. quanto:w=4 (quanto cannot quantize activations "
                            "alone)")
        if bits == 8 and group not in (AUTO, None):
            raise PqqpError(f"quanto g={group} with w=8: accepted g=auto or g=none (quanto's int8 weights have one "
                            "scale per output row)")
        for key, default in (("zp", "float"), ("opt", "max")):
            if bits == 8 and self.values[key] != default:
                raise PqqpError(f"quanto {key}={self.values[key]} with w=8: accepted {key}={default} (int8 weights are "
                                "symmetric, absmax), or w=4 / w=2")

    def ratio(self) -> float:
        """C_Q = B_orig / B_Q from the weight bits (scales and shifts are not counted, as for the built-ins)."""
        return B_ORIG / self.values["w"]

    def validate(self, linears: dict[str, nn.Linear]) -> None:
        group = self.values["g"]
        if not isinstance(group, int):
            return
        for name, linear in linears.items():
            if linear.in_features % group:
                raise PqqpError(f"quanto group size g={group} does not divide in_features={linear.in_features} of "
                                f"{name}: accepted a divisor of every layer's input size, g=auto or g=none")

    def full(self) -> dict[str, Any]:
        """The cache key adds the optimum-quanto release: another release is another measurement."""
        return {**super().full(), "library": f"optimum-quanto=={version('optimum-quanto')}"}

    def settings(self) -> Settings:
        v = self.values
        return Settings(v["w"], v["a"], v["g"], v["zp"], v["opt"])

    @torch.no_grad()
    def apply_model(self, model: Any, calibration: torch.Tensor | None, device: torch.device, seed: int,
                    progress: bool = True) -> dict:
        """Quantize the decoder Linears with quanto (deterministic: `seed` is not used)."""
        if self.needs_calibration and (calibration is None or calibration.numel() == 0):
            raise PqqpError(f"quanto a={self.values['a']} needs calibration samples: pass calibration token ids")
        return quantize_model(model, calibration, device, self.settings(), progress)

