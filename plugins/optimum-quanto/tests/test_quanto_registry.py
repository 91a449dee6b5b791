"""The `quanto` method is registered by this package, parses recipes, and refuses bad values in one line."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from pqqp_bench.cli import main
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods import method_class, registry
from pqqp_bench.spec import parse_recipe

from pqqp_quanto import Quanto


def test_registered_from_this_package() -> None:
    entry = registry().methods["quanto"]
    assert entry.method is Quanto and method_class("quanto") is Quanto
    assert (entry.package, entry.version, entry.builtin) == ("pqqp-quanto", version("pqqp-quanto"), False)
    assert "quanto" not in registry().broken


def test_pqqp_methods_lists_it_with_its_source(capsys: pytest.CaptureFixture) -> None:
    assert main(["methods"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("quanto "))
    assert f"pqqp-quanto {version('pqqp-quanto')}" in line and "w (8, 4 or 2" in line


@pytest.mark.parametrize("text, canonical", [
    ("quanto:w=4", "quanto:w=4"),
    ("quanto:w=4,g=64", "quanto:w=4,g=64"),
    ("quanto: w=qint4 , g=auto", "quanto:w=4"),
    ("quanto:w=8,a=8", "quanto:w=8,a=int8"),
    ("quanto:w=4,a=FP8,g=none,zp=int,opt=hqq", "quanto:w=4,a=fp8,g=none,zp=int,opt=hqq"),
])
def test_recipe_parsing(text: str, canonical: str) -> None:
    recipe = parse_recipe(f"sparsegpt:p=0.5 > {text}")
    assert str(recipe) == f"sparsegpt:p=0.5 > {canonical}" and recipe.order == "P>Q"
    assert recipe.ratios()["quant"] == 16 / recipe.stages[1].values["w"]


def test_cache_key_names_plugin_and_library() -> None:
    full = parse_recipe("quanto:w=4").stages[0].full()
    assert full["package"] == f"pqqp-quanto=={version('pqqp-quanto')}"
    assert full["library"] == f"optimum-quanto=={version('optimum-quanto')}"
    assert parse_recipe("quanto:w=4").key != parse_recipe("quanto:w=4,zp=int").key


@pytest.mark.parametrize("text, names", [
    ("quanto:w=3", ["w='3'", "8, 4 or 2"]),
    ("quanto:w=4,a=int4", ["a='int4'", "int8", "fp8"]),
    ("quanto:w=4,g=-8", ["g='-8'", "auto, none"]),
    ("quanto:w=4,zp=half", ["zp='half'", "float or int"]),
    ("quanto:w=4,opt=gptq", ["opt='gptq'", "max or hqq"]),
    ("quanto:w=4,bits=4", ["'bits'", "w, a, g, zp, opt"]),
    ("quanto:a=int8", ["needs w=", "8, 4 or 2"]),
    ("quanto:w=8,g=64", ["g=64", "g=auto or g=none"]),
    ("quanto:w=8,zp=int", ["zp=int", "zp=float"]),
])
def test_bad_values_give_one_line_errors(text: str, names: list[str]) -> None:
    with pytest.raises(PqqpError) as error:
        parse_recipe(text)
    message = str(error.value)
    assert "\n" not in message and all(name in message for name in names), message


def test_group_size_must_divide_every_layer(model) -> None:
    from pqqp_bench.compress import compress

    with pytest.raises(PqqpError, match=r"g=48 does not divide in_features=64 .*accepted a divisor"):
        compress(model, parse_recipe("quanto:w=4,g=48"), progress=False)
