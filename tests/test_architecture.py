"""docs/architecture.md is the module order: every import of the package points up its table (module level, inside
functions and under TYPE_CHECKING alike), every module is in it, and its "Adding a method" and "Adding a metric"
walk-throughs work."""

from __future__ import annotations

import ast
import json
import re
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from pqqp_bench import metrics
from pqqp_bench.cli import main
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods import registry
from pqqp_bench.methods.prune import Pruner
from pqqp_bench.methods.statistics import STATISTICS
from pqqp_bench.metrics import Evaluated, MetricContext, compression_details
from pqqp_bench.spec import Recipe

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pqqp_bench"
DOC = REPO / "docs" / "architecture.md"
EXCEPTIONS = {("methods.base", "methods")}  # the doc's one exception, with its reason there


def documented_order() -> list[str]:
    """The modules of the doc's table, top to bottom (`pqqp_bench` is the package itself)."""
    text = DOC.read_text(encoding="utf-8")
    table = text.split("<!-- architecture:")[1].split("<!-- end architecture -->")[0]
    return re.findall(r"^\| `([\w.]+)` \|", table, flags=re.M)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "pqqp_bench"


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package's modules `path` imports, relative or absolute, wherever the import statement is."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" and name != "pqqp_bench" else name.split(".")[:-1]
    if name == "pqqp_bench":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            elif node.module and node.module.split(".")[0] == "pqqp_bench":
                base = []
            else:
                continue
            module = ".".join([*base, *([m for m in (node.module or "").split(".") if m and m != "pqqp_bench"])])
            for alias in node.names:
                sub = f"{module}.{alias.name}" if module else alias.name
                found.add(sub if sub in known else (module or "pqqp_bench"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pqqp_bench":
                    found.add(alias.name.removeprefix("pqqp_bench").strip(".") or "pqqp_bench")
    return {m for m in found if m != name}


def test_every_module_is_in_the_table_once() -> None:
    order = documented_order()
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert len(order) == len(set(order)), [m for m in order if order.count(m) > 1]
    assert set(order) == modules, {"not in the doc": sorted(modules - set(order)), "gone": sorted(set(order) - modules)}


def test_imports_point_up_the_table() -> None:
    order = documented_order()
    rank = {m: i for i, m in enumerate(order)}
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for target in sorted(imports_of(path, set(rank))):
            if rank[target] > rank[name] and (name, target) not in EXCEPTIONS:
                wrong.append(f"{name} imports {target}, which comes after it in docs/architecture.md")
    assert not wrong, "\n".join(wrong)


def test_registered_sections_point_up_the_table() -> None:
    """The section registry imports its sections by name (so the pytest plugin loads none of them): each named
    module is in the table above the registry, like an import."""
    from pqqp_bench.sections import SECTIONS

    rank = {m: i for i, m in enumerate(documented_order())}
    for registration in SECTIONS:
        module = "sections" + registration.module
        assert module in rank and rank[module] < rank["sections"], module
        assert registration.section().key == registration.key, module


def test_the_check_sees_a_backward_import(tmp_path: Path) -> None:
    """The import reader finds relative, absolute and function-level imports (so the check above can fail)."""
    fake = PACKAGE / "methods" / "rtn.py"
    source = fake.read_text(encoding="utf-8")
    known = set(documented_order())
    assert {"methods.base", "methods.quantize", "methods.quantizer"} <= imports_of(fake, known)
    probe = PACKAGE / "methods" / "_probe_imports.py"
    assert not probe.exists()
    try:
        probe.write_text(source + "\n\ndef late():\n    from ..compress import compress\n    import pqqp_bench.store\n")
        assert {"compress", "store"} <= imports_of(probe, known)
    finally:
        probe.unlink()


# --- the doc's "Adding a method", done by a test -----------------------------------------------------------


class Peak(Pruner):
    """A toy pruner on a new input statistic: |W_ij| times the summed per-sample peak |X_j|."""

    name, needs_calibration, statistic = "peak", True, "absmax"

    def score(self, weight: torch.Tensor, stat: torch.Tensor | None) -> torch.Tensor:
        return weight.abs().float() * stat.float().unsqueeze(0)


def test_a_toy_method_runs_through_the_harness(monkeypatch: pytest.MonkeyPatch, model_dir: Path, text_file: Path,
                                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import pqqp_bench.listing as listing
    import pqqp_bench.methods as registry_module

    monkeypatch.setitem(STATISTICS, "absmax", lambda x: x.abs().amax(dim=0))  # a new statistic: one entry
    plugins = [EntryPoint("peak", f"{__name__}:Peak", "pqqp_bench.methods")]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: plugins)
    monkeypatch.setattr(listing, "entry_points", lambda group: plugins)
    monkeypatch.setenv("PQQP_CACHE_DIR", str(tmp_path / "cache"))
    registry.cache_clear()
    try:
        store, out = tmp_path / "s.sqlite", tmp_path / "run.json"
        assert main(["run", "--model", str(model_dir), "--corpus", str(text_file), "--seqlen", "32", "--calib-samples",
                     "4", "--eval-tokens", "128", "--device", "cpu", "--no-progress", "--store", str(store),
                     "--recipe", "peak:p=0.3 > rtn:w=4", "--json", str(out)]) == 0
        assert main(["methods"]) == 0
    finally:
        registry.cache_clear()
    listing = capsys.readouterr().out
    assert re.search(r"^peak\s+prune", listing, flags=re.M), listing
    [case] = [r for r in json.loads(out.read_text())["results"] if r["recipe"] == "peak:p=0.3 > rtn:w=4"]
    assert case["achieved"]["sparsity"] == pytest.approx(0.3, abs=0.02) and case["achieved"]["w_bits"] == 4


# --- the doc's "Adding a metric", done by a test -----------------------------------------------------------


class Zeros:
    """A toy metric: the fraction of the decoder Linears' weights that are zero once compressed."""

    names = "zeros"

    def accepts(self, name: str) -> bool:
        return name == "zeros"

    def split(self, context: MetricContext, model: str) -> str:
        return "linears=decoder"

    def baseline(self, recipe: Recipe) -> Recipe | None:
        return None

    def evaluate(self, context: MetricContext, experiment, recipe: Recipe, seed: int, compressed=None,
                 baseline=None) -> Evaluated:
        from pqqp_bench.blocks import block_linears, decoder_blocks

        model, report, seconds = compressed or experiment.compressed(recipe, seed)
        weights = [lin.weight for b in decoder_blocks(model) for lin in block_linears(b).values()]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        return Evaluated(zeros, {"order": recipe.order, **compression_details(report), "seconds": {"compress": seconds}})


def test_a_toy_metric_is_measured_through_the_bench(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                    text_file: Path, tmp_path: Path) -> None:
    from pqqp_bench.experiment import Experiment
    from pqqp_bench.measure import Bench
    from pqqp_bench.store import Store
    from pqqp_bench.suite import Suite

    monkeypatch.setattr(metrics, "METRICS", (*metrics.METRICS, Zeros()))  # a new metric: one class, one entry
    suite = Suite(models=(str(model_dir),), corpus=str(text_file), seqlen=32, calib_samples=4, eval_tokens=128,
                  device="cpu")
    bench, model = Bench(suite, Store(tmp_path / "s.sqlite"), progress=False), str(model_dir)
    m = bench.measure(model, "magnitude:p=0.5", metric="zeros")
    assert m.key.metric == "zeros" and m.key.split == "linears=decoder" and m.value == pytest.approx(0.5, abs=0.02)
    assert m.details["achieved"]["sparsity"] == pytest.approx(m.value, abs=0.02)
    assert bench.measure(model, "magnitude:p=0.5", metric="zeros") == m and len(bench.computed) == 1  # stored

    calls, compressed = [], Experiment.compressed
    monkeypatch.setattr(Experiment, "compressed", lambda self, *a: calls.append(a) or compressed(self, *a))
    ppl, zeros = bench.measure_together(model, "wanda:p=0.3", (None, "zeros"))
    assert len(calls) == 1 and ppl.key.metric == "ppl" and zeros.value == pytest.approx(0.3, abs=0.02)  # one copy
    with pytest.raises(PqqpError, match=r"no metric measures 'ones': accepted ppl, lm-eval:<task>/<metric>, "
                                        r"throughput, zeros"):
        metrics.metric_for("ones")

    from pqqp_bench.sections import load_suite  # a suite may name it as its metric; tokens/s is a section's
    assert load_suite(write_yaml(tmp_path, "metric: zeros\n")).metric == "zeros"
    with pytest.raises(PqqpError, match="no metric measures 'ones'"):
        load_suite(write_yaml(tmp_path, "metric: ones\n"))
    with pytest.raises(PqqpError, match="metric 'throughput' is not accepted as the suite's metric"):
        load_suite(write_yaml(tmp_path, "metric: throughput\n"))


# --- the command line's listings answer without importing torch ------------------------------------------


def test_method_listing_is_cached_per_code_and_plugins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import pqqp_bench.listing as listing

    first = listing.method_listing(tmp_path)
    assert [r[0] for r in first["rows"]][:3] == ["magnitude", "wanda", "sparsegpt"] and len(list(tmp_path.iterdir())) == 1
    monkeypatch.setattr(listing, "build", lambda: pytest.fail("the cached table was built again"))
    assert listing.method_listing(tmp_path) == first
    key = listing.listing_key()
    monkeypatch.setattr(listing, "entry_points", lambda group: [EntryPoint("peak", f"{__name__}:Peak", listing.GROUP)])
    assert listing.listing_key() != key  # another plugin set is another table
    broken = {"rows": [], "broken": {"ghost": "ModuleNotFoundError"}}
    monkeypatch.setattr(listing, "build", lambda: broken)
    assert listing.method_listing(tmp_path) == broken and len(list(tmp_path.iterdir())) == 1  # not kept


def test_listings_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from pqqp_bench.cli import main; main(['models']); main(['corpora']); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False", out


def test_slow_marks_follow_what_methods_declare() -> None:
    from pqqp_bench.pytest_plugin import marks_for
    from pqqp_bench.spec import parse_recipe

    def slow(text: str) -> bool:
        return any(m.name == "slow" for m in marks_for(parse_recipe(text)))

    assert slow("wanda:p=0.3 > gptq:w=4") and slow("sleb:p=0.2") and not slow("wanda:p=0.3 > rtn:w=4")
    assert [name for name, m in registry().methods.items() if m.method.slow and m.builtin] == \
        ["sparsegpt", "sleb", "gptq", "mpq", "share", "lora"]


# --- adding a suite section ------------------------------------------------------------------------------

TOY_SECTION = '''
from dataclasses import dataclass

from pqqp_bench.errors import PqqpError
from pqqp_bench.report import Table
from pqqp_bench.sections.base import Section
from pqqp_bench.spec import Recipe, parse_recipe
from pqqp_bench.suite import Case, model_id, short


@dataclass(frozen=True)
class Cost:
    model: str
    recipe: Recipe

    @property
    def id(self):
        return f"{model_id(self.model)}-{short(self.recipe)}"


@dataclass(frozen=True)
class Toy(Section):
    """`toy: {recipes: [...]}`: each recipe's perplexity over the dense model's."""

    key = "toy"
    recipes: tuple = ()

    @classmethod
    def parse(cls, value):
        if value is None:
            return None
        if not isinstance(value, dict) or not value.get("recipes"):
            raise PqqpError(f"bad value toy={value!r} in the suite: accepted {{recipes: [recipes]}}")
        recipes = value["recipes"].split(";") if isinstance(value["recipes"], str) else value["recipes"]
        return cls(tuple(parse_recipe(r) for r in recipes))

    def cases(self, suite, model):
        return [Case(model, r, "toy", short(r)) for r in self.recipes]

    def tests(self, suite):
        return {"pqqp_toy": [Cost(m, r) for m in suite.models for r in self.recipes]}

    def collect(self, analysis, model):
        dense = analysis.mean_value(model, Recipe(()))
        return tuple((str(r), analysis.mean_value(model, r) / dense) for r in self.recipes)

    def report(self, analysis):
        return "\\n".join(f"toy: {r} costs {x:.4f}x dense" for m in analysis.suite.models for r, x in self.collect(analysis, m))

    def tables(self, board, suite):
        return [Table("Toy: perplexity over dense", ("recipe", "ratio"),
                      tuple((r, f"{x:.4f}") for r, x in board.part(self.key)))]


SECTION = Toy
'''

TOY_TEST = '''
def test_case(pqqp_bench, pqqp_case):
    pqqp_bench.measure_case(pqqp_case)


def test_toy(pqqp_bench, pqqp_toy):
    assert pqqp_bench.measure(pqqp_toy.model, pqqp_toy.recipe).value > 0
'''


def test_a_toy_section_runs_through_the_harness(monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester,
                                                model_dir: Path, text_file: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """docs/architecture.md's "Adding a suite section": a module, its registration, its test function; then the suite
    key, the `--pqqp-toy-recipes` override, the cases, the pytest parameters, the report and the leaderboard take it."""
    import sys

    import pqqp_bench.sections as sections
    from pqqp_bench.sections import Registration, load_suite

    (tmp_path / "toy_section.py").write_text(TOY_SECTION)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sections, "SECTIONS", (*sections.SECTIONS, Registration(
        "toy", "toy_section", ("pqqp_toy",), {"recipes": "toy: recipes (';'-separated)"}, prefix="toy")))
    suite_file = tmp_path / "toy.yaml"
    suite_file.write_text(f"models: ['{model_dir}']\ncorpus: '{text_file}'\nseqlen: 32\ncalib_samples: 4\n"
                          f"eval_tokens: 128\ndevice: cpu\npruners: []\nquantizers: []\nratios: []\nbits: []\n"
                          f"toy: {{recipes: ['magnitude:p=0.5']}}\n")
    suite = load_suite(suite_file, toy_recipes="magnitude:p=0.5;rtn:w=4")
    assert [str(c.recipe) for c in suite.cases()] == ["dense", "magnitude:p=0.5", "rtn:w=4"]
    with pytest.raises(PqqpError, match="bad value toy="):
        load_suite(write_yaml(tmp_path, "toy: {}"))

    store = tmp_path / "toy.sqlite"
    pytester.makepyfile(test_toy=TOY_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-v", "--pqqp-suite", str(suite_file),
                                          "--pqqp-store", str(store))
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*test_toy?tiny-llama-magnitude:p=0.5? PASSED*", "*toy: magnitude:p=0.5 costs *x dense*"])

    assert main(["leaderboard", "--suite", str(suite_file), "--store", str(store), "--out", str(tmp_path / "board")]) == 0
    page = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "#### Toy: perplexity over dense" in page and "| magnitude:p=0.5 |" in page
    assert "toy_section" in sys.modules


def write_yaml(folder: Path, text: str) -> Path:
    path = folder / "bad.yaml"
    path.write_text(text)
    return path
