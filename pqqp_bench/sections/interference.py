"""The `interference` section (`interference: true`): the paper's Table 1 and Finding 4.

Per (model, pruner, quantizer, p) of the grid: A(Q->P) at each bit width, and whether both orders removed the
same blocks. A structured pruner (SLEB) gives exactly A = 0 wherever both orders remove the same blocks; an
unstructured one interferes, |A| beyond noise at some width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from ..analysis import Analysis
from ..errors import PqqpError
from ..hypothesis import INCONCLUSIVE, SUPPORTED, VIOLATED, break_sigmas, interference_table, structured_zero_interference
from ..measure import Missing
from ..report import MISSING, Table, lookup
from ..spec import Recipe
from ..suite import HypothesisSpec, Suite, compact, to_bool
from .base import Board, Section


@dataclass(frozen=True)
class InterferenceSpec(HypothesisSpec):
    """Table 1 for one pruner: A(Q->P) at a fixed p across bit widths, and whether the structure changed."""


@dataclass(frozen=True)
class Interference(Section):
    """Table 1 for every (model, pruner, quantizer, p) of the grid."""

    key = "interference"

    @classmethod
    def parse(cls, value: Any) -> "Interference | None":
        """`interference: true` (false or null: none)."""
        if value is None or isinstance(value, Interference):
            return value
        try:
            return cls() if to_bool(value) else None
        except ValueError:
            raise PqqpError(f"bad value interference={value!r} in the suite: accepted true or false") from None

    def specs(self, suite: Suite) -> list[InterferenceSpec]:
        return [InterferenceSpec(h.suite, h.model, h.pruner, h.quantizer, h.p) for h in suite.hypotheses()]

    def tests(self, suite: Suite) -> dict[str, list]:
        return {"pqqp_interference": self.specs(suite)}

    def report(self, analysis: Analysis) -> str:
        """Table 1 per (model, quantizer, p): one A(Q->P) column per pruner, one row per C_Q; then each verdict."""
        groups: dict[tuple, list] = {}
        verdicts = []
        for spec in self.specs(analysis.suite):
            try:
                v = interference_verdict(analysis, spec)
            except Missing:
                continue
            groups.setdefault((spec.model, spec.quantizer, spec.p), []).extend(row[:5] for row in v.rows)
            verdicts.append(f"{spec.id}: {v.status.upper()}: {v.reason}")
        parts = [f"Interference (Table 1): A(Q->P) by C_Q, {model}, {quantizer}, p={p:g}\n"
                 + tabulate(interference_table(cells), headers="keys") for (model, quantizer, p), cells in groups.items()]
        return "\n\n".join(parts + (["\n".join(verdicts)] if verdicts else []))

    def collect(self, analysis: Analysis, model: str) -> tuple[tuple[InterferenceSpec, "InterferenceVerdict | None"], ...]:
        return tuple((spec, lookup(interference_verdict, analysis, spec)) for spec in self.specs(analysis.suite)
                     if spec.model == model)

    def tables(self, board: Board, suite: Suite) -> list[Table]:
        """Table 1 (Finding 4): A(Q→P) by bit width for each pruner, whether both orders removed the same blocks,
        and each pruner's verdict."""
        collected = board.part(self.key)
        if not collected:
            return []
        rows = []
        for spec, v in collected:
            if v is None:
                rows.append((compact(spec.pruner), f"{spec.p:g}", MISSING, "", "", "", ""))
                continue
            for c_q, bits, _, a, same, se in v.rows:
                rows.append((compact(spec.pruner), f"{spec.p:g}", f"{c_q:.2f} ({bits})", f"{a:+.4g} ± {se:.2g}",
                             "-" if same is None else ("yes" if same else "no"), v.status, v.reason))
        return [Table("Interference (Table 1)", ("pruner", "p", "C_Q (B)", "A(Q→P) ± se", "same blocks removed",
                                                 "verdict", "reason"), tuple(rows),
                      "A structured pruner (SLEB) is supported where A = 0 exactly at every width at which both orders "
                      "removed the same blocks; an unstructured one where some width interferes beyond noise "
                      "(Bonferroni over the widths).")]


def removed_blocks(analysis: Analysis, model: str, recipe: Recipe, seed: int) -> list | None:
    """The blocks a structured pruner removed in this measurement (None where it removes none)."""
    structure = analysis.bench.measure(model, recipe, seed).details.get("structure") or []
    removed = [s.get("removed_blocks") for s in structure if "removed_blocks" in s]
    return removed[0] if removed else None


def interference_rows(analysis: Analysis, spec: InterferenceSpec) -> list[tuple]:
    """(C_Q, bits, pruner, A, same structure, stderr, units) for each bit width: Table 1's cells for one pruner,
    with the number of evaluation units A's noise was resampled over (None where a value is not finite)."""
    rows = []
    for pt_spec in spec.points():
        point, details = analysis.point(pt_spec)
        qp = removed_blocks(analysis, spec.model, pt_spec.recipe("Q>P"), analysis.suite.seeds[0])
        pq = removed_blocks(analysis, spec.model, pt_spec.recipe("P>Q"), analysis.suite.seeds[0])
        same = None if qp is None and pq is None else qp == pq
        units = details["paired"].units if details["paired"] is not None else None
        rows.append((point.c_q, point.bits, spec.pruner, point.advantage, same, point.stderr, units))
    return rows


@dataclass(frozen=True)
class InterferenceVerdict:
    """Finding 4 for one pruner (Table 1): its rows and one of the three verdicts, with the reason."""

    spec: InterferenceSpec
    rows: tuple[tuple, ...]  # (C_Q, bits, pruner, A, same structure, stderr)
    status: str
    reason: str

    def evidence(self) -> str:
        table = "\n".join(f"C_Q {c_q:.2f} (B={bits}): A(Q->P) = {a:+.6g} ± {se:.2g}, same blocks removed: {same}"
                          for c_q, bits, _, a, same, se in self.rows)
        return f"{table}\nverdict: {self.status.upper()}: {self.reason}"


def interference_verdict(analysis: Analysis, spec: InterferenceSpec) -> InterferenceVerdict:
    """A structured pruner: supported where A = 0 exactly at every width at which both orders removed the same
    blocks, violated where such a width has A != 0, inconclusive where none has. An unstructured pruner: supported
    where some width interferes, |A| beyond max(noise_sigmas, the Bonferroni t over the widths) stderr, else
    inconclusive (the absence of interference is never claimed)."""
    found = interference_rows(analysis, spec)
    rows = tuple(row[:6] for row in found)
    if any(same is not None for *_, same, _se in rows):
        unchanged = [r for r in rows if r[4] is True]
        nonzero = structured_zero_interference(row[:5] for row in rows)
        if nonzero:
            widths = ", ".join(f"B={r[1]} (A = {r[3]:+.4g})" for r in nonzero)
            return InterferenceVerdict(spec, rows, VIOLATED, f"A != 0 although both orders removed the same blocks: {widths}")
        if not unchanged:
            return InterferenceVerdict(spec, rows, INCONCLUSIVE, "the two orders removed different blocks at every width")
        return InterferenceVerdict(spec, rows, SUPPORTED, f"A = 0 exactly at all {len(unchanged)} widths where both "
                                                          f"orders removed the same blocks")
    s = analysis.suite
    units = max((row[6] for row in found if row[6] is not None), default=2)
    sigmas = break_sigmas(s.noise_sigmas, len(rows), units, s.level)
    beyond = [r for r in rows if abs(r[3]) > sigmas * r[5]]
    if beyond:
        widths = ", ".join(f"B={r[1]} (A = {r[3]:+.4g} ± {r[5]:.2g})" for r in beyond)
        return InterferenceVerdict(spec, rows, SUPPORTED, f"interference beyond {sigmas:.3g} stderr at {widths}")
    return InterferenceVerdict(spec, rows, INCONCLUSIVE, f"no width shows |A| beyond {sigmas:.3g} stderr (Bonferroni "
                                                         f"over {len(rows)} widths)")


SECTION = Interference
