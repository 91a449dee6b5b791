"""General pipelines (paper §5.4, App. B.3): order comparisons beyond one pruner and one quantizer.

A suite's `pipelines:` section names families of comparisons. Each family writes two recipe templates: `first`,
the order the Progressive Intensity Hypothesis favours (the weaker stage earlier, the stronger later), and
`second`, the other order; and a list of points that fill in the templates' `{names}` and give each point its
x, the intensity gap between the stages the two orders swap. For each point

    A(first -> second) = M(first) - M(second)                                     (Def. 4, two whole pipelines)

and the hypothesis for the family is the paper's direction: A is non-decreasing in x, within noise (as Theorem
2 for one pair). A point with x = 0 whose two orders are the same recipe anchors A = 0 exactly, so the check
then also says A >= 0 at every x > 0, which is what Figs. 7-10 show ("stronger placed later improves").

    pipelines:
      multistage:                         # a family; its name is the test id
        figure: Fig. 7
        x: p2 - p1                        # what x is, for tables and plots
        first:  "sparsegpt:p={p1} > gptq:w=4,g=64 > sparsegpt:p={p2}"
        second: "sparsegpt:p={p2} > gptq:w=4,g=64 > sparsegpt:p={p1}"
        points:
          - {x: 0.0, p1: 0.15, p2: 0.15}
          - {x: 0.1, p1: 0.1, p2: 0.2}
        alone: ["sparsegpt:p=0.3", "gptq:w=4,g=64"]   # optional: stages measured alone, shown beside each point
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import PqqpError
from .spec import Recipe, parse_recipe

FAMILY_KEYS = ("figure", "x", "first", "second", "points", "alone", "description")


@dataclass(frozen=True)
class PipelinePoint:
    """One comparison: the favoured order `first`, the other order `second`, and the intensity gap x."""

    x: float
    first: Recipe
    second: Recipe
    values: tuple[tuple[str, str], ...] = ()
    alone: tuple[Recipe, ...] = ()  # single stages measured for reference (which one is the stronger)

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.values) or f"x={self.x:g}"


@dataclass(frozen=True)
class Pipeline:
    """A family of comparisons whose A(first -> second) should grow with x."""

    name: str
    x_label: str
    points: tuple[PipelinePoint, ...]
    figure: str = ""
    description: str = ""

    def recipes(self) -> list[Recipe]:
        """Every distinct recipe of the family, in point order."""
        return list(dict.fromkeys(r for pt in self.points for r in (*pt.alone, pt.first, pt.second)))


def fill(template: str, values: dict[str, Any], where: str) -> Recipe:
    """A recipe template with `{name}` fields filled in; an unknown field is a one-line error."""
    try:
        text = template.format_map({k: format_number(v) for k, v in values.items()})
    except KeyError as exc:
        raise PqqpError(f"{where}: template {template!r} uses {{{exc.args[0]}}}, which the point does not give: "
                        f"accepted the point's keys {', '.join(sorted(values)) or '(none)'}") from None
    except (ValueError, IndexError):
        raise PqqpError(f"{where}: template {template!r} is not a valid template: write fields as {{name}}") from None
    return parse_recipe(text)


def format_number(value: Any) -> str:
    return format(value, ".10g") if isinstance(value, float) else str(value)


def pipeline_family(name: str, raw: Any) -> Pipeline:
    """One family of the `pipelines:` section; every error names the family and the bad key or value."""
    where = f"pipelines.{name}"
    if not isinstance(raw, dict):
        raise PqqpError(f"bad value {where}={raw!r} in the suite: accepted a mapping with keys {', '.join(FAMILY_KEYS)}")
    unknown = sorted(set(raw) - set(FAMILY_KEYS))
    if unknown:
        raise PqqpError(f"unknown key '{unknown[0]}' in {where}: accepted {', '.join(FAMILY_KEYS)}")
    for key in ("first", "second", "points"):
        if not raw.get(key):
            raise PqqpError(f"{where} has no '{key}': a family needs first, second (recipe templates) and points")
    if not isinstance(raw["points"], list) or not all(isinstance(p, dict) for p in raw["points"]):
        raise PqqpError(f"bad value {where}.points={raw['points']!r}: accepted a list of mappings such as "
                        f"{{x: 0.1, p1: 0.1, p2: 0.2}}")
    points = []
    for i, values in enumerate(raw["points"]):
        if "x" not in values:
            raise PqqpError(f"{where}.points[{i}]={values!r} has no x: give each point its intensity gap x")
        try:
            x = float(values["x"])
        except (TypeError, ValueError):
            raise PqqpError(f"bad value {where}.points[{i}].x={values['x']!r}: accepted a number") from None
        if not math.isfinite(x):
            raise PqqpError(f"bad value {where}.points[{i}].x={values['x']!r}: accepted a finite number")
        at = f"{where}.points[{i}]"
        first, second = fill(str(raw["first"]), values, at), fill(str(raw["second"]), values, at)
        if first == second and x != 0:
            raise PqqpError(f"{at}: first and second are the same recipe '{first}' at x={x:g}: only x = 0 may "
                            f"compare a recipe with itself")
        shown = tuple((str(k), format_number(v)) for k, v in values.items() if k != "x")
        alone = raw.get("alone") or []
        if not isinstance(alone, list):
            raise PqqpError(f"bad value {where}.alone={alone!r}: accepted a list of recipe templates")
        points.append(PipelinePoint(x, first, second, shown, tuple(fill(str(t), values, at) for t in alone)))
    xs = [pt.x for pt in points]
    if len(set(xs)) != len(xs):
        raise PqqpError(f"{where} repeats x values {sorted(xs)}: give each point of a family its own x")
    return Pipeline(str(name), str(raw.get("x") or "x"), tuple(points), str(raw.get("figure") or ""),
                    str(raw.get("description") or ""))


def pipelines_section(value: Any) -> tuple[Pipeline, ...]:
    """The suite's `pipelines:` mapping of family name -> family (null or empty: none)."""
    if not value:
        return ()
    if isinstance(value, tuple) and all(isinstance(v, Pipeline) for v in value):
        return value
    if not isinstance(value, dict):
        raise PqqpError(f"bad value pipelines={value!r} in the suite: accepted a mapping of family name to "
                        f"{{first, second, points, x, figure}}")
    return tuple(pipeline_family(name, raw) for name, raw in value.items())
