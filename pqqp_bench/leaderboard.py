"""The published leaderboard of a suite: Markdown and HTML tables, PNG plots and an index, from the store.

Built from stored measurements only (a lookup-only `Bench`): a measurement that is not stored is shown as
`missing`, never computed. The output is a pure function of the suite and the store's rows: no timestamps, a
fixed order, fixed figure sizes and PNGs without a version stamp, so building twice gives identical bytes.

Per model: the dense metric, then each section's tables and plots (sections/: the grid's methods alone with their
CERs, joint cases with A(Q->P), verdicts and plots; Table 1; general pipelines; the order search; throughput).
Across models: each section's overview (the grid's ranking at equal achieved total ratio).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .analysis import Analysis
from .environment import environment
from .errors import PqqpError
from .measure import METRIC, Bench
from .report import Table, convention, slug, spread
from .sections import active
from .sections.base import Board
from .store import Measurement, record
from .spec import Recipe
from .suite import Case, Suite
from .paths import write_text


# ----------------------------------------------------------------------------------------------- pages


def collect(bench: Bench, model: str) -> Board:
    """One model's page, read from the store once: the dense measurements and what each section collected."""
    analysis = Analysis(bench)
    dense = tuple(bench.stored_case(Case(model, Recipe(()), "", "")))
    return Board(model, dense, tuple((section, section.collect(analysis, model)) for section in active(bench.suite)))


def collect_all(bench: Bench) -> list[Board]:
    return [collect(bench, model) for model in bench.suite.models]


def dense_table(board: Board) -> Table:
    return Table("Dense model", ("model", "ppl"), ((board.model, spread(list(board.dense)).text()),))


def model_tables(board: Board, suite: Suite) -> list[Table]:
    return [dense_table(board), *(t for section in active(suite) for t in section.tables(board, suite))]


def overview_tables(boards: list[Board], suite: Suite) -> list[Table]:
    return [t for section in active(suite) for t in section.overview(boards, suite)]


def plots(suite: Suite) -> list:
    """Every plot of the suite's sections (`sections.base.Plot`), in section order."""
    return [plot for section in active(suite) for plot in section.plots(suite)]


def image_name(kind: str, board: Board) -> str:
    return f"{kind}-{slug(board.model)}.png"


# ------------------------------------------------------------------------------------------------- output


@dataclass(frozen=True)
class Provenance:
    """What the leaderboard was built from and how: printed in the index."""

    command: str
    suite: Suite
    measurements: int
    expected: int
    digest: str


def suite_measurements(bench: Bench, boards: list[Board]) -> list[Measurement]:
    """Every stored measurement the leaderboard was built from: each case of the suite's grid, pipelines and order
    search in every seed that can change it, and the throughput rows; once each, in the suite's case order."""
    found = {m.key.digest(): m for case in bench.suite.cases() for m in bench.stored_case(case)}
    for m in (m for board in boards for m in board.measurements()):
        found.setdefault(m.key.digest(), m)
    return list(found.values())


def provenance(command: str, bench: Bench, boards: list[Board]) -> Provenance:
    """The command, and a digest of the stored rows used (their keys' digests and values, sorted)."""
    rows = sorted((m.key.digest(), repr(m.value)) for m in suite_measurements(bench, boards))
    expected = sum(len(bench.seeds_for(case.recipe)) for case in bench.suite.cases())
    expected += sum(section.expected(bench) for section in active(bench.suite))
    digest = hashlib.sha256("\n".join(f"{d} {v}" for d, v in rows).encode()).hexdigest()[:16]
    return Provenance(command, bench.suite, len(rows), expected, digest)


def markdown(boards: list[Board], suite: Suite, *, images: bool) -> str:
    parts = [convention(suite), *(t.markdown() for t in overview_tables(boards, suite))]
    for board in boards:
        parts.append(f"### {board.model}")
        parts += [t.markdown() for t in model_tables(board, suite)]
        if images:
            parts += [f"![{text}]({image_name(kind, board)})" for kind, _, text, _ in plots(suite)]
    return "\n\n".join(parts) + "\n"


DATA, ENVIRONMENT = "measurements.json", "environment.json"


def rebuild_command(command: str) -> str:
    """The build command with the store replaced by the rebuilt one."""
    return re.sub(r"--store \S+", "--store rebuilt.sqlite", command)


def index(boards: list[Board], source: Provenance) -> str:
    s = source.suite
    head = (f"# Leaderboard: suite `{s.name}`\n\n" + (f"{s.description}\n\n" if s.description else "") +
            f"Generated by pqqp-bench {__version__} from {source.measurements} of {source.expected} expected stored "
            f"measurements (content digest `{source.digest}`) with\n\n```bash\n{source.command}\n```\n\n"
            "Files: [leaderboard.md](leaderboard.md) (tables), [leaderboard.html](leaderboard.html) (tables and "
            "plots), "
            + ", ".join(f"[{image_name(kind, b)}]({image_name(kind, b)})" for b in boards for kind, _, _, _ in plots(s))
            + ". Missing measurements are shown as `missing`; nothing is computed while building.\n\n"
            f"Data: [{DATA}]({DATA}) holds every measurement used (`pqqp export` form: keys, values, per-window NLLs), "
            f"[{ENVIRONMENT}]({ENVIRONMENT}) the library versions, CPU (kernel capability) and GPU of the machine that "
            f"built this leaderboard (each measurement's own timings, device, library versions and kernels are in its "
            f"details). Rebuild every table from them with the code of the commit in {ENVIRONMENT} (a measurement's key "
            f"carries the fingerprint of the code that computed it, so other code computes its own instead):\n\n```bash\npqqp import {DATA} --store rebuilt.sqlite\n"
            f"{rebuild_command(source.command)}\n```\n\n## Tables\n\n")
    return head + markdown(boards, s, images=True)


CSS = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:0.5em 0 1.5em}"
       "th,td{border:1px solid #bbb;padding:0.2em 0.6em;text-align:right}th{background:#eee}td:first-child{text-align:left}"
       ".note{color:#444;font-size:0.9em}img{display:block;margin:1em 0}")


def html_page(boards: list[Board], source: Provenance) -> str:
    s = source.suite
    body = [f"<h1>Leaderboard: suite {html.escape(s.name)}</h1>",
            f"<p>{html.escape(s.description)}</p>",
            f"<p>pqqp-bench {__version__}; {source.measurements} of {source.expected} expected measurements "
            f"(digest {source.digest}); built with <code>{html.escape(source.command)}</code></p>",
            f'<p class="note">{html.escape(convention(s))}</p>', *(t.html() for t in overview_tables(boards, s))]
    for board in boards:
        body.append(f'<section id="{slug(board.model)}">\n<h2>{html.escape(board.model)}</h2>')
        body += [t.html() for t in model_tables(board, s)]
        body += [f'<img src="{image_name(kind, board)}" alt="{html.escape(text)}" width="{w}" height="{h}">'
                 for kind, _, text, (w, h) in plots(s)]
        body.append("</section>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>pqqp-bench leaderboard: {html.escape(s.name)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def build(bench: Bench, out: Path, command: str) -> list[Path]:
    """Write the leaderboard of `bench`'s suite into `out`; returns the files written, in a fixed order."""
    if bench.suite.metric != METRIC:
        raise PqqpError(f"the leaderboard's tables are written for metric {METRIC!r}, the suite's is "
                        f"{bench.suite.metric!r}: accepted a suite with metric ppl (pqqp gate and pytest accept both)")
    out.mkdir(parents=True, exist_ok=True)
    boards = collect_all(bench)
    source = provenance(command, bench, boards)
    texts = {"leaderboard.md": markdown(boards, bench.suite, images=False), "leaderboard.html": html_page(boards, source),
             "README.md": index(boards, source)}
    written = []
    texts[DATA] = json.dumps([record(m) for m in suite_measurements(bench, boards)], indent=1) + "\n"
    texts[ENVIRONMENT] = json.dumps(environment(), indent=1) + "\n"
    for name, text in texts.items():
        write_text(out / name, text)
        written.append(out / name)
    for board in boards:
        for kind, plot, _, _ in plots(bench.suite):
            plot(board, bench.suite, out / image_name(kind, board))
            written.append(out / image_name(kind, board))
    return written
