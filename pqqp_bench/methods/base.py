"""What every compression method declares, and the per-layer work it is handed.

A method is a small class with class-level declarations (name, kind, granularity, whether it needs
calibration, its parameters) and validated parameter values on the instance. Every method of one kind has
the same signature, so a recipe string or a pytest parameter picks one by name (the `locuslab/wanda` style).

Layer-scope methods follow the SparseGPT/GPTQ lifecycle for one decoder block at a time: the engine
collects the input statistics the method asks for through forward hooks, calls `apply`, and frees them.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import nn

from ..errors import PqqpError

Kind = Literal["prune", "quant", "transform", "share", "tune"]
KIND_LETTERS = {"prune": "P", "quant": "Q", "share": "S", "tune": "L"}  # Recipe.order; transforms have none
Statistic = str  # a name in statistics.STATISTICS: what `apply` finds in `LayerWork.stats`

B_ORIG = 16  # the paper's reference precision: C_Q = B_orig / B_Q (§2)


@dataclass(frozen=True)
class Param:
    """One method parameter: how to read it from a recipe string and what values are accepted."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    accepted: str
    help: str

    def read(self, method: str, text: str) -> Any:
        try:
            return self.parse(text.strip())
        except (ValueError, TypeError):
            raise PqqpError(
                f"bad value {self.name}={text!r} for method '{method}': accepted {self.accepted}"
            ) from None


def format_value(value: Any) -> str:
    """The canonical text of a parameter value: floats without trailing zeros, None as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".10g")
    if isinstance(value, tuple):
        return ":".join(str(v) for v in value)
    return str(value)


_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, eight elements a byte (the last byte zero-padded)."""
    flat = mask.reshape(-1)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The bool tensor of `shape` that `pack_bits` turned into `packed`."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = packed.unsqueeze(1).bitwise_and(weights).ne(0).reshape(-1)
    return bits[: shape.numel()].reshape(shape)


class PackedMasks(MutableMapping):
    """Pruning masks by Linear name, stored one bit per weight.

    The engine keeps every block's masks until the whole recipe is done (later passes must keep them, and the
    report counts them): as bool tensors they would cost a quarter of the fp32 model, packed a thirty-second.
    A mask reads back as a fresh bool tensor on the device it was stored from.
    """

    def __init__(self) -> None:
        self._packed: dict[str, tuple[torch.Tensor, torch.Size]] = {}

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask of {name} has dtype {mask.dtype}: a bool tensor (True = kept) is required")
        self._packed[name] = (pack_bits(mask), mask.shape)

    def __getitem__(self, name: str) -> torch.Tensor:
        packed, shape = self._packed[name]
        return unpack_bits(packed, shape)

    def __delitem__(self, name: str) -> None:
        del self._packed[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)


@dataclass
class LayerWork:
    """One decoder block handed to the layer-scope methods of a recipe, in recipe order.

    `masks` holds the kept-weight masks (True = kept) that earlier pruning stages set, one bit per weight:
    every later stage must keep those weights at zero. `grids` holds the weight grids (quantize.WeightGrid) that earlier quantization
    stages chose: a later stage that changes weights must leave them on the grid. `reference` holds each weight as it was when the block's pass started; pruning
    breaks ties in its score by the reference magnitude, never by tensor index (design notes).
    """

    index: int
    block: nn.Module
    linears: dict[str, nn.Linear]
    attention: nn.Module | None
    reference: dict[str, torch.Tensor]
    masks: PackedMasks = field(default_factory=PackedMasks)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    bits: dict[str, dict[str, int]] = field(default_factory=dict)
    grids: dict[str, Any] = field(default_factory=dict)
    kv_bits: int | None = None
    seed: int = 0


class Method:
    """Base of every method; subclasses declare the class variables below.

    `scope` is "layer" for methods applied block by block inside the engine's calibration pass (`apply`), or
    "model" for methods that need the whole model at once (`apply_model`: block removal, rotations).
    A "transform" (a rotation) compresses nothing by itself: in a recipe it belongs to the method after it.
    "share" ties weights of several layers (parameter sharing, paper §5.4); "tune" trains added parameters to
    recover quality (PEFT, paper §5.4) and compresses nothing.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    scope: ClassVar[Literal["layer", "model"]] = "layer"
    granularity: ClassVar[str]
    needs_calibration: ClassVar[bool]
    statistic: ClassVar[Statistic | None] = None
    params: ClassVar[tuple[Param, ...]] = ()
    summary: ClassVar[str] = ""
    removes_blocks: ClassVar[bool] = False  # a pruner that removes whole decoder blocks (SLEB): its ratio multiplies
    slow: ClassVar[bool] = False  # minutes on the embedded model on CPU: its grid cases carry pytest's `slow` mark
    uses_layer_pass: ClassVar[bool] = False  # a model-scope method given the engine's block-by-block pass (`apply_model`)
    implements: ClassVar[str | None] = None  # a plugin's: the built-in method it is another implementation of

    def __init__(self, **values: Any) -> None:
        known = {p.name: p for p in self.params}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise PqqpError(
                f"unknown parameter '{unknown[0]}' for method '{self.name}': accepted "
                + (", ".join(known) or "no parameters")
            )
        self.values: dict[str, Any] = {n: values.get(n, p.default) for n, p in known.items()}
        self.check()

    @classmethod
    def from_text(cls, raw: dict[str, str]) -> "Method":
        known = {p.name: p for p in cls.params}
        values = {}
        for key, text in raw.items():
            if key not in known:
                raise PqqpError(
                    f"unknown parameter '{key}' for method '{cls.name}': accepted "
                    + (", ".join(known) or "no parameters")
                )
            values[key] = known[key].read(cls.name, text)
        return cls(**values)

    def check(self) -> None:
        """Raise PqqpError for a combination of values that is not accepted."""

    def ratio(self) -> float:
        """The nominal compression ratio this stage asks for (paper §2)."""
        raise NotImplementedError

    def canonical(self) -> str:
        """`name:k=v,...` with parameters in declared order and defaults left out."""
        shown = [
            f"{p.name}={format_value(self.values[p.name])}"
            for p in self.params
            if self.values[p.name] != p.default
        ]
        return self.name + (":" + ",".join(shown) if shown else "")

    def full(self) -> dict[str, Any]:
        """Every parameter with its value, defaults included: what the cache key hashes. A plugin method adds
        its package and version, so that another release of the library it wraps is another measurement."""
        from . import source_of  # the registry imports this module

        entry = source_of(type(self))
        plugin = {"package": f"{entry.package}=={entry.version}"} if entry and not entry.builtin else {}
        return {"method": self.name, **{k: format_value(v) for k, v in self.values.items()}, **plugin}

    @classmethod
    def builtin(cls) -> bool:
        """Whether the method is held to the harness's invariants as errors (its own methods, and classes that
        are not registered at all) rather than a plugin's (a broken invariant is reported with the case:
        `compress.reconcile`)."""
        from . import source_of

        entry = source_of(cls)
        return entry is None or entry.builtin

    def apply(self, work: LayerWork) -> None:
        raise NotImplementedError

    def apply_model(self, model: Any, calibration: torch.Tensor | None, device: torch.device, seed: int,
                    progress: bool = True) -> dict:
        """Model-scope methods: change the whole model; return what the report should record. A quantizer also
        returns its per-Linear `bits` and `grids` there, which the engine moves into the block works
        (`compress.adopt_weight_grids`). A method with `uses_layer_pass` is also given the engine's calibrated
        block-by-block pass as the keyword `layer_pass` (`compress.layer_pass`): methods never import the engine."""
        raise NotImplementedError

    def validate(self, linears: dict[str, nn.Linear]) -> None:
        """Raise PqqpError before any work starts if the model's shapes do not suit the parameters."""

    def check_architecture(self, model: nn.Module) -> None:
        """Raise PqqpError where the model's architecture cannot take this method. `model` may be a skeleton on
        the meta device (`models.skeleton`), so a recipe is refused from the config before weights and corpus
        load."""

    def __repr__(self) -> str:
        return self.canonical()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Method) and self.full() == other.full()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.full().items())))


# --- parameter parsers: each raises ValueError on bad text -------------------------------------------


def ratio_in_unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError(text)
    return value


def bits_or_none(text: str) -> int | None:
    if text.lower() in ("none", "16f", "fp"):
        return None
    value = int(text)
    if not 2 <= value <= 16:
        raise ValueError(text)
    return value


def n_of_m(text: str) -> tuple[int, int] | None:
    """`2:4` means 2 weights kept in every group of 4 consecutive input weights."""
    if text.lower() == "none":
        return None
    n_text, m_text = text.split(":")
    n, m = int(n_text), int(m_text)
    if not 0 < n < m:
        raise ValueError(text)
    return n, m


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def positive_int_or_none(text: str) -> int | None:
    if text.lower() in ("none", "-1", "0"):
        return None
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def ratio_up_to_one(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError(text)
    return value


def boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def grid_mode(text: str) -> str:
    if text.lower() in GRIDS:
        return text.lower()
    raise ValueError(text)


GRIDS = ("restricted", "full")  # symmetric weight grids (quantize.symmetric_scale)


def clip_mode(text: str) -> str | float:
    return text.lower() if text.lower() in ("mse", "none") else ratio_up_to_one(text)
