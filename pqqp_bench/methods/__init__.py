"""The method registry: every compression method the harness can put in a recipe, by name.

Built-in methods live in this package. Other packages add theirs through the entry-point group
`pqqp_bench.methods` (docs/plugins.md): each entry point names one `Method` subclass, and its name must be the
method's `name`. Plugins are read once per process, when a recipe or `pqqp methods` first asks for a method.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Mapping, get_args

from .. import __version__
from ..errors import PqqpError
from .base import B_ORIG, Kind, LayerWork, Method, Param
from .gptq import GPTQ
from .lora import LoRA
from .mpq import MPQ
from .prune import Magnitude, Pruner, Wanda
from .quarot import QuaRot
from .quantizer import Quantizer
from .rtn import RTN
from .share import Share
from .sleb import SLEB
from .sparsegpt import SparseGPT

ENTRY_POINT_GROUP = "pqqp_bench.methods"
PACKAGE = "pqqp-bench"

METHODS: Mapping[str, type[Method]] = MappingProxyType(
    {m.name: m for m in (Magnitude, Wanda, SparseGPT, SLEB, RTN, GPTQ, MPQ, QuaRot, Share, LoRA)}
)  # the built-in methods


@dataclass(frozen=True)
class Registered:
    """A method in the registry and the package (distribution) it comes from."""

    method: type[Method]
    package: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.package == PACKAGE


@dataclass(frozen=True)
class Registry:
    """Every method by name, and the plugin entry points that could not be loaded (name -> why)."""

    methods: Mapping[str, Registered]
    broken: Mapping[str, str]


def check_plugin(name: str, loaded: object, package: str) -> type[Method]:
    """The entry point's Method subclass, or a one-line error saying what the entry point must be."""
    where = f"plugin entry point '{name}' of package {package}"
    if not (isinstance(loaded, type) and issubclass(loaded, Method)):
        raise PqqpError(f"{where} is {loaded!r}: accepted a subclass of pqqp_bench.methods.Method")
    if getattr(loaded, "name", None) != name:
        raise PqqpError(f"{where} loads a method named {getattr(loaded, 'name', None)!r}: the entry point's name "
                        "must be the method's `name`")
    if getattr(loaded, "kind", None) not in get_args(Kind):
        raise PqqpError(f"{where}: kind {getattr(loaded, 'kind', None)!r} is not accepted: {', '.join(get_args(Kind))}")
    if loaded.scope not in ("layer", "model"):
        raise PqqpError(f"{where}: scope {loaded.scope!r} is not accepted: layer, model")
    return loaded


@functools.cache
def registry() -> Registry:
    """Built-in methods plus those of installed plugins. A plugin that fails to import is left out and listed
    in `broken` (the harness keeps working without it); a plugin method whose name is taken is refused."""
    methods = {name: Registered(cls, PACKAGE, __version__) for name, cls in METHODS.items()}
    broken: dict[str, str] = {}
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        package = point.dist.name if point.dist else "?"
        version = point.dist.version if point.dist else "?"
        if point.name in methods:
            raise PqqpError(f"plugin method '{point.name}' of package {package} clashes with the method of that name "
                            f"from {methods[point.name].package}: uninstall one of them")
        try:
            loaded = point.load()
        except Exception as error:  # an optional library missing or broken: keep working without it
            broken[point.name] = f"{package} {version}: {type(error).__name__}: {error}".splitlines()[0]
            continue
        methods[point.name] = Registered(check_plugin(point.name, loaded, package), package, version)
    return Registry(MappingProxyType(methods), MappingProxyType(broken))


def method_class(name: str) -> type[Method]:
    """The registered method called `name`, or a one-line error listing the accepted names."""
    found = registry()
    if name in found.methods:
        return found.methods[name].method
    if name in found.broken:
        raise PqqpError(f"method '{name}' is a plugin that failed to load ({found.broken[name]})")
    raise PqqpError(f"unknown method '{name}': accepted {', '.join(sorted(found.methods))}")


def source_of(cls: type[Method]) -> Registered | None:
    """The registry entry of a method class (None for a class that is not registered, e.g. in a test)."""
    entry = registry().methods.get(getattr(cls, "name", ""))
    return entry if entry is not None and entry.method is cls else None


__all__ = ["B_ORIG", "ENTRY_POINT_GROUP", "METHODS", "LayerWork", "Method", "Param", "Pruner", "Quantizer",
           "Registered", "Registry", "method_class", "registry", "source_of"]
