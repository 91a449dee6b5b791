"""Suites: YAML loading, overrides, grid expansion into recipes, readable ids, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pqqp_bench.errors import PqqpError
from pqqp_bench.suite import Suite
from pqqp_bench.sections import load_suite

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_yaml_keys_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "model: tiny\npruners: [wanda, 'sparsegpt:damp=0.02']\nquantizers: ['quarot > gptq:g=64']\n"
                           "ratios: [0.1, 0.2]\nbits: [4, 8]\nseeds: [0, 1]\ninterference: yes\n")
    suite = load_suite(path, bits="5,6", seeds=None, pruners="magnitude")
    assert suite.name == "grid" and suite.models == ("tiny",) and suite.section("interference") is not None
    assert suite.bits == (5, 6) and suite.seeds == (0, 1) and suite.ratios == (0.1, 0.2)
    assert suite.pruners == ("magnitude",) and suite.quantizers == ("quarot > gptq:g=64",)
    assert load_suite(path, quantizers="rtn:g=64,clip=none;gptq").quantizers == ("rtn:g=64,clip=none", "gptq")


def test_grid_recipes_and_ids() -> None:
    suite = Suite(pruners=("sparsegpt",), quantizers=("rtn", "quarot > gptq:g=64"), ratios=(0.2,), bits=(4, 8),
                  curve_bits=(4, 6))
    cases = suite.cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)) == len({(c.model, c.recipe.key) for c in cases})
    assert ids[0] == "smollm2-135m-dense"
    assert "smollm2-135m-sparsegpt:p=0.2-rtn:w=4,a=4,kv=4-Q>P" in ids
    texts = [str(c.recipe) for c in cases]
    for i, text in enumerate(texts):  # each recipe after the recipes it starts from (the prefix cache's order)
        assert not any(text.startswith(after + " > ") for after in texts[i + 1:]), text
    assert texts.index("rtn:w=4,a=4,kv=4") + 1 == texts.index("rtn:w=4,a=4,kv=4 > sparsegpt:p=0.2")
    curve = {str(c.recipe) for c in cases if c.role == "quant"}
    assert curve >= {"rtn:w=8,a=8,kv=8", "rtn:w=6,a=6,kv=6", "rtn:w=4,a=4,kv=4"}  # grid and curve bit widths
    joint = {c.label: c.recipe for c in cases if c.role == "joint"}
    assert len(joint) == 1 * 2 * 1 * 2 * 2
    qp = joint["sparsegpt:p=0.2-quarot>gptq:w=4,a=4,kv=4,g=64-Q>P"]
    pq = joint["sparsegpt:p=0.2-quarot>gptq:w=4,a=4,kv=4,g=64-P>Q"]
    assert str(pq) == "quarot > sparsegpt:p=0.2 > gptq:w=4,a=4,kv=4,g=64"  # the rotation stays first
    assert (qp.order, pq.order) == ("Q>P", "P>Q") and qp.reversed() == pq
    assert [h.id for h in suite.hypotheses()] == ["smollm2-135m-sparsegpt:p=0.2-rtn",
                                                 "smollm2-135m-sparsegpt:p=0.2-quarot>gptq:g=64"]
    assert suite.section("interference") is None


def test_quantize_subset_fills_only_those_bits() -> None:
    suite = Suite(quantize=("w",), bits=(4,))
    assert str(suite.quantizer("rtn", 4)) == "rtn:w=4"


@pytest.mark.parametrize("yaml_text, message", [
    ("orders: [P>Q, X]\n", "unknown order 'X'"),
    ("bits: [1]\n", "bit width 1 is not accepted"),
    ("pruners: [rtn]\n", "pruner 'rtn' in the suite is not accepted"),
    ("quantizers: [wanda]\n", "quantizer 'wanda' in the suite is not accepted"),
    ("pruners: ['wanda:p=0.2']\n", "sets p= itself"),
    ("colour: blue\n", "unknown suite key 'colour'"),
    ("ratios: [high]\n", "bad value ratios="),
    ("ratios: []\n", "suite key 'ratios' is empty"),
    ("max_ppl_ratio: 0.5\n", "max_ppl_ratio=0.5"),
    ("- just a list\n", "must hold a mapping"),
    ("bits: [4\n", "is not valid YAML"),
])
def test_bad_suites_get_one_line_errors(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(PqqpError, match=message.replace("[", r"\[")) as info:
        load_suite(write(tmp_path, yaml_text))
    assert "\n" not in str(info.value)


def test_missing_suite_file(tmp_path: Path) -> None:
    with pytest.raises(PqqpError, match="does not exist"):
        load_suite(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["default", "default-candidates", "methods", "paper-fig3", "paper-fig4", "table1"])
def test_shipped_suites_load(name: str) -> None:
    suite = load_suite(REPO / "suites" / f"{name}.yaml")
    assert suite.cases() and suite.hypotheses()
    assert suite.expected_minutes is not None, "each shipped suite documents its expected run time"


def test_test_ids_name_a_local_model_by_its_file_or_folder(tmp_path: Path) -> None:
    from pqqp_bench.suite import model_id

    assert model_id("smollm2-135m") == "smollm2-135m" and model_id("org/model-7b") == "org/model-7b"
    assert model_id("/very/long/path/to/SmolLM2-135M.Q4_1.gguf") == "SmolLM2-135M.Q4_1"
    assert model_id(str(tmp_path)) == tmp_path.name and model_id("./models/tiny/") == "tiny"
    suite = tmp_path / "two.yaml"
    suite.write_text("models: ['/a/tiny.gguf', '/b/tiny.gguf']\npruners: [magnitude]\nquantizers: [rtn]\n"
                     "ratios: [0.2]\nbits: [8]\n")
    with pytest.raises(PqqpError, match="have one test id 'tiny'"):
        load_suite(suite)
