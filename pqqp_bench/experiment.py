"""One experiment: a model and a corpus loaded once, then any number of recipes compressed and measured.

This is the glue both the CLI and the pytest plugin use: settings -> model + data -> compress -> evaluate.
Each recipe works on a fresh copy of the dense model, so cases never leak into each other.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .compress import CompressionReport, CompressionState, compress, cut_points, keeps_reference
from .data import Corpus, bos_label, load_corpus
from .errors import PqqpError
from .evaluate import PerplexityResult, layerwise_perplexity, perplexity
from .models import LoadedModel, load_model, skeleton
from .prefixes import PrefixCache, cache_size, prefix_key
from .settings import Settings
from .spec import Recipe, parse_recipe


@dataclass
class CaseResult:
    """A recipe's measurement: what was asked, what was achieved, the metric and the timings."""

    recipe: str
    order: str
    key: str
    report: CompressionReport
    perplexity: PerplexityResult
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "recipe": self.recipe,
            "order": self.order,
            "key": self.key,
            "ppl": self.perplexity.ppl,
            "requested": self.report.requested,
            "achieved": self.report.achieved(),
            **({"flags": self.report.flags} if self.report.flags else {}),
            "structure": self.report.structure,
            "seconds": self.seconds,
            "perplexity": {k: v for k, v in asdict(self.perplexity).items() if k != "window_nll"},
        }


def check_recipes(settings: Settings, recipes: list[Recipe]) -> None:
    """Refuse a recipe whose methods the model's architecture cannot take, from its config alone: before the weights
    and the corpus load (`Method.check_architecture`)."""
    stages = [stage for recipe in recipes for stage in recipe.stages]
    if not stages:
        return
    model = skeleton(settings.model, cache_dir=Path(settings.cache_dir) if settings.cache_dir else None,
                     trust_remote_code=settings.trust_remote_code)
    for stage in stages:
        stage.check_architecture(model)


class Experiment:
    """A loaded model and corpus with fixed calibration samples and evaluation windows."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = settings.resolved_device()
        # nothing is kept until a grid says which prefixes its cases start from (measure.Bench sets `wanted`)
        self.prefixes = PrefixCache(cache_size(settings.prefix_cache) if settings.offload == "none" else 0.0, wanted={},
                                    folder=Path(settings.prefix_cache_dir).expanduser() if settings.prefix_cache_dir else None)
        start = time.perf_counter()
        self.loaded: LoadedModel = load_model(
            settings.model,
            cache_dir=Path(settings.cache_dir) if settings.cache_dir else None,
            device=self.device,
            trust_remote_code=settings.trust_remote_code,
            offload=settings.offload,
        )
        context = self.loaded.context_length
        if context and settings.seqlen > context:
            raise PqqpError(f"seqlen={settings.seqlen} exceeds the context of model '{settings.model}': accepted 2..{context}")
        if settings.seqlen < 2:
            raise PqqpError(f"seqlen={settings.seqlen} is too short: accepted 2..{context or 'the model context'}")
        self.corpus: Corpus = load_corpus(settings.corpus, self.loaded.tokenizer, settings.holdout, settings.bos)
        self.calibrations: dict[int, torch.Tensor] = {}
        self.calibration_for(settings.seed)  # a corpus too small for the samples fails here, before any work
        self.windows = self.corpus.evaluation_windows(settings.seqlen, settings.eval_tokens)
        self.load_seconds = time.perf_counter() - start

    @property
    def calibration(self) -> torch.Tensor:
        """The calibration samples of the settings' seed."""
        return self.calibration_for(self.settings.seed)

    def calibration_for(self, seed: int) -> torch.Tensor:
        """The calibration samples drawn with `seed` ([calib_samples, seqlen]), drawn once per seed."""
        if seed not in self.calibrations:
            s = self.settings
            self.calibrations[seed] = self.corpus.calibration_samples(s.calib_samples, s.seqlen, seed)
        return self.calibrations[seed]

    def calibration_identity(self, seed: int) -> tuple:
        """What the calibration samples of `seed` are drawn from and how: the part of a prefix key that is not
        the recipe (the model's fingerprint, corpus, holdout, samples, length, BOS, seed, device)."""
        s = self.settings
        return (self.loaded.fingerprint, str(s.corpus), s.holdout, s.calib_samples, s.seqlen, self.corpus.bos, seed,
                self.device)

    def compressed(self, recipe: Recipe | str, seed: int | None = None) -> tuple[torch.nn.Module, CompressionReport, float]:
        """A fresh copy of the dense model compressed by `recipe` (the dense model itself for `dense`), its
        compression report and the seconds it took. `seed` (default: the settings' seed) draws the calibration
        samples and seeds randomised methods, so one loaded experiment serves every seed of a grid.

        The copy starts from the longest prefix of `recipe` in the prefix cache (`prefixes.py`), and the states
        at the end of its passes that the grid will start from again are offered to it; `report.reused` names
        the prefix it started from."""
        recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
        seed = self.settings.seed if seed is None else seed
        schedule = self.settings.schedule
        if not recipe.stages:
            return self.loaded.model, compress(self.loaded.model, recipe, progress=False, schedule=schedule), 0.0
        keys = {k: prefix_key(self.calibration_identity(seed), Recipe(recipe.stages[:k]), schedule)
                for k in cut_points(recipe.stages, schedule)}
        need = keeps_reference(recipe.stages, schedule)
        keep = need or any(self.prefixes.needs_reference(key) for key in keys.values())
        start_time = time.perf_counter()
        start = self.prefixes.longest(keys.items(), need, self.loaded.model) if self.prefixes.capacity else None
        model = start.model if start is not None else copy.deepcopy(self.loaded.model)
        reused = str(Recipe(recipe.stages[:start.done])) if start is not None else ""
        torch.manual_seed(seed)

        def offer(state: CompressionState) -> None:
            self.prefixes.offer(keys[state.done], state, keep, recipe.stages[:state.done])

        report = compress(model, recipe, self.calibration_for(seed), device=self.device, seed=seed,
                          progress=self.settings.progress, schedule=schedule, start=start, keep_reference=keep,
                          at_cut=offer if self.prefixes.capacity else None)
        report.reused = reused
        return model, report, time.perf_counter() - start_time

    def run(self, recipe: Recipe | str, seed: int | None = None,
            compressed: tuple[torch.nn.Module, CompressionReport, float] | None = None) -> CaseResult:
        """Compress a fresh copy of the dense model with `recipe` and measure its perplexity (`compressed`: what
        `self.compressed(recipe, seed)` returned already, when another measurement shares it)."""
        recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
        model, report, compress_seconds = compressed or self.compressed(recipe, seed)
        if self.settings.offload == "none":
            ppl = perplexity(model, self.windows, batch_size=self.settings.batch_size, progress=self.settings.progress)
        else:
            ppl = layerwise_perplexity(model, self.windows, self.device, progress=self.settings.progress)
        del model
        ppl.bos = bos_label(self.corpus.bos)
        return CaseResult(
            str(recipe), recipe.order, recipe.key, report, ppl, {"compress": compress_seconds, "evaluate": ppl.seconds}
        )
