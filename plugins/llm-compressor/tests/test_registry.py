"""The plugin as the harness sees it: registered methods with their package, `pqqp methods`, one-line errors."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from pqqp_bench.cli import main
from pqqp_bench.compress import compress
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods import registry
from pqqp_bench.spec import parse_recipe
from pqqp_llmc.methods import LlmcGPTQ, LlmcRTN, LlmcSparseGPT, LlmcWanda

from conftest import tiny_llama

METHODS = {"llmc-sparsegpt": (LlmcSparseGPT, "prune"), "llmc-wanda": (LlmcWanda, "prune"),
           "llmc-gptq": (LlmcGPTQ, "quant"), "llmc-rtn": (LlmcRTN, "quant")}


def test_registered_with_their_package() -> None:
    found = registry()
    for name, (cls, kind) in METHODS.items():
        entry = found.methods[name]
        assert entry.method is cls and cls.kind == kind and cls.scope == "model"
        assert entry.package == "pqqp-llmcompressor" and not entry.builtin and entry.version == "0.1.0"
    assert not set(METHODS) & set(found.broken)


def test_pqqp_methods_lists_them(capsys: pytest.CaptureFixture) -> None:
    assert main(["methods"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("llmc-")}
    assert sorted(rows) == sorted(METHODS)
    for name, (_, kind) in METHODS.items():
        assert f" {kind} " in rows[name] and "pqqp-llmcompressor 0.1.0" in rows[name]
    assert "w (an integer 2..8)" in rows["llmc-gptq"] and "nm (N:M" in rows["llmc-wanda"]


def test_plugin_methods_key_their_package_version() -> None:
    method = parse_recipe("llmc-gptq:w=4,g=64").stages[0]
    assert method.canonical() == "llmc-gptq:w=4,g=64"
    assert method.full()["package"] == "pqqp-llmcompressor==0.1.0"
    assert method.full()["library"] == f"llmcompressor {importlib.metadata.version('llmcompressor')}"
    assert method.ratio() == 4.0 and parse_recipe("llmc-wanda:nm=2:4").stages[0].ratio() == 2.0


@pytest.mark.parametrize("recipe, words", [
    ("llmc-gptq:w=9", ["bad value w='9'", "llmc-gptq", "accepted an integer 2..8"]),
    ("llmc-rtn:w=none", ["bad value w='none'", "accepted an integer 2..8"]),
    ("llmc-gptq:g=32", ["llmc-gptq", "needs weight bits w=2..8"]),
    ("llmc-rtn:w=4,a=8", ["unknown parameter 'a'", "accepted w, g, clip"]),
    ("llmc-rtn:w=4,clip=0.9", ["bad value clip='0.9'", "accepted none or mse"]),
    ("llmc-gptq:w=4,actorder=maybe", ["bad value actorder='maybe'", "accepted true or false"]),
    ("llmc-sparsegpt:p=1", ["bad value p='1'", "accepted a float in (0, 1)"]),
    ("llmc-sparsegpt:p=0", ["bad value p='0'", "accepted a float in (0, 1)"]),
    ("llmc-wanda:nm=4:2", ["bad value nm='4:2'", "accepted N:M with 0 < N < M"]),
    ("llmc-wanda", ["llmc-wanda", "needs p="]),
    ("llmc-wanda:p=0.3,nm=2:4", ["got both p=0.3 and nm=2:4"]),
])
def test_bad_values_are_one_line_errors(recipe: str, words: list[str]) -> None:
    with pytest.raises(PqqpError) as error:
        parse_recipe(recipe)
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message


@pytest.mark.parametrize("recipe, words", [
    ("llmc-gptq:w=4,g=48", ["g=48 does not divide in_features=64", "accepted a divisor"]),
    ("llmc-rtn:w=4,g=128", ["g=128 does not divide in_features=64"]),
    ("llmc-sparsegpt:nm=2:3", ["nm=2:3 needs in_features divisible by 3"]),
    ("llmc-sparsegpt:nm=2:8,block=12", ["block=12 must be a multiple of M=8"]),
])
def test_shapes_that_do_not_fit_are_refused_before_any_work(recipe: str, words: list[str],
                                                            tokens: torch.Tensor) -> None:
    """A group size that does not divide every layer is refused up front, as the harness's own quantizers do
    (llm-compressor's own check runs only after the model is prepared, and skips layers narrower than g)."""
    model = tiny_llama()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(PqqpError) as error:
        compress(model, parse_recipe(recipe), tokens, progress=False)
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
