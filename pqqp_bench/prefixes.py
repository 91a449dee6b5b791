"""Stage reuse: compressed models after a recipe prefix, kept so that a grid computes each prefix once.

In a grid, the joint case `sparsegpt:p=0.2 > rtn:w=4` starts with exactly the single-method case
`sparsegpt:p=0.2`, and `quarot > rtn:w=4 > sparsegpt:p=0.2` with the curve point `quarot > rtn:w=4`: under the
staged schedule the model after a recipe's first k stages is the k-stage recipe's own result (paper §2,
(f2 ∘ f1)(φ)). The engine hands out its state at the end of every pass (`compress.CompressionState`); this
cache keeps the ones the grid will start from again, bounded in bytes, least recently used out first, and a
case starts from its longest cached prefix. What a cached state holds is the whole engine state (weights,
masks, grids, structure records, reference weights, the torch random state), so a case computed from a prefix
ends bit for bit where a run from scratch ends (tests/test_prefixes.py).

Keys are those of a measurement minus the evaluation: the model's fingerprint, the calibration samples (corpus,
seed, count, length), the prefix's parameters (its recipe key) and the schedule.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .errors import PqqpError

if TYPE_CHECKING:
    from torch import nn

    from .compress import CompressionState
    from .methods.base import Method
    from .spec import Recipe

GIB = 1024 ** 3


def cache_size(text: str | float | int) -> float:
    """A prefix-cache size in GiB: a finite number >= 0 (0 turns the cache off)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 <= value < math.inf:
        raise PqqpError(f"bad prefix cache size {text!r}: accepted a size in GiB >= 0, e.g. 4 (0 turns reuse off)")
    return value


@dataclass
class PrefixCache:
    """Compressed models after recipe prefixes, at most `gib` GiB of tensors, least recently used out first.

    `wanted` (a prefix's recipe key -> whether a case that extends it needs reference weights kept, see
    `compress.keeps_reference`; `wanted_prefixes`) names the prefixes the grid will start from again; with
    `wanted` None every prefix offered is kept. Keys are `prefix_key`s, whose second last item is the recipe key. `hits`, `misses` and `stored` count what happened, for the progress line and tests.
    """

    gib: float = 2.0
    wanted: dict[str, bool] | None = None
    folder: Path | None = None  # the on-disk form (prefix_files.py), bounded by `gib` as well; None: memory only
    entries: OrderedDict = field(default_factory=OrderedDict)
    sizes: dict[tuple, int] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    stored: int = 0
    written: int = 0
    read_from_disk: int = 0

    @property
    def capacity(self) -> int:
        return int(self.gib * GIB)

    def used(self) -> int:
        return sum(self.sizes.values())

    def wants(self, key: tuple) -> bool:
        return self.capacity > 0 and (self.wanted is None or key[-2] in self.wanted)

    def needs_reference(self, key: tuple) -> bool:
        """Whether a case that will start from this prefix needs each block's first-pass weights kept."""
        return bool(self.wanted and self.wanted.get(key[-2]))

    def offer(self, key: tuple, state: "CompressionState", has_reference: bool, stages: tuple["Method", ...] = ()
              ) -> None:
        """Keep a copy of `state` (after `stages`, the prefix it holds) under `key` where the grid wants it and it
        fits; evict the least recently used."""
        if not self.wants(key) or (key in self.entries and (self.entries[key][1] or not has_reference)):
            return
        size = state.nbytes()
        if size > self.capacity:
            return
        self.drop(key)
        while self.entries and self.used() + size > self.capacity:
            self.drop(next(iter(self.entries)))
        self.entries[key] = (state.clone(), has_reference)
        self.sizes[key] = size
        self.stored += 1
        if self.folder is not None:
            self.write(key, state, has_reference, size, stages)

    def path(self, key: tuple, has_reference: bool) -> Path:
        """The on-disk entry of `key` (with or without reference weights)."""
        from .prefix_files import entry_name

        assert self.folder is not None
        return self.folder / f"{entry_name(key)}-{'ref' if has_reference else 'noref'}"

    def write(self, key: tuple, state: "CompressionState", has_reference: bool, size: int,
              stages: tuple["Method", ...]) -> None:
        """The on-disk copy of an entry, for other processes and later runs (prefix_files.py); only prefixes of
        methods the disk form describes (`prefix_files.writable`)."""
        from .prefix_files import NotWritable, evict, save_state, writable

        assert self.folder is not None
        target = self.path(key, has_reference)
        if target.exists() or not stages or not writable(stages):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        evict(self.folder, self.capacity, size)
        try:
            save_state(state, target)
        except NotWritable:
            return
        self.written += 1

    def longest(self, keys: Iterable[tuple[int, tuple]], need_reference: bool, dense: "nn.Module | None" = None
                ) -> "CompressionState | None":
        """A copy of the cached state of the longest prefix among `keys` ((stage count, key) pairs), or None:
        from memory, else (with `folder` and the `dense` model to rebuild it on) from disk. A state without
        reference weights does not serve a recipe that needs them."""
        for _, key in sorted(keys, key=lambda pair: -pair[0]):
            entry = self.entries.get(key)
            if entry is not None and (entry[1] or not need_reference):
                self.entries.move_to_end(key)
                self.hits += 1
                return entry[0].clone()
            state = self.read(key, need_reference, dense) if self.folder is not None and dense is not None else None
            if state is not None:
                self.hits += 1
                self.read_from_disk += 1
                return state
        self.misses += 1
        return None

    def read(self, key: tuple, need_reference: bool, dense: "nn.Module") -> "CompressionState | None":
        from .prefix_files import STATE, load_state

        for has_reference in (True,) if need_reference else (True, False):
            path = self.path(key, has_reference)
            if not path.is_dir():
                continue
            try:
                state = load_state(path, dense)
            except ValueError as exc:  # truncated, edited, another format: rebuilt by the case that needs it
                warnings.warn(f"prefix cache entry {path} is unreadable ({exc}): removed, recomputing", stacklevel=2)
                shutil.rmtree(path, ignore_errors=True)
                continue
            os.utime(path / STATE)  # least recently read goes first
            return state
        return None

    def drop(self, key: tuple) -> None:
        self.entries.pop(key, None)
        self.sizes.pop(key, None)


def prefix_key(identity: tuple, prefix: "Recipe", schedule: str) -> tuple:
    """The cache key of a recipe prefix: the experiment's identity (model fingerprint, calibration), the prefix's
    recipe key (every parameter) and the schedule."""
    return (*identity, prefix.key, schedule)


def wanted_prefixes(recipes: Iterable["Recipe"], schedule: str) -> dict[str, bool]:
    """The prefixes (by recipe key) that a grid will start from again: every proper prefix of a recipe, at the end
    of one of its passes, that is also a prefix of another recipe or a recipe of the grid itself; each with
    whether a recipe extending it keeps reference weights."""
    from .compress import cut_points, keeps_reference
    from .spec import Recipe

    recipes = list(recipes)
    count: dict[str, int] = {}
    reference: dict[str, bool] = {}
    own = {r.key for r in recipes}
    for recipe in recipes:
        for k in cut_points(recipe.stages, schedule)[:-1]:
            key = Recipe(recipe.stages[:k]).key
            count[key] = count.get(key, 0) + 1
            reference[key] = reference.get(key, False) or keeps_reference(recipe.stages, schedule)
    return {key: reference[key] for key in count if count[key] > 1 or key in own}


def trie_order(recipes: list["Recipe"]) -> list[int]:
    """An order of `recipes` (indices) in which every recipe comes right after its prefixes' other extensions
    are done: a depth-first walk of the tree of stages, so the states a case starts from are the most recently
    cached ones. The dense model first; otherwise shorter prefixes before what extends them."""
    return sorted(range(len(recipes)), key=lambda i: [s.canonical() for s in recipes[i].stages])
