"""The suite's sections by name: what a suite YAML may hold besides its settings and grid keys.

Each section is one module of this package with one `Section` subclass (sections/base.py: parse, cases, tests,
report, leaderboard tables and plots), registered here by one `Registration` line: its suite key, its module, the
pytest parameters its tests take (suites/test_grid.py) and the `--pqqp-<prefix>-*` options that override its keys.
Nothing here imports the sections' code, so the pytest plugin can declare every option at start-up for free; a
section's module is imported when a suite is read.

Adding a section: its module, its line in `SECTIONS`, its test function in suites/test_grid.py (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..analysis import Analysis
    from ..suite import Suite
    from .base import Section


@dataclass(frozen=True)
class Registration:
    """One section: `key` in the suite YAML (empty for the grid, whose keys are the suite's own), the module with
    its `SECTION` class, the pytest parameters of its tests, and its command-line options (name -> help; the
    option is `--pqqp-<prefix>-<name>` under pytest, `--<prefix>-<name>` for `pqqp run --suite`)."""

    key: str
    module: str
    fixtures: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)
    prefix: str = ""
    about: str = ""  # what the section adds, for the README's table

    def section(self) -> type["Section"]:
        return importlib.import_module(self.module, __name__).SECTION

    def option_names(self) -> dict[str, str]:
        """Option dest -> help (`order_sets`, `throughput_backend`; the grid's keys are bare: `pruners`)."""
        return {(f"{self.prefix}_{name}" if self.prefix else name): text for name, text in self.options.items()}


SECTIONS: tuple[Registration, ...] = (
    Registration("", ".grid", ("pqqp_hypothesis", "pqqp_pooled"), {
        "metric": "ppl (token-level perplexity) or lm-eval:<task>/<metric>, e.g. lm-eval:pqqp_cloze/acc",
        "lm_eval_limit": "lm-eval metrics: score only the first N documents of the task",
        "pruners": "pruner templates, e.g. wanda,sparsegpt (';' between templates with parameters)",
        "quantizers": "quantizer templates, e.g. 'rtn;quarot > gptq:g=64'",
        "ratios": "pruning ratios p, e.g. 0.1,0.2,0.3",
        "bits": "bit widths B of the joint grid (W, A, KV at B), e.g. 4,6,8",
        "quantize": "what the quantizer quantizes at B bits: a subset of w,a,kv (paper App. C: all three)",
        "orders": "orders to run: P>Q, Q>P",
        "curve_bits": "bit widths of the quantization curve the CER interpolates on (the grid's bit widths are added)",
        "max_ppl_ratio": "practical regime: points with a ppl above this multiple of dense are shown, not judged (App. D.6)",
        "noise_sigmas": "the least drop, in standard errors of the A difference, that breaks monotonicity (raised to the "
                        "Bonferroni value where that is larger)",
        "kernel_noise": "relative std of a measured value between machines' CPU kernels (benchmarks/kernel_spread.py), "
                        "added to every A in the verdicts and to both sides in the gate, e.g. 0.007 (0: off; the default "
                        "suite's 0.007 is measured)",
        "bootstrap": "paired-bootstrap resamples for the noise of A",
        "level": "one-sided level of the hypothesis tests' verdicts (supported / violated / inconclusive), e.g. 0.05",
    }),
    Registration("interference", ".interference", ("pqqp_interference",),
                 about="`true`: also run the Table 1 interference tests (A by bit width, same blocks removed)"),
    Registration("pipelines", ".pipelines", ("pqqp_pipeline",),
                 about="families of general pipelines, A(first → second) against an intensity gap (YAML only; see "
                       "[pipelines](#beyond-two-methods-pipelines-and-order-search))"),
    Registration("order_search", ".order_search", ("pqqp_order", "pqqp_order_rule"), {
        "sets": "order search: method sets, '|' between sets, ';' or ', ' between methods, e.g. "
                "'wanda:p=0.3; rtn:w=6,a=6,kv=6 | magnitude:p=0.2; rtn:w=8,a=8,kv=8'",
        "reference": "order search: the quantizer template whose curve gives the CERs (rtn)",
        "predictor": "order search: the predictor that recommends each order: intensity (default), probe, pairwise "
                     "or probe-intensity (predictors.py)",
        "probe_blocks": "order search: decoder blocks the probe predictors sample (default 2)",
    }, prefix="order", about="every order of some method sets against a predictor's recommendation"),
    Registration("throughput", ".throughput", ("pqqp_throughput",), {
        "recipes": "throughput: recipes whose tokens/s is measured, e.g. 'sleb:p=0.2;rtn:w=8,a=8' (';'-separated)",
        "backend": "throughput: vllm, transformers, or auto (vLLM where found)",
        "prompt_len": "throughput: tokens per prompt",
        "output_len": "throughput: tokens generated per prompt (ignore_eos)",
        "num_prompts": "throughput: prompts in the offline batch",
        "dtype": "throughput: bfloat16, float16, float32",
        "enforce_eager": "throughput: true runs vLLM without graph compilation (faster start, slower steps)",
    }, prefix="throughput", about="generation tokens/s of some recipes ([throughput](#throughput-vllm-kernels-next-to-quality))"),
)
"""Every section, in the order the suite's cases, reports and leaderboard pages show them."""



def section_keys() -> tuple[str, ...]:
    return tuple(r.key for r in SECTIONS if r.key)


def fixtures() -> tuple[str, ...]:
    """Every section's pytest parameters."""
    return tuple(name for r in SECTIONS for name in r.fixtures)


def options() -> dict[str, str]:
    """The grid's and sections' command-line options (dest -> help), beside the settings of `settings.KNOBS`."""
    return {dest: text for r in SECTIONS for dest, text in r.option_names().items()}


def markdown_table() -> str:
    """The README's table of the grid's and sections' suite keys with their options (settings.markdown_table has the
    settings')."""
    rows = ["| suite key | pytest option / `pqqp run --suite` flag | default | meaning |", "|---|---|---|---|"]
    for r in SECTIONS:
        if r.about:
            rows.append(f"| `{r.key}` | | none | {r.about} |")
        defaults = r.section().defaults()
        for name, text in r.options.items():
            dest = f"{r.prefix}_{name}" if r.prefix else name
            flag = dest.replace("_", "-")
            rows.append(f"| `{f'{r.key}.{name}' if r.key else name}` | `--pqqp-{flag}` / `--{flag}` | "
                        f"{default_text(defaults.get(name))} | {text.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def default_text(value: Any) -> str:
    if value is None or value == ():
        return "none"
    return "`" + (",".join(map(str, value)) if isinstance(value, tuple) else str(value)) + "`"


def registration(key: str) -> Registration:
    return next(r for r in SECTIONS if r.key == key)


def grid_section() -> "Section":
    """The grid's section (tests, reports and pages of the pruner x quantizer grid): every suite has it."""
    return registration("").section()()


def active(suite: "Suite") -> list["Section"]:
    """The suite's sections in `SECTIONS` order: the grid first, then those its YAML holds."""
    return [grid_section(), *suite.sections]


def parse_sections(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The suite YAML's section keys parsed by their sections, with the `--pqqp-<prefix>-*` overrides applied
    (an override creates the section where the YAML has none); the other keys come back as they are."""
    from dataclasses import fields

    from ..errors import PqqpError
    from ..suite import Suite

    plain = [f.name for f in fields(Suite) if f.name not in ("source", "sections")]
    keys = section_keys()
    unknown = sorted(set(raw) - set(plain) - set(keys))
    if unknown:
        raise PqqpError(f"unknown suite key '{unknown[0]}': accepted {', '.join(plain)}, or a section: {', '.join(keys)}")
    rest = {k: v for k, v in raw.items() if k not in keys}
    found = []
    for r in SECTIONS:
        if not r.key:
            continue
        given = {name: overrides[f"{r.prefix}_{name}"] for name in r.options
                 if overrides.get(f"{r.prefix}_{name}") is not None}
        value = raw.get(r.key)
        if given and (value is None or isinstance(value, dict)):  # else `parse` refuses the YAML's value
            value = {**(value or {}), **given}
        parsed = r.section().parse(value)
        if parsed is not None:
            found.append(parsed)
    return {**rest, "sections": tuple(found)}


def load_suite(path: str | Path, **overrides: Any) -> "Suite":
    """Read a suite YAML with its sections; `overrides` (e.g. command-line options, None meaning not given) win over
    it: settings and grid keys by name, a section's keys as `<prefix>_<key>`."""
    from ..suite import read_yaml, suite_from

    section_options = {dest for r in SECTIONS if r.key for dest in r.option_names()}
    values = parse_sections(read_yaml(path), overrides)
    suite = suite_from(path, values, {k: v for k, v in overrides.items() if k not in section_options})
    check_metric(suite.metric)
    return suite


def check_metric(name: str) -> None:
    """The suite's `metric` must be one a registered metric measures (metrics.py), and a quality: tokens/s is the
    throughput section's."""
    from ..errors import PqqpError
    from ..metrics import THROUGHPUT, metric_for

    if name == THROUGHPUT:
        raise PqqpError(f"metric {name!r} is not accepted as the suite's metric: tokens/s is measured by the "
                        f"throughput section; accepted ppl, lm-eval:<task>/<metric> or another registered quality metric")
    metric_for(name)


def full_report(analysis: "Analysis") -> str:
    """The cases table, then every section's report (verdicts, interference, pipelines, order search, throughput)."""
    from ..measure import Missing
    from ..report import case_table

    parts = [case_table(analysis.bench)]
    for section in active(analysis.suite):
        try:
            parts.append(section.report(analysis))
        except Missing:  # a section whose report needs a measurement not stored yet shows nothing
            continue
    return "\n\n".join(part for part in parts if part)
