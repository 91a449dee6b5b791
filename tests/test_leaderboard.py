"""The leaderboard from a synthetic store: identical bytes when built twice, missing cells shown as missing,
seed spreads, rankings at equal compression, PNG plots of the expected size, and the HTML as Chromium renders it."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pqqp_bench import __version__
from pqqp_bench.cli import main
from pqqp_bench.leaderboard import build
from pqqp_bench.report import figure_pixels
from pqqp_bench.measure import Bench
from pqqp_bench.store import Store
from pqqp_bench.sections import load_suite
from synthetic import fake_model, fill, open_bench, suite_yaml

SKIPPED = "wanda:p=0.3 > rtn:w=4,a=4,kv=4"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    """Two pruners x two quantizers, p 0.2 and 0.3, B 4, 6, 8, two seeds; one joint case left unmeasured."""
    suite = load_suite(suite_yaml(tmp_path / "suite.yaml", fake_model(tmp_path / "toy"), seeds="[0, 1]",
                                  description="'a toy grid'"))
    bench = open_bench(suite, tmp_path / "store.sqlite")
    fill(bench, skip=lambda recipe: str(recipe) == SKIPPED)
    return bench


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_building_twice_gives_identical_files(bench: Bench, tmp_path: Path) -> None:
    first = build(bench, tmp_path / "one", "pqqp leaderboard")
    second = build(bench, tmp_path / "two", "pqqp leaderboard")
    names = sorted(p.name for p in first)
    assert names == sorted(p.name for p in second)
    assert {"README.md", "leaderboard.md", "leaderboard.html", "measurements.json", "environment.json"} <= set(names)
    assert len(names) == 7
    for a, b in zip(sorted(first), sorted(second)):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two builds"
    assert bench.experiments == {} and bench.computed == []  # nothing was loaded or computed


def test_a_leaderboard_ships_its_data_and_is_rebuilt_from_it_bit_for_bit(bench: Bench, tmp_path: Path) -> None:
    build(bench, tmp_path / "published", "pqqp leaderboard --store s.sqlite")
    data = json.loads((tmp_path / "published" / "measurements.json").read_text())
    assert len(data) == len(bench.store)  # every stored case of the suite, each seed
    environment = json.loads((tmp_path / "published" / "environment.json").read_text())
    assert environment["versions"]["torch"] and environment["cpu_capability"]
    assert "pqqp import measurements.json --store rebuilt.sqlite" in (tmp_path / "published" / "README.md").read_text()
    with Store(tmp_path / "rebuilt.sqlite") as store:
        assert store.import_json(tmp_path / "published" / "measurements.json") == (len(data), 0)
        build(open_bench(bench.suite, tmp_path / "rebuilt.sqlite"), tmp_path / "rebuilt", "pqqp leaderboard --store s.sqlite")
    for name in ("leaderboard.md", "leaderboard.html", "measurements.json"):
        assert (tmp_path / "rebuilt" / name).read_bytes() == (tmp_path / "published" / name).read_bytes(), name


def test_tables_hold_every_case_with_missing_cells_and_seed_spreads(bench: Bench, tmp_path: Path) -> None:
    build(bench, tmp_path, "pqqp leaderboard --suite suite.yaml")
    text = (tmp_path / "leaderboard.md").read_text()
    assert "token-level over 8 non-overlapping windows of 32 tokens of pydoc" in text
    for title in ("Dense model", "Quantization alone", "Pruning alone", "Joint compression, both orders",
                  "Progressive Intensity Hypothesis", "Ranking at equal total compression ratio"):
        assert f"#### {title}" in text
    joint = [line for line in text.splitlines() if re.match(r"\| wanda +\| rtn +\| 0\.3 +\| 4 ", line)]
    assert len(joint) == 1 and joint[0].count("missing") == 4, joint  # P->Q ppl, A, x and regime
    assert "± 0.028 (2 seeds)" in text  # wanda (seeded) shows its spread over the two seeds
    magnitude_rtn = [line for line in text.splitlines() if re.match(r"\| magnitude +\| rtn +\| 0\.2 +\| 8 ", line)]
    assert "seeds" not in magnitude_rtn[0] and "+0.27 ±" in magnitude_rtn[0]  # seedless: one value; A > 0
    verdicts = [line for line in text.splitlines() if re.match(r"\| \w+ +\| [\w>]+ +\| 0\.[23] +\| (supported|violated|inconclusive|missing)", line)]
    assert len(verdicts) == 8 and sum("missing" in v for v in verdicts) == 1


def test_ranking_groups_equal_total_ratio(bench: Bench, tmp_path: Path) -> None:
    build(bench, tmp_path, "pqqp leaderboard")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in (tmp_path / "leaderboard.md").read_text().splitlines()
            if re.match(r"\| \S+ +\| \d\.\d\d +\| \d", line)]
    group = [r for r in rows if r[1] == "2.50"]  # p = 0.2 at 8 bits: C_P·C_Q = 1.25 x 2
    assert len(group) == 8 and {r[5] for r in group} == {"P→Q", "Q→P"}
    assert [r[2] for r in group] == ["1", "2", "2", "2", "5", "6", "6", "6"]  # ties share a rank
    assert all(r[5] == "Q→P" for r in group[:4])  # the toy model favours quantizing first


def test_index_names_command_version_and_embeds_everything(bench: Bench, tmp_path: Path) -> None:
    written = build(bench, tmp_path, "pqqp leaderboard --suite suite.yaml --out lb")
    index = (tmp_path / "README.md").read_text()
    assert "```bash\npqqp leaderboard --suite suite.yaml --out lb\n```" in index
    assert f"pqqp-bench {__version__}" in index and "98 of 100 expected" in index and "a toy grid" in index
    assert (tmp_path / "leaderboard.md").read_text() in index.replace("\n\n![", "\n\n![")  # tables embedded
    for png in (p for p in written if p.suffix == ".png"):
        assert f"]({png.name})" in index


def test_plots_are_images_of_the_expected_size(bench: Bench, tmp_path: Path) -> None:
    from matplotlib import image

    pngs = [p for p in build(bench, tmp_path, "pqqp leaderboard") if p.suffix == ".png"]
    assert sorted(p.name.split("-")[0] for p in pngs) == ["advantage", "ratio"]
    for png in pngs:
        assert png_size(png) == figure_pixels(2, 2) == (960, 720)
        pixels = image.imread(png)
        assert pixels.shape[:2] == (720, 960) and pixels.std() > 0.05  # drawn on, not a blank canvas


def test_cli_builds_into_out_and_refuses_a_missing_store(bench: Bench, tmp_path: Path, capsys) -> None:
    suite, store, out = bench.suite.source, str(bench.store.path), tmp_path / "lb"
    assert main(["leaderboard", "--suite", suite, "--store", store, "--out", str(out)]) == 0
    assert f"pqqp leaderboard --suite {suite} --store {store} --out {out}" in (out / "README.md").read_text()
    capsys.readouterr()
    assert main(["leaderboard", "--suite", suite, "--store", str(tmp_path / "none.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pqqp: error: store") and "none.sqlite" in err and not (tmp_path / "none.sqlite").exists()


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_html_leaderboard_renders_in_chromium(bench: Bench, tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    build(bench, tmp_path, "pqqp leaderboard")
    page = (tmp_path / "leaderboard.html").as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, *profile, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count("<table") == 1 + 5  # the ranking, then five tables for the one model
    for header in ("A(Q→P) ± se", "x = C*_P − C_Q", "CER C*_P on rtn", "verdict", "ppl P→Q", "C_P·C_Q"):
        assert re.search(rf"<th[^>]*>\s*{re.escape(header)}\s*</th>", html), header
    assert html.count("<img") == 2 and "missing" in html  # the toy A falls with x
    assert re.search(r"<td[^>]*>\s*(supported|violated|inconclusive)\s*</td>", html)
    shot = tmp_path / "shot.png"
    result = subprocess.run([browser, *CHROMIUM_FLAGS, *profile, f"--screenshot={shot}", "--window-size=1280,2000",
                             page], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert png_size(shot) == (1280, 2000) and shot.stat().st_size > 20_000  # tables and plots drawn, not blank


def test_axes_are_set_by_practical_points_and_go_logarithmic_on_their_span_alone() -> None:
    from matplotlib.figure import Figure

    from pqqp_bench.report import edge, scale_axis, short_model

    ax = Figure().subplots()
    limits = scale_axis(ax, "y", [12.0, 14.0, 19.0], [8606.0])  # a collapsed ppl never widens the axis
    assert ax.get_yscale() == "linear" and limits[1] < 20 and edge(8606.0, limits) == limits[1]
    assert ax.get_ylim() == pytest.approx(limits)
    ax = Figure().subplots()
    scale_axis(ax, "y", [12.0, 150.0], [])  # the data span 12.5x: logarithmic
    assert ax.get_yscale() == "log"
    ax = Figure().subplots()
    scale_axis(ax, "y", [-0.5, 0.3], [-40.0])  # A crosses 0: linear, and the collapsed A sits at the bottom
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] > -1
    assert short_model("/tmp/some/where/tiny-llama") == "tiny-llama"
    assert short_model("meta-llama/Meta-Llama-3-8B") == "meta-llama/Meta-Llama-3-8B"
    assert short_model("models/gemma.Q8_0.gguf") == "gemma.Q8_0.gguf"


def test_leaderboard_and_gate_take_the_model_and_grid_overrides_of_a_run(bench: Bench, tmp_path: Path, capsys) -> None:
    """A suite run on another model (`--pqqp-model`) is published and gated without writing a new YAML."""
    model, store, out = bench.suite.models[0], str(bench.store.path), tmp_path / "other"
    other = suite_yaml(tmp_path / "other.yaml", "smollm2-135m", description="'written for another model'")
    assert main(["leaderboard", "--suite", str(other), "--store", store, "--out", str(out), "--model", model,
                 "--ratios", "0.3"]) == 0
    text = (out / "leaderboard.md").read_text()
    assert f"--model {model}" in (out / "README.md").read_text() and "--ratios 0.3" in (out / "README.md").read_text()
    assert "smollm2" not in text and re.search(r"\| magnitude +\| rtn +\| 0\.3 +\| (supported|violated|inconclusive)", text)
    assert not re.search(r"\| 0\.2 +\|", text)  # the grid override took effect: no p = 0.2 rows
    baseline = tmp_path / "baseline.json"
    assert main(["gate", "--suite", str(other), "--store", store, "--model", model, "--baseline", str(baseline),
                 "--update-baseline"]) == 0
    assert model in baseline.read_text()
    capsys.readouterr()


def test_an_interference_suite_gets_table_1_with_its_verdicts(tmp_path: Path) -> None:
    suite = load_suite(suite_yaml(tmp_path / "t1.yaml", fake_model(tmp_path / "toy"), interference="true"))
    bench = open_bench(suite, tmp_path / "t1.sqlite")
    fill(bench)
    build(bench, tmp_path / "lb", "pqqp leaderboard")
    text = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "#### Interference (Table 1)" in text
    rows = [line for line in text.splitlines() if re.match(r"\| (magnitude|wanda) +\| 0\.[23] +\| \d\.\d\d \(\d\)", line)]
    assert len(rows) == 2 * 2 * 3 * 2  # pruners x ratios x bit widths, per quantizer
    assert all(re.search(r"\| (supported|inconclusive) +\|", row) for row in rows)  # unstructured: never violated
