"""The plugin API: methods from other packages through the `pqqp_bench.methods` entry-point group."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from pqqp_bench import methods as registry_module
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods import Method, registry
from pqqp_bench.methods.prune import Magnitude

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def doc_files() -> dict[str, str]:
    """The files of the minimal plugin in docs/plugins.md: fenced blocks whose first line is `# file: NAME`."""
    blocks = re.findall(r"```(?:toml|python)\n# file: (\S+)\n(.*?)```", DOC.read_text(), flags=re.S)
    return {name: text for name, text in blocks}


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documented plugin, built and installed into a folder of its own (put on PYTHONPATH to use it)."""
    source, site = tmp_path_factory.mktemp("plugin"), tmp_path_factory.mktemp("site")
    files = doc_files()
    assert set(files) == {"pyproject.toml", "matrix_magnitude.py"}, f"docs/plugins.md holds {sorted(files)}"
    for name, text in files.items():
        (source / name).write_text(text)
    (source / "pyproject.toml").write_text(files["pyproject.toml"] + '\n[tool.setuptools]\npy-modules = ["matrix_magnitude"]\n')
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True)
    return site


def run_python(site: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_an_installed_plugin_is_listed_with_its_package(plugin_site: Path) -> None:
    result = run_python(plugin_site, "import sys; from pqqp_bench.cli import main; sys.exit(main(['methods']))")
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("matrix-magnitude"))
    assert "pqqp-matrix-magnitude 0.1.0" in line and "prune" in line
    assert re.search(r"^rtn .*pqqp-bench", result.stdout, flags=re.M)


def test_a_plugin_method_runs_in_a_recipe_in_both_orders(plugin_site: Path) -> None:
    code = """
import sys
sys.path.insert(0, sys.argv[1])
from conftest import tiny_llama
import torch
from pqqp_bench.compress import compress
from pqqp_bench.spec import parse_recipe
from pqqp_bench.methods import registry
tokens = torch.randint(1, 90, (4, 32), generator=torch.Generator().manual_seed(1))
recipe = parse_recipe("matrix-magnitude:p=0.5 > rtn:w=4")
assert registry().methods["matrix-magnitude"].package == "pqqp-matrix-magnitude"
for r in (recipe, recipe.reversed()):
    got = compress(tiny_llama(), r, tokens, progress=False).achieved()
    print(r, got["sparsity"], got["w_bits"], r.ratios()["prune"], recipe.stages[0].full()["package"])
"""
    result = run_python(plugin_site, code, str(Path(__file__).parent))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == ["matrix-magnitude:p=0.5", "rtn:w=4"]
    for row in rows:
        assert float(row[-4]) == pytest.approx(0.5, abs=1e-3) and row[-3] == "4" and float(row[-2]) == 2.0
        assert row[-1] == "pqqp-matrix-magnitude==0.1.0"  # the plugin's version is part of the cache key


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch):
    """Replace the installed entry points with the given ones for one test (the registry is read afresh)."""

    def install(*points: EntryPoint) -> None:
        monkeypatch.setattr(registry_module, "entry_points", lambda group: list(points))
        registry.cache_clear()

    yield install
    registry.cache_clear()


class Halve(Magnitude):
    name = "halve"


class Misnamed(Magnitude):
    name = "other-name"


def point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name, value, "pqqp_bench.methods")


def test_plugin_methods_join_the_registry_and_are_not_builtin(entry_points) -> None:
    entry_points(point("halve", f"{__name__}:Halve"))
    entry = registry().methods["halve"]
    assert entry.method is Halve and not entry.builtin and not Halve.builtin() and Magnitude.builtin()
    assert registry_module.method_class("halve") is Halve


def test_a_plugin_that_fails_to_import_is_left_out_with_the_reason(entry_points) -> None:
    entry_points(point("ghost", "no_such_module_here:Ghost"))
    assert "ghost" not in registry().methods and "ModuleNotFoundError" in registry().broken["ghost"]
    with pytest.raises(PqqpError, match="method 'ghost' is a plugin that failed to load"):
        registry_module.method_class("ghost")
    assert "rtn" in registry().methods  # the harness keeps working


@pytest.mark.parametrize("value, message", [
    (f"{__name__}:Misnamed", "loads a method named 'other-name'"),
    (f"{__name__}:point", "accepted a subclass of pqqp_bench.methods.Method"),
    ("pqqp_bench.methods.prune:Magnitude", "clashes with the method of that name from pqqp-bench"),
])
def test_bad_plugins_are_refused_with_one_line(entry_points, value: str, message: str) -> None:
    entry_points(point("magnitude" if value.endswith(":Magnitude") else "halve", value))
    with pytest.raises(PqqpError, match=message) as error:
        registry()
    assert "\n" not in str(error.value)


def test_builtin_methods_are_listed_with_this_package(capsys: pytest.CaptureFixture) -> None:
    from pqqp_bench.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(re.search(rf"^{name} .*pqqp-bench", out, flags=re.M) for name in ("magnitude", "sparsegpt", "gptq"))
    assert isinstance(registry().methods["gptq"].method, type) and issubclass(registry().methods["gptq"].method, Method)


class OtherMagnitude(Magnitude):
    """Another implementation of the built-in magnitude pruner, as a plugin would ship it."""

    name = "other-magnitude"
    implements = "magnitude"


def test_the_leaderboard_sets_implementations_of_one_recipe_side_by_side(entry_points, tmp_path: Path) -> None:
    from pqqp_bench.leaderboard import build
    from pqqp_bench.sections import load_suite
    from synthetic import fake_model, fill, open_bench, suite_yaml

    entry_points(point("other-magnitude", f"{__name__}:OtherMagnitude"))
    suite = load_suite(suite_yaml(tmp_path / "suite.yaml", fake_model(tmp_path / "toy"),
                                  pruners="[magnitude, other-magnitude]"))
    bench = open_bench(suite, tmp_path / "store.sqlite")
    fill(bench)
    build(bench, tmp_path / "board", "pqqp leaderboard")
    text = (tmp_path / "board" / "leaderboard.md").read_text()
    section = text[text.index("#### Implementations of the same recipe"):].split("####")[1]
    rows = [line for line in section.splitlines() if line.startswith("| magnitude:p=0.3>rtn:w=4")]
    assert [row.split("|")[2].strip() for row in rows] == ["magnitude:p=0.3>rtn:w=4,a=4,kv=4",
                                                           "other-magnitude:p=0.3>rtn:w=4,a=4,kv=4"]
    assert rows[0].split("|")[3].strip() == "ours > ours" and rows[1].split("|")[3].strip() != "ours > ours"
    cells = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    assert "magnitude:p=0.3" in cells and "rtn:w=4,a=4,kv=4" not in cells  # one implementation only: not listed


class Refill(Magnitude):
    """A plugin stage that breaks the engine's invariants: it refills every pruned weight of the first Linear."""

    name = "refill"

    def apply(self, work) -> None:
        first = next(iter(work.linears.values()))
        first.weight.data[first.weight.data == 0] = 0.5


def test_a_plugin_that_refills_pruned_weights_is_flagged_and_counted_as_it_is(entry_points, model, tokens) -> None:
    from pqqp_bench.compress import compress
    from pqqp_bench.spec import Recipe

    entry_points(point("refill", f"{__name__}:Refill"))
    report = compress(model, Recipe((Magnitude(p=0.5), Refill(p=0.0))), tokens, progress=False)
    first = [r for r in report.linears if r.name.endswith(".self_attn.q_proj")]
    assert all(r.mask_sparsity == 0.0 and r.zero_fraction == 0.0 for r in first)  # refilled: no longer pruned
    assert report.achieved()["sparsity"] < 0.5 - 0.01
    share = sum(r.numel for r in first) / sum(r.numel for r in report.linears)  # every Linear was pruned by half
    assert report.flags == [f"refill:p=0 refilled {share:.1%} of the weights pruned before it (in {len(first)} Linears)"]
