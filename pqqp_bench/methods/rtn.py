"""Round-to-nearest quantization of weights, activations and the KV cache (paper App. C: W, A and KV at the
same bit width, clipping on weights)."""

from __future__ import annotations

from .base import LayerWork
from .quantize import fit_grid
from .quantizer import Quantizer

class RTN(Quantizer):
    name = "rtn"
    granularity = "weight (per output channel or group)"
    needs_calibration = False
    summary = "round-to-nearest, symmetric, MSE-searched weight clipping"

    def quantize_weights(self, work: LayerWork) -> None:
        for name, linear in work.linears.items():
            grid = fit_grid(linear.weight.data, self.values["w"], self.values["g"], self.values["clip"],
                            grid=self.values["grid"])
            weight = grid.round(linear.weight.data)
            mask = work.masks.get(name)
            linear.weight.data.copy_(weight if mask is None else weight * mask)
            work.grids[name] = grid
