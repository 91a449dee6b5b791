"""Recipes: grammar, canonical strings, stable keys, and one-line errors naming the bad token."""

from __future__ import annotations

import pytest

from pqqp_bench.errors import PqqpError
from pqqp_bench.methods import registry
from pqqp_bench.spec import parse_recipe


def test_canonical_string_orders_parameters_and_drops_defaults() -> None:
    recipe = parse_recipe("  WANDA : p = 0.50 >rtn:kv=4,w=4,a=4,clip=mse ")
    assert str(recipe) == "wanda:p=0.5 > rtn:w=4,a=4,kv=4"
    assert recipe.order == "P>Q"
    assert recipe.reversed().order == "Q>P"
    assert str(recipe.reversed()) == "rtn:w=4,a=4,kv=4 > wanda:p=0.5"


def test_key_is_stable_and_covers_every_parameter() -> None:
    a = parse_recipe("wanda:p=0.5 > rtn:w=4")
    assert a.key == parse_recipe("wanda:p=0.50 > rtn:w=4,clip=mse").key
    assert a.key != parse_recipe("wanda:p=0.5 > rtn:w=4,clip=none").key
    assert a.key != a.reversed().key
    assert len(a.key) == 16 and int(a.key, 16) >= 0


def test_ratios_follow_the_paper_definitions() -> None:
    ratios = parse_recipe("magnitude:p=0.5 > rtn:w=4,a=4").ratios()
    assert ratios == {"prune": 2.0, "quant": 4.0, "total": 8.0}
    assert parse_recipe("wanda:nm=2:4").ratios()["prune"] == 2.0
    assert parse_recipe("rtn:w=8").ratios()["quant"] == 2.0
    assert parse_recipe("dense").ratios() == {"prune": 1.0, "quant": 1.0, "total": 1.0}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("foo:p=0.5", "unknown method 'foo': accepted " + ", ".join(sorted(registry().methods))),  # plugins included
        ("wanda:p=1.0", "p='1.0'"),
        ("wanda:p=-0.1", "p='-0.1'"),
        ("wanda:p=abc", "accepted a float in [0, 1)"),
        ("rtn:w=1", "w='1'"),
        ("rtn:w=17", "accepted an integer 2..16"),
        ("wanda:nm=4:4", "nm='4:4'"),
        ("wanda:nm=5:4", "accepted N:M with 0 < N < M"),
        ("wanda:p=0.5 >", "empty stage at the end"),
        ("> rtn:w=4", "empty stage at the start"),
        ("wanda:p=0.5 > > rtn:w=4", "between two '>'"),
        ("wanda:q=0.5", "unknown parameter 'q' for method 'wanda': accepted p, nm"),
        ("wanda:p", "bad parameter 'p'"),
        ("wanda:", "has ':' but no parameters"),
        ("wanda", "needs p="),
        ("rtn", "quantizes nothing"),
        ("wanda:p=0.5,p=0.4", "given twice"),
        ("wanda:p=0.3,nm=2:4", "give one"),
    ],
)
def test_bad_recipes_give_one_line_errors(text: str, fragment: str) -> None:
    with pytest.raises(PqqpError) as info:
        parse_recipe(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
