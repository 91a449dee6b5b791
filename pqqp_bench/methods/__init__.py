"""The method registry: every compression method the harness can put in a recipe, by name."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from ..errors import PqqpError
from .base import B_ORIG, LayerWork, Method, Param
from .gptq import GPTQ
from .lora import LoRA
from .mpq import MPQ
from .prune import Magnitude, Pruner, Wanda
from .quarot import QuaRot
from .rtn import RTN, Quantizer
from .share import Share
from .sleb import SLEB
from .sparsegpt import SparseGPT

METHODS: Mapping[str, type[Method]] = MappingProxyType(
    {m.name: m for m in (Magnitude, Wanda, SparseGPT, SLEB, RTN, GPTQ, MPQ, QuaRot, Share, LoRA)}
)


def method_class(name: str) -> type[Method]:
    """The registered method called `name`, or a one-line error listing the accepted names."""
    try:
        return METHODS[name]
    except KeyError:
        raise PqqpError(f"unknown method '{name}': accepted {', '.join(sorted(METHODS))}") from None


__all__ = ["B_ORIG", "METHODS", "LayerWork", "Method", "Param", "Pruner", "Quantizer", "method_class"]
