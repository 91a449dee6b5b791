"""`Section`: one part of a suite, behind one interface from the YAML to the leaderboard.

A section is read from its suite key (`parse`), adds the measurements it needs to the suite's cases (`cases`),
gives the pytest parameters of its tests (`tests`), measures what is not a case (`run`: throughput), and turns
stored measurements into a terminal report (`report`) and leaderboard tables and plots (`collect`, `tables`,
`plots`). Every method has a default that does nothing, so a section writes only what it has.

A section instance is what the suite holds for it (its parsed settings), so it is a frozen dataclass; the grid's
section holds nothing (the suite's top-level keys are its settings).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple

if TYPE_CHECKING:
    from ..analysis import Analysis
    from ..measure import Bench
    from ..report import Table
    from ..store import Measurement
    from ..suite import Case, Suite


class Plot(NamedTuple):
    """A leaderboard plot of a section: `draw(board, suite, path)` writes the PNG of one model."""

    kind: str  # the file name's start: `<kind>-<model>.png`
    draw: Callable[["Board", "Suite", Path], None]
    alt: str
    pixels: tuple[int, int]


@dataclass(frozen=True)
class Board:
    """What a leaderboard page shows for one model: the dense measurements, and what each section collected."""

    model: str
    dense: tuple["Measurement", ...]
    parts: tuple[tuple["Section", Any], ...]

    def part(self, key: str) -> Any:
        """What the section of `key` collected for this model (None where the suite has no such section)."""
        return next((found for section, found in self.parts if section.key == key), None)

    def measurements(self) -> list["Measurement"]:
        """Every stored measurement the page shows: the dense model's, then each section's."""
        return [*self.dense, *(m for section, found in self.parts for m in section.measurements(found))]


class Section:
    """The interface of a suite section; subclasses override what they have (see the module docstring)."""

    key: ClassVar[str] = ""  # the suite key (sections/__init__.py registers it)
    mark: ClassVar[str] = "pqqp_hypothesis"  # the pytest mark of its tests' parameters

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each key of the section with its default (the README's table): its dataclass fields'."""
        return {f.name: f.default for f in fields(cls)} if is_dataclass(cls) else {}

    @classmethod
    def parse(cls, value: Any) -> "Section | None":
        """The YAML value of the section's key (None where absent; a mapping with the command line's overrides
        merged in) as the section, or None where the suite has none. Refuses a bad value in one line."""
        return None

    def check(self, suite: "Suite") -> None:
        """Refuse what cannot run with the rest of the suite, before any model loads."""

    def cases(self, suite: "Suite", model: str) -> list["Case"]:
        """The measurements of the suite's metric this section needs on `model`, besides the grid's."""
        return []

    def tests(self, suite: "Suite") -> dict[str, list]:
        """Pytest parameter name -> its values (each with an `id`, or a plain string): what the section's tests
        in suites/test_grid.py are parametrized over."""
        return {}

    def run(self, bench: "Bench", write: Callable[[str], None]) -> None:
        """Measure what is not a case of the suite's metric (`pqqp run --suite`), writing a line per measurement."""

    def report(self, analysis: "Analysis") -> str:
        """The terminal report from stored measurements ("" where there is nothing to show)."""
        return ""

    def collect(self, analysis: "Analysis", model: str) -> Any:
        """What the leaderboard shows of `model`, read from stored measurements once (missing ones as None)."""
        return None

    def expected(self, bench: "Bench") -> int:
        """How many stored measurements the section shows besides the suite's cases (the leaderboard's count of
        expected measurements)."""
        return 0

    def measurements(self, collected: Any) -> list["Measurement"]:
        """The stored measurements in `collected` that the suite's cases do not hold already."""
        return []

    def tables(self, board: Board, suite: "Suite") -> list["Table"]:
        return []

    def overview(self, boards: list[Board], suite: "Suite") -> list["Table"]:
        """Tables across the suite's models, shown before the per-model tables."""
        return []

    def plots(self, suite: "Suite") -> tuple[Plot, ...]:
        return ()
