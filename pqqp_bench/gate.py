"""The CI regression gate: a baseline of stored metrics, and the comparison of the current store with it.

A baseline (JSON, written by `pqqp gate --update-baseline`) records what its numbers were measured on (the
models and their weights' fingerprints, the corpus with its content hash, the evaluation split and window start,
the harness with the fingerprint of its computing code, and the environment: library versions, CPU kernel
capability, GPU) and, per case (model, recipe, metric), the value of every calibration seed with their mean and
spread. A baseline measured on other weights, another corpus or other evaluation windows is refused: its numbers
are not comparable. Other code or another environment is compared, and the report names each difference with
both values (the code's numbers may differ by design; the environment's by the last bits the quantizers amplify).

A case regresses when, per the suite's `gate:` rule for its metric (`GateRule`):

* `rel_tol`: its mean over the seeds both sides measured is worse than the baseline's by more than
  rel_tol·|baseline| (rel_tol in the metric's own units where the baseline is 0) plus a noise allowance of
  `noise_sigmas` standard errors of the difference of the two means: the seed spread where several seeds were
  measured, and the suite's `kernel_noise` (relative) on each side, for the last-bit differences between
  machines' CPU kernels that the quantizers turn into other roundings (benchmarks/kernel_spread.py);
* `min_recovery`: it kept less than that fraction of the dense model's quality (ppl: dense/ppl; accuracy:
  acc/dense) while the baseline kept at least that much.

Cases collapsed in the baseline (a perplexity above the suite's `max_ppl_ratio` x dense, or the same loss of
quality in any metric; the hypothesis tests do not judge them either) are listed, not gated: their values are
dominated by that rounding chaos (3% between two kernel sets of one machine at W4A4KV4). Cases only in the
baseline are reported as missing; cases only in the store are new; neither fails the gate,
except that a gate that compared no case fails (it would have checked nothing). A baseline with no cases, a
case listed twice or a NaN value is refused in one line, as are non-finite or negative tolerances and sigmas.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tabulate import tabulate

from .errors import PqqpError
from .hypothesis import higher_is_better, is_collapsed_metric, recovery
from .measure import Bench
from .paths import write_text
from .spec import Recipe
from .suite import GateRule, Suite

FORMAT = "pqqp-baseline/2"
TOP_KEYS = ("format", "suite", "harness_version", "environment", "models", "corpus", "split", "cases")
CASE_KEYS = ("model", "recipe", "metric", "seeds", "mean", "std")
WRITE_HINT = "pqqp gate --update-baseline --baseline FILE"

CaseId = tuple[str, str, str]  # (model, recipe, metric)


# ------------------------------------------------------------------------------------------------ snapshot


@dataclass(frozen=True)
class Values:
    """One case's metric per calibration seed (-1 where the recipe cannot depend on the seed)."""

    seeds: dict[int, float]

    def mean(self, seeds: set[int] | None = None) -> float:
        return statistics.fmean(v for s, v in self.seeds.items() if seeds is None or s in seeds)

    def variance_of_mean(self, seeds: set[int]) -> float:
        """The squared standard error of the mean over `seeds` (0 for a single seed: no seed noise measured)."""
        values = [v for s, v in self.seeds.items() if s in seeds]
        return statistics.variance(values) / len(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Snapshot:
    """What a baseline holds, and what the current store is turned into to compare with it."""

    suite: str
    harness_version: str  # release + code fingerprint (environment.harness_identity)
    environment: dict[str, str]  # flattened `numbers_environment` of the rows: versions.torch -> 2.13.0, ...
    models: dict[str, str]  # model -> weights fingerprint
    corpus: str
    split: str
    cases: dict[CaseId, Values]

    def as_json(self) -> str:
        cases = [{"model": m, "recipe": r, "metric": k, "seeds": {str(s): v for s, v in sorted(vals.seeds.items())},
                  "mean": vals.mean(), "std": statistics.stdev(vals.seeds.values()) if len(vals.seeds) > 1 else None}
                 for (m, r, k), vals in sorted(self.cases.items())]
        data = {"format": FORMAT, "suite": self.suite, "harness_version": self.harness_version,
                "environment": dict(sorted(self.environment.items())), "models": dict(sorted(self.models.items())), "corpus": self.corpus, "split": self.split, "cases": cases}
        return json.dumps(data, indent=1, sort_keys=False) + "\n"


def snapshot(bench: Bench) -> Snapshot:
    """The suite's stored measurements (every case, every seed that can change it), read without computing."""
    suite = bench.suite
    cases: dict[CaseId, Values] = {}
    environments: list[dict] = []
    for case in suite.cases():
        for m in bench.stored_case(case):
            cases.setdefault((case.model, str(case.recipe), m.key.metric), Values({})).seeds[m.key.seed] = m.value
            environments.append(m.details.get("environment") or {})
    split = bench.key(suite.models[0], Recipe(()), suite.seeds[0]).split
    return Snapshot(suite.name, bench.harness, merged(environments), {m: bench.fingerprint(m) for m in suite.models},
                    bench.corpus_id, split, cases)


def flat(environment: dict, prefix: str = "") -> dict[str, str]:
    """{"versions": {"torch": "2.13"}, "gpu": None} -> {"versions.torch": "2.13", "gpu": "none"}."""
    out: dict[str, str] = {}
    for key, value in environment.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = "none" if value is None else str(value)
    return out


def merged(environments: list[dict]) -> dict[str, str]:
    """The rows' environments as one flat mapping; an item the rows disagree on lists every value, joined by ' | '."""
    values: dict[str, set[str]] = {}
    for env in environments:
        for key, value in flat(env).items():
            values.setdefault(key, set()).add(value)
    return {key: " | ".join(sorted(found)) for key, found in sorted(values.items())}


# ------------------------------------------------------------------------------------------ baseline file


def refuse(path: Path, problem: str) -> PqqpError:
    return PqqpError(f"baseline {str(path)!r} {problem}; accepted a baseline JSON written by `{WRITE_HINT}`")


def load_baseline(path: str | Path) -> Snapshot:
    """Read and check a baseline file; every problem is one line naming the bad value."""
    path = Path(path)
    if not path.is_file():
        raise refuse(path, "does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise refuse(path, f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise refuse(path, f"holds a {type(data).__name__}, not an object")
    if data.get("format") != FORMAT:
        raise refuse(path, f"has format {data.get('format')!r}, not {FORMAT!r}")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise refuse(path, f"has unknown key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    missing = [k for k in TOP_KEYS if k not in data]
    if missing:
        raise refuse(path, f"lacks key {missing[0]!r}")
    if not isinstance(data["models"], dict) or not isinstance(data["cases"], list):
        raise refuse(path, "has 'models' that is not an object or 'cases' that is not a list")
    cases: dict[CaseId, Values] = {}
    for i, c in enumerate(data["cases"]):
        ident, values = parse_case(path, i, c)
        if ident in cases:
            raise refuse(path, f"case {i} repeats {ident[1]!r} ({ident[2]}, {ident[0]}): one entry per case")
        cases[ident] = values
    if not cases:
        raise refuse(path, "has no cases (a gate against it would compare nothing)")
    if not isinstance(data["environment"], dict):
        raise refuse(path, "has an 'environment' that is not an object")
    return Snapshot(str(data["suite"]), str(data["harness_version"]), {str(k): str(v) for k, v in data["environment"].items()},
                    {str(k): str(v) for k, v in data["models"].items()}, str(data["corpus"]), str(data["split"]), cases)


def parse_case(path: Path, index: int, case: Any) -> tuple[CaseId, Values]:
    if not isinstance(case, dict):
        raise refuse(path, f"case {index} is a {type(case).__name__}, not an object")
    unknown = sorted(set(case) - set(CASE_KEYS))
    if unknown:
        raise refuse(path, f"case {index} has unknown key {unknown[0]!r} (known: {', '.join(CASE_KEYS)})")
    seeds = case.get("seeds")
    try:
        values = {int(s): float(v) for s, v in seeds.items()}
        if not all(math.isfinite(v) or math.isinf(v) for v in values.values()):
            raise ValueError("nan")
        ident = (str(case["model"]), str(case["recipe"]), str(case["metric"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        raise refuse(path, f"case {index} needs model, recipe, metric and seeds {{seed: value}}, got {case!r:.120}") from None
    if not values:
        raise refuse(path, f"case {index} ({ident[1]}) has no seed values")
    return ident, Values(values)


def write_baseline(snap: Snapshot, path: str | Path) -> int:
    path = Path(path)
    if not snap.cases:
        raise PqqpError(f"no stored measurements of suite {snap.suite!r} to write to baseline {str(path)!r}: "
                        f"accepted a store that holds the suite's results (run `pytest suites/` first)")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, snap.as_json())
    return len(snap.cases)


def check_comparable(base: Snapshot, current: Snapshot, path: Path) -> list[str]:
    """Refuse a baseline measured on other weights, another corpus or other evaluation windows; return a note for
    each other difference (code, library versions, CPU kernels, GPU), naming both values."""
    for model, fingerprint in sorted(base.models.items()):
        if model not in current.models:
            raise PqqpError(f"baseline {str(path)!r} is for model {model!r}, the current suite measures "
                            f"{', '.join(map(repr, current.models))}: not comparable")
        if current.models[model] != fingerprint:
            raise PqqpError(f"baseline {str(path)!r} is for model {model!r} with weights {fingerprint!r}, the current "
                            f"weights are {current.models[model]!r}: not comparable")
    for name in ("corpus", "split"):
        if getattr(base, name) != getattr(current, name):
            raise PqqpError(f"baseline {str(path)!r} is for {name} {getattr(base, name)!r}, the current suite uses "
                            f"{getattr(current, name)!r}: not comparable")
    notes = []
    if base.harness_version != current.harness_version:
        notes.append(f"harness: baseline {base.harness_version}, current {current.harness_version} (other computing "
                     f"code: its numbers may differ by design)")
    for item in sorted(set(base.environment) | set(current.environment)):
        was, now = base.environment.get(item, "unrecorded"), current.environment.get(item, "unrecorded")
        if was != now:
            notes.append(f"{item}: baseline {was}, current {now}")
    return notes


# ---------------------------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class Finding:
    """One compared case: the two means over the seeds both measured, and whether it regressed and why."""

    case: CaseId
    seeds: tuple[int, ...]
    baseline: float
    current: float
    worse: float  # relative change in the bad direction: +0.05 is 5% worse
    allowed: float  # relative change the rule allows, noise included (nan where rel_tol is off)
    reason: str  # empty when the case passes


@dataclass(frozen=True)
class Outcome:
    findings: tuple[Finding, ...]
    missing: tuple[CaseId, ...]
    new: tuple[CaseId, ...]
    collapsed: tuple[CaseId, ...] = ()  # collapsed in the baseline: listed, not gated

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.reason]

    @property
    def failed(self) -> bool:
        """A regression, or a baseline none of whose cases could be compared (a gate that checked nothing)."""
        return bool(self.regressions) or not self.findings


def dense_means(snap: Snapshot) -> dict[tuple[str, str], float]:
    return {(m, k): vals.mean() for (m, r, k), vals in snap.cases.items() if r == str(Recipe(()))}


def judge(case: CaseId, base: Values, cur: Values, rule: GateRule, sigmas: float,
          dense: tuple[float | None, float | None], kernel_noise: float = 0.0) -> Finding | None:
    """One case under `rule`; `dense` holds the dense model's (baseline, current) value for min_recovery.
    None where the two sides share no seed (then the case counts as missing)."""
    seeds = set(base.seeds) & set(cur.seeds)
    if not seeds:
        return None
    b, c = base.mean(seeds), cur.mean(seeds)
    sign = 1.0 if higher_is_better(case[2]) else -1.0
    scale = abs(b) if b else 1.0  # a zero baseline (an accuracy of 0) is compared in the metric's own units
    worse = sign * (b - c) / scale
    kernels = (kernel_noise ** 2) * (b * b + c * c) / len(seeds)  # each side's mean, one kernel draw per seed
    noise = sigmas * math.sqrt(base.variance_of_mean(seeds) + cur.variance_of_mean(seeds) + kernels) / scale
    allowed = math.nan if rule.rel_tol is None else rule.rel_tol + noise
    reasons = []
    if rule.rel_tol is not None and (worse > allowed or math.isnan(c) != math.isnan(b)):
        reasons.append(f"worse by {100 * worse:.2f}% > {100 * allowed:.2f}% allowed")
    if rule.min_recovery is not None and None not in dense:
        kept, was = recovery(case[2], c, dense[1]), recovery(case[2], b, dense[0])
        if kept < rule.min_recovery <= was:
            reasons.append(f"keeps {100 * kept:.1f}% of dense < {100 * rule.min_recovery:.1f}% (baseline {100 * was:.1f}%)")
    return Finding(case, tuple(sorted(seeds)), b, c, worse, allowed, "; ".join(reasons))


def compare(base: Snapshot, current: Snapshot, suite: Suite) -> Outcome:
    """Judge every case both snapshots hold under the suite's gate rules and noise_sigmas."""
    dense_b, dense_c = dense_means(base), dense_means(current)
    findings, missing, collapsed = [], [], []
    for case, values in sorted(base.cases.items()):
        dense = dense_b.get((case[0], case[2]))
        if dense is not None and case[1] != str(Recipe(())) and is_collapsed_metric(case[2], [values.mean()], dense,
                                                                                     suite.max_ppl_ratio):
            collapsed.append(case)
            continue
        found = current.cases.get(case)
        finding = None if found is None else judge(case, values, found, suite.gate_rule(case[2]), suite.noise_sigmas,
                                                   (dense, dense_c.get((case[0], case[2]))), suite.kernel_noise)
        if finding is None:
            missing.append(case)
        else:
            findings.append(finding)
    return Outcome(tuple(findings), tuple(missing), tuple(sorted(set(current.cases) - set(base.cases))),
                   tuple(collapsed))


def describe_rules(suite: Suite, metrics: set[str]) -> str:
    rules = []
    for metric in sorted(metrics):
        r = suite.gate_rule(metric)
        tol = "off" if r.rel_tol is None else f"{100 * r.rel_tol:g}%"
        rec = "off" if r.min_recovery is None else f"{100 * r.min_recovery:g}% of dense"
        rules.append(f"{metric}: rel_tol {tol}, min_recovery {rec}")
    kernels = f", kernel noise {100 * suite.kernel_noise:g}%" if suite.kernel_noise else ""
    return "; ".join(rules) + f"; noise allowance {suite.noise_sigmas:g} sigma of the seed spread{kernels}"


def render(outcome: Outcome, suite: Suite, base_path: Path, notes: list[str] = ()) -> str:
    """The gate's report: what differs from the baseline's computation, the regressed cases with how much and why,
    then a one-line verdict."""
    lines = [f"differs from the baseline: {note}" for note in notes]
    regressions = outcome.regressions
    if regressions:
        rows = [(m, r, k, ",".join("-" if s < 0 else str(s) for s in f.seeds), f"{f.baseline:.5g}", f"{f.current:.5g}",
                 f"{100 * f.worse:+.2f}%", f.reason) for f in regressions for m, r, k in [f.case]]
        lines.append(tabulate(rows, headers=["model", "recipe", "metric", "seeds", "baseline", "current", "change",
                                             "regression"], disable_numparse=True))
    if outcome.collapsed:
        lines.append(f"not gated, collapsed in the baseline (beyond {suite.max_ppl_ratio:g} x dense): "
                     + "; ".join(f"{r} ({k})" for _, r, k in outcome.collapsed))
    if outcome.missing:
        lines.append("missing from the current store (not compared): "
                     + "; ".join(f"{r} ({k})" for _, r, k in outcome.missing))
    if outcome.failed and not regressions:
        lines.append("no case was compared, so the gate checked nothing: no case of the baseline is in the current store: measurements are keyed by the harness "
                     "version and the suite's settings; run the suite, or rewrite the baseline with --update-baseline")
    metrics = {f.case[2] for f in outcome.findings} or {"ppl"}
    verdict = "FAILED" if outcome.failed else "passed"
    lines.append(f"pqqp gate {verdict}: {len(regressions)} of {len(outcome.findings)} compared cases regressed "
                 f"against {base_path} ({describe_rules(suite, metrics)}); {len(outcome.missing)} missing, "
                 f"{len(outcome.new)} new, {len(outcome.collapsed)} collapsed (not gated)")
    return "\n".join(lines)


def with_overrides(suite: Suite, rel_tol: float | None = None, min_recovery: float | None = None) -> Suite:
    """The suite with command-line gate settings applied to every metric's rule (None: keep the suite's)."""
    given = {k: v for k, v in (("rel_tol", rel_tol), ("min_recovery", min_recovery)) if v is not None}
    if not given:
        return suite
    metrics = {m for m, _ in suite.gate} | {"ppl"}
    return replace(suite, gate=tuple((m, replace(suite.gate_rule(m), **given)) for m in sorted(metrics)))


def run_gate(bench: Bench, baseline: str | Path, *, update: bool = False) -> tuple[int, str]:
    """Compare (or, with `update`, rewrite) a baseline: returns the exit code (0 pass, 1 regressed) and the report."""
    path = Path(baseline)
    current = snapshot(bench)
    if update:
        return 0, f"pqqp gate: baseline {path} written: {write_baseline(current, path)} cases"
    base = load_baseline(path)
    notes = check_comparable(base, current, path)
    outcome = compare(base, current, bench.suite)
    return (1 if outcome.failed else 0), render(outcome, bench.suite, path, notes)
