"""Recipes: ordered compression pipelines written as text.

Grammar (whitespace is free):

    recipe := "dense" | stage (">" stage)*
    stage  := method [":" key "=" value ("," key "=" value)*]

`wanda:p=0.5 > rtn:w=4,a=4,kv=4` prunes first, then quantizes (P->Q). A recipe has a canonical string
(parameters in declared order, defaults left out) for display and test ids, and a stable hash over every
parameter value, defaults included, used as a cache key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .errors import PqqpError
from .methods import Method, method_class
from .methods.base import KIND_LETTERS

DENSE = "dense"


@dataclass(frozen=True)
class Recipe:
    """An ordered tuple of configured methods; empty means the dense model."""

    stages: tuple[Method, ...]

    def __str__(self) -> str:
        return " > ".join(s.canonical() for s in self.stages) or DENSE

    @property
    def canonical(self) -> str:
        return str(self)

    @property
    def key(self) -> str:
        """A stable 16-hex-digit hash of every stage with all its parameter values."""
        payload = json.dumps([s.full() for s in self.stages], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def basis(self) -> tuple[Method, ...]:
        """The leading transforms (rotations): a reparametrisation of the model that both orders share."""
        count = next((i for i, s in enumerate(self.stages) if s.kind != "transform"), len(self.stages))
        return self.stages[:count]

    @property
    def methods(self) -> tuple[Method, ...]:
        """The compressing stages after the basis, in application order."""
        return self.stages[len(self.basis):]

    @property
    def order(self) -> str:
        """The methods' kinds in application order, e.g. `P>Q`, `Q>P`, `P>Q>P`, `Q>L>P` (empty for dense or a lone
        rotation; P prune, Q quantize, S share, L tune)."""
        return ">".join(KIND_LETTERS[s.kind] for s in self.methods if s.kind in KIND_LETTERS)

    def ratios(self) -> dict[str, float]:
        """Nominal ratios (paper §2): C_P = 1/(1-p), C_Q = B_orig/B of the lowest weight precision, and the total
        memory ratio C_P * C_Q (times the parameter-sharing ratio C_S where a recipe shares). Weight pruners' ratios
        add up (each prunes p more of every row); block removal (SLEB) multiplies, since the weight pruners then
        act on the blocks that are left."""
        row = sum(s.sparsity for s in self.stages if s.kind == "prune" and not s.removes_blocks)
        kept = max(0.0, 1.0 - row)
        for stage in self.stages:
            if stage.kind == "prune" and stage.removes_blocks:
                kept *= 1.0 - stage.sparsity
        prune = 1.0 / kept if kept > 0.0 else float("inf")
        quant = max((s.ratio() for s in self.stages if s.kind == "quant"), default=1.0)
        share = 1.0
        for stage in self.stages:
            if stage.kind == "share":
                share *= stage.ratio()
        ratios = {"prune": prune, "quant": quant, "total": prune * quant * share}
        return {**ratios, "share": share} if share != 1.0 else ratios

    def reversed(self) -> "Recipe":
        """The same methods in the opposite order; a leading rotation stays first."""
        return Recipe(self.basis + tuple(reversed(self.methods)))

    def __add__(self, other: "Recipe") -> "Recipe":
        return Recipe(self.stages + other.stages)


def parse_stage(text: str, recipe: str) -> Method:
    name, colon, body = (part.strip() for part in text.partition(":"))
    if not name:
        raise PqqpError(f"empty method name in stage {text.strip()!r} of recipe {recipe!r}: write method:key=value,...")
    if colon and not body:
        raise PqqpError(f"stage {text.strip()!r} has ':' but no parameters: drop the ':' or add key=value")
    raw: dict[str, str] = {}
    for item in (part.strip() for part in body.split(",")) if body else ():
        key, eq, value = (part.strip() for part in item.partition("="))
        if not (eq and key and value):
            raise PqqpError(f"bad parameter {item!r} in stage {text.strip()!r}: write key=value, e.g. p=0.5")
        if key.lower() in raw:
            raise PqqpError(f"parameter '{key}' given twice in stage {text.strip()!r}")
        raw[key.lower()] = value
    return method_class(name.lower()).from_text(raw)


MAX_STAGES = 32
"""The longest recipe accepted: far beyond any published pipeline, short of a typo that runs for an hour."""


def parse_recipe(text: str) -> Recipe:
    """Parse a recipe string; errors name the bad token and what is accepted."""
    if not isinstance(text, str):
        raise PqqpError(f"recipe must be a string, got {text!r}")
    if not text.strip():
        raise PqqpError(f"recipe {text!r} is empty: accepted '{DENSE}' or stages such as 'wanda:p=0.3 > rtn:w=4'")
    if text.strip().lower() == DENSE:
        return Recipe(())
    parts = text.split(">")
    if len(parts) > MAX_STAGES:
        raise PqqpError(f"recipe of {len(parts)} stages ({text[:40]!r}...): accepted at most {MAX_STAGES} stages")
    for i, part in enumerate(parts):
        if not part.strip():
            where = "at the start" if i == 0 else ("at the end" if i == len(parts) - 1 else "between two '>'")
            raise PqqpError(f"empty stage {where} of recipe {text!r}: write 'method:key=value > method:...'")
    stages = tuple(parse_stage(part, text) for part in parts)
    for before, stage in zip(stages, stages[1:]):
        if stage.kind == "transform" and before.kind != "transform":
            raise PqqpError(
                f"'{stage.canonical()}' follows '{before.canonical()}' in recipe {text!r}: a rotation would refill "
                f"pruned weights and move quantized ones off their grid; accepted: rotations first, e.g. "
                f"'{stage.canonical()} > {' > '.join(s.canonical() for s in stages if s is not stage)}'"
            )
    row = sum(s.sparsity for s in stages if s.kind == "prune" and not s.removes_blocks)
    if row >= 1.0:
        raise PqqpError(f"the weight pruners of recipe {text!r} remove p = {row:g} of every row together (their ratios "
                        f"add up): accepted a total below 1")
    return Recipe(stages)
