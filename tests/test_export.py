"""Exports for vLLM: the integers written are the harness's grid, so the exported model is the evaluated one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pqqp_bench.compress import compress
from pqqp_bench.errors import PqqpError
from pqqp_bench.export import DENSE, W4A16, W8A8, export, gptq_dequantize, pack_rows, unpack_rows
from pqqp_bench.spec import parse_recipe

from conftest import tiny_llama


def exported(recipe: str, tokens: torch.Tensor, tokenizer, folder, dtype: str = "float32"):
    model = tiny_llama(layers=2)
    report = compress(model, parse_recipe(recipe), tokens, progress=False)
    result = export(model, tokenizer, report, folder, dtype)
    return model, result, load_file(str(folder / "model.safetensors")), json.loads((folder / "config.json").read_text())


def linears(model):
    return {f"model.layers.{i}.{n}": m for i, block in enumerate(model.model.layers)
            for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}


def test_pack_rows_round_trip() -> None:
    values = torch.randint(0, 16, (64, 24), generator=torch.Generator().manual_seed(0))
    packed = pack_rows(values)
    assert packed.dtype == torch.int32 and packed.shape == (8, 24)
    assert torch.equal(unpack_rows(packed), values)


def test_w8a8_export_is_the_evaluated_model(tokens, tokenizer, tmp_path) -> None:
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    model, result, tensors, config = exported("wanda:p=0.5 > rtn:w=8,a=8", tokens, tokenizer, tmp_path / "m")
    assert result.format == W8A8 and result.low_bit
    quant = QuantizationConfig.model_validate(config["quantization_config"])
    assert quant.format == "int-quantized" and quant.quantization_status == "compressed"
    scheme = quant.config_groups["group_0"]
    assert (scheme.weights.num_bits, scheme.input_activations.strategy, scheme.input_activations.dynamic) == (8, "token", True)
    compressor = BaseCompressor.get_value_from_registry("int-quantized")
    for path, linear in linears(model).items():
        assert tensors[f"{path}.weight"].dtype == torch.int8
        back = compressor.decompress({"weight": tensors[f"{path}.weight"], "weight_scale": tensors[f"{path}.weight_scale"]},
                                     scheme)["weight"]
        assert torch.equal(back, linear.weight.data), path  # exact: same integers, same scales


@pytest.mark.parametrize("recipe", ["gptq:w=4,g=32", "magnitude:p=0.5 > gptq:w=4", "rtn:w=4,g=16"])
def test_w4a16_export_is_the_evaluated_model(recipe, tokens, tokenizer, tmp_path) -> None:
    model, result, tensors, config = exported(recipe, tokens, tokenizer, tmp_path / "m")
    assert result.format == W4A16
    group = parse_recipe(recipe).stages[-1].values["g"]
    assert config["quantization_config"] == {"quant_method": "gptq", "bits": 4, "group_size": group or -1,
                                             "desc_act": False, "sym": True, "checkpoint_format": "gptq", "lm_head": False}
    for path, linear in linears(model).items():
        parts = {k: tensors[f"{path}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx")}
        assert torch.equal(gptq_dequantize(parts), linear.weight.data), path
        assert torch.equal(unpack_rows(parts["qzeros"].T).unique(), torch.tensor([7]))  # v1: zero - 1


def test_sleb_export_has_fewer_layers_and_loads(tokens, tokenizer, tmp_path) -> None:
    model, result, _, config = exported("sleb:p=0.5,samples=2", tokens, tokenizer, tmp_path / "m")
    assert result.format == DENSE and config["num_hidden_layers"] == 1
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert len(loaded.model.layers) == 1
    with torch.no_grad():
        assert torch.equal(loaded(tokens[:2]).logits, model(tokens[:2]).logits)


def test_grids_vllm_cannot_run_are_exported_dense_with_notes(tokens, tokenizer, tmp_path) -> None:
    _, result, tensors, config = exported("rtn:w=6,a=6,kv=6", tokens, tokenizer, tmp_path / "m", "bfloat16")
    assert result.format == DENSE and not result.low_bit and "quantization_config" not in config
    assert any("activations at 6 bits" in n for n in result.notes) and any("KV cache" in n for n in result.notes)
    assert tensors["model.layers.0.mlp.down_proj.weight"].dtype == torch.bfloat16


def test_quarot_and_bad_dtype_are_refused(tokens, tokenizer, tmp_path) -> None:
    with pytest.raises(PqqpError, match="quarot's online rotations have no vLLM equivalent"):
        exported("quarot > rtn:w=8", tokens, tokenizer, tmp_path / "q")
    with pytest.raises(PqqpError, match="export dtype 'int8' is not accepted: accepted bfloat16, float16, float32"):
        exported("dense", tokens, tokenizer, tmp_path / "d", "int8")
