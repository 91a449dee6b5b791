"""Registers the `pqqp` model type with lm-eval when lm-eval loads its model table, with no action by the user.

lm-eval 0.4.13 discovers no models outside its own package: its registry is filled from `lm_eval.models`'s
`MODEL_MAPPING` when that module is imported. Installing pqqp-bench puts `pqqp_bench_lmeval.pth` into
site-packages; Python runs its one line (`import pqqp_bench_lmeval`) at start-up, which adds a finder
that lets `lm_eval.models` load as usual and then registers `pqqp` as a lazy target (the class, and torch with
it, is imported only when lm-eval asks for `--model pqqp`). So `lm_eval run --model pqqp ...` and
`lm_eval.simple_evaluate(model="pqqp", ...)` work as they do for lm-eval's own models.

Start-up cost: this module imports only the standard library, and the finder answers `None` for every other
module name. Nothing here may raise into the importing program: a failed registration leaves lm-eval as it was.

PYTEST_DONT_REWRITE: imported at start-up, before pytest could rewrite it (it holds no assertions).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Sequence

WATCHED = "lm_eval.models"
MODEL_NAME = "pqqp"
MODEL_TARGET = "pqqp_bench.evaluate.lmeval_model:PqqpLM"


def register() -> bool:
    """Add `pqqp` to lm-eval's model registry (a lazy placeholder); True when it is there afterwards."""
    try:
        from lm_eval.api.registry import model_registry

        if MODEL_NAME not in model_registry:
            model_registry.register(MODEL_NAME, target=MODEL_TARGET)
        return True
    except Exception:  # an lm-eval whose registry differs: leave it untouched (`pqqp lm-eval` still registers)
        return False


class _RegisteringLoader(importlib.abc.Loader):
    """Runs the real loader of `lm_eval.models`, then registers `pqqp` beside the models it registered."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        register()

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, get_filename, ... of the real loader
        return getattr(self.loader, name)


class LmEvalModelsFinder(importlib.abc.MetaPathFinder):
    """A meta-path finder that only wraps the loader of `lm_eval.models`; it removes itself once used."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != WATCHED:
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, LmEvalModelsFinder)]


def install() -> None:
    """Register now if lm-eval's model table is already loaded, else as soon as it is."""
    if WATCHED in sys.modules:
        register()
    elif not any(isinstance(f, LmEvalModelsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, LmEvalModelsFinder())


install()
