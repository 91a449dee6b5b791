"""Suites: a grid of (model, pruner, quantizer, ratio, bits, order) written as YAML, expanded into recipes.

A suite names pruner and quantizer *templates* (`wanda`, `sparsegpt:damp=0.02`, `rtn`, `quarot > gptq:g=64`);
the grid fills in the ratio `p` and the bit width B (weights, activations and KV cache at the same B, paper
App. C). From the grid come three lists, each measured once however many points use it:

* cases: every recipe to measure: dense, each pruner alone (its CER, paper Def. 3), the quantization curve of
  each quantizer (bit widths `curve_bits`; C_Q = 1 is the dense model), and each joint recipe in each order;
* points: one per (model, pruner, quantizer, p, B): what A(Q->P) and C*_P - C_Q of Fig. 3 are computed from;
* hypotheses: one per (model, pruner, quantizer, p): the monotonicity check over its points' bit widths.

Every YAML key can be overridden by a `--pqqp-*` option or a `pqqp run` flag of the same name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import PqqpError
from .evaluate.lmeval import parse_metric
from .settings import KNOBS, Settings, check_bos, check_mode, check_schedule
from .methods import method_class
from .methods.base import boolean, format_value
from .prefixes import cache_size, trie_order
from .spec import Recipe, parse_recipe

ORDERS = ("P>Q", "Q>P")
QUANTIZED = ("w", "a", "kv")


@dataclass(frozen=True)
class GateRule:
    """When the CI gate calls a case regressed for one metric (applied in `gate.py`; either may be None).

    rel_tol: the metric may get worse than the baseline by this fraction of it (0.02: 2%), plus the noise
    allowance; min_recovery: the case must keep this fraction of the dense model's quality (0.9:
    ppl <= dense/0.9), judged only where the baseline met it.
    """

    rel_tol: float | None = 0.02
    min_recovery: float | None = None

    def __post_init__(self) -> None:
        if self.rel_tol is not None and not (isinstance(self.rel_tol, (int, float)) and 0 <= self.rel_tol < math.inf):
            raise PqqpError(f"gate rel_tol={self.rel_tol!r} is not accepted: a finite fraction >= 0 (0.02 is 2%) or null")
        if self.min_recovery is not None and not 0 < self.min_recovery <= 1:
            raise PqqpError(f"gate min_recovery={self.min_recovery!r} is not accepted: a fraction in (0, 1] or null")


SuiteSettings = make_dataclass(
    "SuiteSettings", [(k.key, f"tuple[{k.type}, ...]" if k.suite_key else k.type,
                       field(default=(k.default,) if k.suite_key else k.default)) for k in KNOBS],
    frozen=True)
SuiteSettings.__module__ = __name__
SuiteSettings.__doc__ = """A suite's experiment settings: a field per knob of `settings.KNOBS` (one declaration of each, in
`Settings`), with its default; `models` and `seeds` (the knobs with a `suite_key`) are lists."""


@dataclass(frozen=True)
class Suite(SuiteSettings):
    """A grid and the settings it is measured under (the defaults are the embedded model on pydoc); the settings'
    fields come first, from `SuiteSettings`."""

    name: str = "suite"
    description: str = ""
    metric: str = "ppl"  # or lm-eval:<task>/<metric>, e.g. lm-eval:pqqp_cloze/acc
    lm_eval_limit: int | None = None  # lm-eval tasks: score only the first N documents (None: all)
    pruners: tuple[str, ...] = ("wanda",)
    quantizers: tuple[str, ...] = ("rtn",)
    ratios: tuple[float, ...] = (0.3,)
    bits: tuple[int, ...] = (4, 6, 8)
    quantize: tuple[str, ...] = QUANTIZED
    orders: tuple[str, ...] = ORDERS
    curve_bits: tuple[int, ...] = (3, 4, 5, 6, 8)
    max_ppl_ratio: float = 3.0
    noise_sigmas: float = 2.0
    # relative std of one measured value between machines' CPU kernels (benchmarks/kernel_spread.py): added to every
    # point's A in the verdicts and to both sides in the gate (hypothesis.bootstrap_advantages, gate.judge)
    kernel_noise: float = 0.0
    bootstrap: int = 2000
    level: float = 0.05  # one-sided test level of the hypothesis verdicts (hypothesis.judge)
    gate: tuple[tuple[str, GateRule], ...] = ()  # (metric, rule); a metric not named gets GateRule()
    # the sections the YAML holds (interference, pipelines, order_search, throughput), parsed, in the order of
    # `sections.SECTIONS`; each is a `sections.base.Section` (read through `section(key)`)
    sections: tuple[Any, ...] = ()
    expected_minutes: float | None = None
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        check_grid(self)

    def settings(self, model: str, **extra: Any) -> Settings:
        """The experiment settings of one model of the grid (each knob of `settings.KNOBS` from its suite key; the
        list keys `models` and `seeds` give `model` and the first seed); `extra` sets or overrides others."""
        values = {k.name: getattr(self, k.key)[0] if k.suite_key else getattr(self, k.key) for k in KNOBS}
        return Settings(**{**values, "model": model, **extra})

    def section(self, key: str) -> Any:
        """The suite's section of that key (sections/), or None where the suite has none."""
        return next((s for s in self.sections if s.key == key), None)

    def gate_rule(self, metric: str) -> GateRule:
        return dict(self.gate).get(metric, GateRule())

    # --- recipes -----------------------------------------------------------------------------------------

    def pruner(self, template: str, p: float) -> Recipe:
        return with_values(template, {"p": p}, kind="prune")

    def quantizer(self, template: str, bits: int) -> Recipe:
        return with_values(template, {k: bits for k in self.quantize}, kind="quant")

    def joint(self, pruner: str, quantizer: str, p: float, bits: int, order: str) -> Recipe:
        """The joint recipe in `order`; a quantizer's leading rotation stays first in both orders, and its
        recovery stages (LoRA) stay right after it: P>Q is `P > Q > L`, Q>P is `Q > L > P`."""
        prune, quant = self.pruner(pruner, p), self.quantizer(quantizer, bits)
        if order == "P>Q":
            return Recipe(quant.basis + prune.stages + quant.methods)
        return Recipe(quant.basis + quant.methods + prune.stages)

    def curve(self, quantizer: str) -> dict[int, Recipe]:
        """The quantization curve's recipes by bit width: every curve and grid bit width."""
        return {b: self.quantizer(quantizer, b) for b in sorted(set(self.curve_bits) | set(self.bits), reverse=True)}

    def points(self) -> list["PointSpec"]:
        return [PointSpec(self, m, pr, q, p, b) for m in self.models for pr in self.pruners for q in self.quantizers
                for p in self.ratios for b in self.bits]

    def hypotheses(self) -> list["HypothesisSpec"]:
        return [HypothesisSpec(self, m, pr, q, p) for m in self.models for pr in self.pruners
                for q in self.quantizers for p in self.ratios]

    def pooled_hypotheses(self) -> list["PooledSpec"]:
        """The pooled view over every p, where the grid has more than one p (else it is the per-p test)."""
        if len(self.ratios) < 2:
            return []
        return [PooledSpec(self, m, pr, q) for m in self.models for pr in self.pruners for q in self.quantizers]

    def cases(self) -> list["Case"]:
        """Every distinct measurement the grid needs, per model in the order that reuses compressed prefixes
        (`scheduled`): the dense model first, each recipe after the recipes it starts from."""
        found: dict[tuple[str, str], Case] = {}

        def add(model: str, recipe: Recipe, role: str, label: str) -> None:
            found.setdefault((model, recipe.key), Case(model, recipe, role, label))

        for model in self.models:
            add(model, Recipe(()), "dense", "dense")
            for pruner in self.pruners:
                for p in self.ratios:
                    add(model, self.pruner(pruner, p), "prune", short(self.pruner(pruner, p)))
            for quantizer in self.quantizers:
                for recipe in self.curve(quantizer).values():
                    add(model, recipe, "quant", short(recipe))
            for pt in self.points():
                if pt.model == model:
                    for order in self.orders:
                        recipe = self.joint(pt.pruner, pt.quantizer, pt.p, pt.bits, order)
                        add(model, recipe, "joint", f"{short(self.pruner(pt.pruner, pt.p))}-"
                                                    f"{short(self.quantizer(pt.quantizer, pt.bits))}-{order}")
            for section in self.sections:
                for case in section.cases(self, model):
                    add(model, case.recipe, case.role, case.label)
        return scheduled(list(found.values()))

def scheduled(cases: list["Case"]) -> list["Case"]:
    """The cases per model in the order of the tree of their stages (`prefixes.trie_order`): each recipe right
    after the prefixes it starts from, so those are still in the prefix cache when it runs."""
    models = list(dict.fromkeys(c.model for c in cases))
    ordered = []
    for model in models:
        mine = [c for c in cases if c.model == model]
        ordered += [mine[i] for i in trie_order([c.recipe for c in mine])]
    return ordered


def model_id(model: str) -> str:
    """A model's name in test ids: an embedded name or hub id as it is, a local file or folder by its stem (a .gguf
    file's whole path would make every id unreadable); `check_grid` keeps the ids of a suite's models distinct."""
    path = Path(model).expanduser()
    local = path.suffix == ".gguf" or model.startswith((".", "/", "~")) or path.exists()
    return (path.stem if path.suffix == ".gguf" else path.name) or model if local else model


@dataclass(frozen=True)
class Case:
    """One measurement of the grid: a model and a recipe; `label` is its readable test id."""

    model: str
    recipe: Recipe
    role: str  # dense, prune, quant, joint
    label: str

    @property
    def id(self) -> str:
        return f"{model_id(self.model)}-{self.label}"


@dataclass(frozen=True)
class PointSpec:
    """One point of Fig. 3: a pruner at ratio p and a quantizer at B bits, both orders."""

    suite: Suite
    model: str
    pruner: str
    quantizer: str
    p: float
    bits: int

    def recipe(self, order: str) -> Recipe:
        return self.suite.joint(self.pruner, self.quantizer, self.p, self.bits, order)


@dataclass(frozen=True)
class HypothesisSpec:
    """Hypothesis 1 for one (model, pruner, quantizer, p): A(Q->P) over the grid's bit widths."""

    suite: Suite
    model: str
    pruner: str
    quantizer: str
    p: float

    @property
    def id(self) -> str:
        return f"{model_id(self.model)}-{short(self.suite.pruner(self.pruner, self.p))}-{compact(self.quantizer)}"

    def points(self) -> list[PointSpec]:
        return [PointSpec(self.suite, self.model, self.pruner, self.quantizer, self.p, b) for b in self.suite.bits]


@dataclass(frozen=True)
class PooledSpec:
    """The paper's pooled view (Figs. 3, 4): Hypothesis 1 for one (model, pruner, quantizer) over every (p, B)
    point of the grid, A(Q->P) against x = C*_P - C_Q."""

    suite: Suite
    model: str
    pruner: str
    quantizer: str

    @property
    def id(self) -> str:
        return f"{model_id(self.model)}-{compact(self.pruner)}-{compact(self.quantizer)}-pooled"

    def points(self) -> list[PointSpec]:
        return [PointSpec(self.suite, self.model, self.pruner, self.quantizer, p, b)
                for p in self.suite.ratios for b in self.suite.bits]


def short(recipe: Recipe) -> str:
    """A recipe as a test id: no spaces (`quarot>rtn:w=4,a=4,kv=4`)."""
    return compact(str(recipe))


def compact(text: str) -> str:
    return "".join(text.split())


def with_values(template: str, values: dict[str, Any], kind: str) -> Recipe:
    """Fill the grid's values into the template's stage of `kind` (`quarot > gptq:g=64` -> `... > gptq:g=64,w=4`).

    A quantizer template may end in recovery stages that follow the quantizer in both orders
    (`rtn > lora:steps=40`: LoRA trained right after quantization, paper Fig. 8).
    """
    parts = template.split(">")
    kinds = [method_class(part.partition(":")[0].strip().lower()).kind for part in parts]
    allowed = ("transform", "quant", "tune") if kind == "quant" else ("prune", "transform")
    if kinds.count(kind) != 1 or any(k not in allowed for k in kinds) or (kind == "prune" and kinds[-1] != kind) \
            or (kind == "quant" and "tune" in kinds[:kinds.index("quant")]):
        accepted = "a pruner: wanda, sparsegpt, sleb, magnitude (with options, e.g. sparsegpt:damp=0.02)" \
            if kind == "prune" else ("a quantizer: rtn, gptq, or a rotation then one, e.g. 'quarot > gptq:g=64', "
                                     "optionally followed by recovery, e.g. 'rtn > lora:steps=40'")
        raise PqqpError(f"{'pruner' if kind == 'prune' else 'quantizer'} {template!r} in the suite is not accepted: "
                        f"accepted {accepted}")
    at = kinds.index(kind)
    stage = parts[at]
    given = {item.split("=")[0].strip().lower() for item in stage.partition(":")[2].split(",") if item.strip()}
    clash = sorted(given & set(values))
    if clash:
        raise PqqpError(f"{template!r} sets {clash[0]}= itself; the suite's grid sets it: remove it from the template")
    extra = ",".join(f"{k}={format_value(v)}" for k, v in values.items())
    parts[at] = f"{stage.rstrip()}{',' if ':' in stage else ':'}{extra}"
    return parse_recipe(">".join(parts))


# --- loading and checking -------------------------------------------------------------------------------

TUPLES = {"models": str, "seeds": int, "pruners": str, "quantizers": str, "ratios": float, "bits": int,
          "quantize": str, "orders": str, "curve_bits": int}


def split_list(name: str, value: str) -> list[str]:
    """'a,b' -> [a, b]. Templates may hold commas (`gptq:g=64,sym=false`): separate those with ';'."""
    if name in ("pruners", "quantizers") and (";" in value or ":" in value):
        return value.split(";")
    return value.split(",")


def coerce(name: str, value: Any) -> Any:
    """A YAML or command-line value as the field's type; lists may also be given as 'a,b,c'."""
    if name == "gate":
        return gate_rules(value)
    if name in TUPLES:
        items = split_list(name, value) if isinstance(value, str) else value
        items = items if isinstance(items, (list, tuple)) else [items]
        if any(isinstance(v, (dict, list, tuple, bool)) or v is None for v in items):
            raise PqqpError(f"bad value {name}={value!r} in the suite: accepted a list of {TUPLES[name].__name__}")
        return tuple(scalar(name, v, TUPLES[name].__name__) for v in items if str(v).strip())
    kinds = {f.name: f.type for f in fields(Suite) if f.name not in ("source", "sections")}
    if name not in kinds:
        raise PqqpError(f"unknown suite key '{name}': accepted {', '.join(kinds)}")
    if value is None:
        return None
    kind = str(kinds[name]).split(" ")[0]
    if kind == "bool":
        try:
            return to_bool(value)
        except ValueError:
            raise PqqpError(f"bad value {name}={value!r} in the suite: accepted true or false") from None
    return scalar(name, value, kind) if kind in ("int", "float", "str") else value


def scalar(name: str, value: Any, kind: str) -> Any:
    """One int, float or str of a suite key, strictly: YAML's own type must be that one (an int for a float is
    fine), or a string of it (the command line's); `true`, 32.5 or a list for an int are refused."""
    if isinstance(value, str) and kind != "str":
        try:
            return int(value.strip()) if kind == "int" else float(value.strip())
        except ValueError:
            pass
    elif kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif kind == "str" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value).strip()
    accepted = {"int": "an integer", "float": "a number", "str": "a string"}[kind]
    raise PqqpError(f"bad value {name}={value!r} in the suite: accepted {accepted}")


def gate_rules(value: Any) -> tuple[tuple[str, GateRule], ...]:
    """The suite's `gate:` mapping, metric -> {rel_tol, min_recovery}, e.g. `gate: {ppl: {rel_tol: 0.02}}`."""
    accepted = "accepted a mapping of metric name to {rel_tol: FRACTION, min_recovery: FRACTION}, e.g. {ppl: {rel_tol: 0.02}}"
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise PqqpError(f"bad value gate={value!r} in the suite: {accepted}")
    rules = []
    for metric, rule in sorted(value.items()):
        unknown = sorted(set(rule) - {f.name for f in fields(GateRule)})
        if unknown:
            raise PqqpError(f"unknown gate key '{unknown[0]}' for metric {metric!r}: accepted rel_tol, min_recovery")
        try:
            numbers = {k: None if v is None else float(v) for k, v in rule.items()}
        except (TypeError, ValueError):
            raise PqqpError(f"bad value gate.{metric}={rule!r} in the suite: {accepted}") from None
        rules.append((str(metric), GateRule(**numbers)))
    return tuple(rules)


def to_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else boolean(str(value))


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A suite YAML as a mapping of its keys (`model` read as `models`); refuses a file that is not one."""
    path = Path(path)
    if not path.is_file():
        raise PqqpError(f"suite file {str(path)!r} does not exist: accepted a suite YAML such as suites/default.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PqqpError(f"suite file {str(path)!r} is not UTF-8 text: accepted a suite YAML") from None
    if not text.strip() or "\x00" in text:
        state = "is empty" if not text.strip() else "holds NUL bytes"
        raise PqqpError(f"suite file {str(path)!r} {state}: accepted a YAML mapping of keys (models, pruners, ...)")
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise PqqpError(f"suite file {str(path)!r} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise PqqpError(f"suite file {str(path)!r} must hold a mapping of keys (models, pruners, ...), not {type(raw).__name__}")
    if "model" in raw:
        raw["models"] = raw.pop("model")
    return raw


def suite_from(path: str | Path, values: dict[str, Any], overrides: dict[str, Any]) -> Suite:
    """The suite of a YAML's keys, its sections already parsed (`sections.load_suite`, which reads suites);
    `overrides` (None meaning not given) win over the keys."""
    values = {k: v if k == "sections" else coerce(k, v) for k, v in values.items()}
    values.update({k: coerce(k, v) for k, v in overrides.items() if v is not None})
    return Suite(**{"name": Path(path).stem, **values, "source": str(path)})


def check_grid(suite: Suite) -> None:
    """Refuse a grid that cannot run, before any model is loaded: every error names the bad value."""
    grid = ("pruners", "quantizers", "ratios", "bits")  # may all be empty in a suite of other sections only
    other = suite.sections
    for name in ("models", "seeds", "pruners", "quantizers", "ratios", "bits", "orders", "quantize"):
        if not getattr(suite, name) and not (other and name in grid):
            raise PqqpError(f"suite key '{name}' is empty: give at least one value")
    if suite.metric.startswith("lm-eval:"):  # which metrics exist is the metrics' registry's (sections.load_suite)
        parse_metric(suite.metric)
    check_mode(suite.offload)
    check_schedule(suite.schedule)
    check_bos(suite.bos)
    cache_size(suite.prefix_cache)
    if suite.offload != "none" and suite.metric != "ppl":
        raise PqqpError(f"offload={suite.offload!r} evaluates perplexity only: accepted metric ppl, or offload none")
    if suite.lm_eval_limit is not None and suite.lm_eval_limit < 1:
        raise PqqpError(f"lm_eval_limit={suite.lm_eval_limit} is not accepted: a positive number of documents or null")
    for order in suite.orders:
        if order not in ORDERS:
            raise PqqpError(f"unknown order {order!r}: accepted {', '.join(ORDERS)}")
    for key in suite.quantize:
        if key not in QUANTIZED:
            raise PqqpError(f"quantize={key!r} is not accepted: accepted a list of w, a, kv")
    for b in (*suite.bits, *suite.curve_bits):
        if not 2 <= b <= 16:
            raise PqqpError(f"bit width {b} is not accepted: accepted integers 2..16")
    if suite.max_ppl_ratio <= 1.0:
        raise PqqpError(f"max_ppl_ratio={suite.max_ppl_ratio} is not accepted: a ratio to the dense perplexity > 1")
    if not (isinstance(suite.level, (int, float)) and 0 < suite.level < 0.5):
        raise PqqpError(f"level={suite.level!r} is not accepted: a one-sided test level 0 < level < 0.5, e.g. 0.05")
    if not (isinstance(suite.kernel_noise, (int, float)) and 0 <= suite.kernel_noise < 1):
        raise PqqpError(f"kernel_noise={suite.kernel_noise!r} is not accepted: a relative standard deviation in [0, 1), "
                        f"e.g. 0.007 (0: off)")
    if not (isinstance(suite.noise_sigmas, (int, float)) and 0 <= suite.noise_sigmas < math.inf) or suite.bootstrap < 2:
        raise PqqpError(f"noise_sigmas={suite.noise_sigmas}, bootstrap={suite.bootstrap}: accepted sigmas >= 0 and "
                        f"at least 2 bootstrap resamples")
    ids = {}
    for model in suite.models:
        if ids.setdefault(model_id(model), model) != model:
            raise PqqpError(f"models {ids[model_id(model)]!r} and {model!r} have one test id {model_id(model)!r}: accepted "
                            f"models whose file or folder names differ")
    for model in suite.models:  # the experiment's own checks: seqlen, windows, seeds, holdout, device, folders
        for seed in suite.seeds:
            suite.settings(model, seed=seed)
    for template in suite.pruners:
        for p in suite.ratios:
            suite.pruner(template, p)
    for template in suite.quantizers:
        for b in suite.bits:
            suite.quantizer(template, b)
    keys = [section.key for section in suite.sections]
    if len(set(keys)) != len(keys):
        raise PqqpError(f"the suite holds a section twice ({', '.join(keys)}): accepted one of each")
    for section in suite.sections:
        section.check(suite)
