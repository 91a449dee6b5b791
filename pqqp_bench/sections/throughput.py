"""The `throughput` section: generation tokens/s of some recipes, served by vLLM or the transformers fallback.

    throughput: {recipes: [dense, 'sleb:p=0.2', 'rtn:w=8,a=8'], backend: auto, prompt_len: 128, output_len: 128}

Dense is always measured too: every speed-up divides by it. The measurements are the `throughput` metric's
(metrics.py, evaluate/throughput.py); `test_throughput` runs one per recipe, beside the suite's quality metric of
the same compressed copy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable

from ..errors import PqqpError
from ..evaluate.throughput import ThroughputSettings
from ..report import MISSING, Table, number, spread
from ..spec import Recipe, parse_recipe
from ..suite import Case, Suite, compact, short, to_bool
from .base import Board, Section

if TYPE_CHECKING:
    from ..analysis import Analysis
    from ..measure import Bench
    from ..store import Measurement

KEYS = ("recipes", "backend", "prompt_len", "output_len", "num_prompts", "dtype", "enforce_eager", "timeout")


@dataclass(frozen=True)
class Speed:
    """One recipe of the section: its stored tokens/s (either backend) and its stored metric."""

    recipe: Recipe
    throughput: "Measurement | None"
    quality: tuple["Measurement", ...]


@dataclass(frozen=True)
class Throughput(Section):
    """The recipes whose generation speed is measured, and how."""

    key = "throughput"
    mark = "pqqp_throughput"
    recipes: tuple[Recipe, ...] = ()
    settings: ThroughputSettings = ThroughputSettings()

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"recipes": "dense", **{f.name: f.default for f in fields(ThroughputSettings)}}

    @classmethod
    def parse(cls, value: Any) -> "Throughput | None":
        """`throughput: {recipes: [...], backend: auto, prompt_len: 128, ...}` (null: no throughput tests)."""
        if value is None or isinstance(value, Throughput):
            return value
        if not isinstance(value, dict):
            raise PqqpError(f"bad value throughput={value!r} in the suite: accepted a mapping with keys {', '.join(KEYS)}")
        unknown = sorted(set(value) - set(KEYS))
        if unknown:
            raise PqqpError(f"unknown throughput key '{unknown[0]}' in the suite: accepted {', '.join(KEYS)}")
        recipes = value.get("recipes") or ["dense"]
        recipes = recipes.split(";") if isinstance(recipes, str) else recipes
        if not isinstance(recipes, (list, tuple)):
            raise PqqpError(f"bad value throughput.recipes={recipes!r} in the suite: accepted a list of recipes, "
                            f"e.g. [dense, 'sleb:p=0.2', 'rtn:w=8,a=8']")
        numbers = {"prompt_len": int, "output_len": int, "num_prompts": int, "timeout": float, "enforce_eager": to_bool}
        settings = {}
        for key in set(value) - {"recipes"}:
            raw = value[key]
            try:
                settings[key] = numbers[key](raw) if key in numbers and not isinstance(raw, bool) else raw
            except (TypeError, ValueError):
                accepted = "true or false" if key == "enforce_eager" else "a positive number"
                raise PqqpError(f"bad value throughput.{key}={raw!r} in the suite: accepted {accepted}") from None
        return cls(tuple(parse_recipe(str(r).strip()) for r in recipes if str(r).strip()), ThroughputSettings(**settings))

    def check(self, suite: Suite) -> None:
        if suite.offload != "none":
            raise PqqpError(f"offload={suite.offload!r} evaluates perplexity only: accepted no throughput section, "
                            f"or offload none")

    def model_cases(self, model: str) -> list[Case]:
        """The section's measurements on `model`: dense first (the speed-ups divide by it), then each recipe."""
        return [Case(model, r, "throughput", short(r)) for r in dict.fromkeys([Recipe(()), *self.recipes])]

    def speed_cases(self, suite: Suite) -> list[Case]:
        """The section's measurements on every model of the suite, each model's dense first."""
        return [c for m in suite.models for c in self.model_cases(m)]

    def tests(self, suite: Suite) -> dict[str, list]:
        return {"pqqp_throughput": self.speed_cases(suite)}

    def run(self, bench: "Bench", write: Callable[[str], None]) -> None:
        """Each recipe's metric and tokens/s (dense first), through the store."""
        cases = self.speed_cases(bench.suite)
        write(f"throughput: {len(cases)} cases, backend {bench.backend.name} ({bench.backend.reason})")
        for index, case in enumerate(cases, 1):
            quality, m = bench.throughput_case(case.model, case.recipe)
            write(f"[{index}/{len(cases)}] {case.model}  {case.recipe}  {bench.suite.metric} {quality.value:.4f}  "
                  f"{m.value:.1f} tokens/s  x{m.details['speedup']:.2f}  {m.details['served_as']}")

    def report(self, analysis: "Analysis") -> str:
        """The throughput table of every model, from the store."""
        return "\n\n".join(self.table(self.collect(analysis, model), analysis.suite).markdown()
                           for model in analysis.suite.models)

    def collect(self, analysis: "Analysis", model: str) -> tuple[Speed, ...]:
        bench = analysis.bench
        return tuple(Speed(c.recipe, stored_speed(bench, model, c.recipe), tuple(bench.stored_case(c)))
                     for c in self.model_cases(model))

    def expected(self, bench: "Bench") -> int:
        """A tokens/s row per case, and the metric of each recipe beside it (dense's is a case of the suite)."""
        cases = self.speed_cases(bench.suite)
        return len(cases) + sum(len(bench.seeds_for(c.recipe)) for c in cases if c.recipe.stages)

    def measurements(self, collected: tuple[Speed, ...]) -> list["Measurement"]:
        return [m for v in collected for m in (v.throughput, *(v.quality if v.recipe.stages else ()))
                if m is not None]  # the dense model's quality is the board's `dense` already

    def tables(self, board: Board, suite: Suite) -> list[Table]:
        return [self.table(board.part(self.key), suite)]

    def table(self, speeds: tuple[Speed, ...], suite: Suite) -> Table:
        rows = []
        for v in speeds:
            m = v.throughput
            quality = spread(list(v.quality)).text()
            if m is None:
                rows.append((compact(str(v.recipe)), quality, MISSING, MISSING, "", "", ""))
                continue
            d = m.details
            rows.append((compact(str(v.recipe)), quality, number(m.value, 4), f"{d['speedup']:.2f}×",
                         f"{d['backend']} {d['version']}", served_text(m), "; ".join(d["notes"])))
        s = self.settings
        return Table("Generation throughput", ("recipe", "ppl", "tokens/s", "speed-up vs dense", "backend",
                                               "served as (kernels vLLM reported)", "differs from the evaluated model"),
                     tuple(rows),
                     f"Like `vllm bench throughput`: {s.num_prompts} random prompts of {s.prompt_len} tokens, "
                     f"{s.output_len} generated tokens each (ignore_eos), one offline batch, {s.dtype}; tokens/s counts "
                     f"prompt and output tokens. Speed-up: over the dense row of the same store and settings. vLLM has no "
                     f"sparse kernels, so unstructured or N:M sparsity runs dense; removing blocks (SLEB) gives a smaller "
                     f"dense model.")


def stored_speed(bench: "Bench", model: str, recipe: Recipe) -> "Measurement | None":
    """The stored throughput row of the section's settings: vLLM's where there is one, else transformers'."""
    found = (bench.store.get(bench.throughput_key(model, recipe, backend)) for backend in ("vllm", "transformers"))
    return next((m for m in found if m is not None), None)


def served_text(m: "Measurement") -> str:
    """How the row was served: vLLM's format and kernels, or the transformers fallback."""
    d = m.details
    if d["backend"] != "vllm":
        return "transformers fallback: the harness's fake-quantized model, no low-bit kernels"
    kernels = "; ".join(d["kernels"]) or "unquantized linear"
    return f"{'low-bit' if d['low_bit'] else 'dense'}: {d['served_as']} ({kernels})"


SECTION = Throughput
