"""Windows follow the model's BOS convention (`bos: auto | always | never`), decided by what the tokenizer does;
perplexity on those windows agrees with lm-eval's own HF log-likelihoods on every architecture we support."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tokenizers import processors
from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from conftest import CHARS, char_tokenizer, tiny_gemma3, tiny_llama
from pqqp_bench.cli import main
from pqqp_bench.data import Corpus, adds_bos, bos_token, load_corpus
from pqqp_bench.errors import PqqpError
from pqqp_bench.experiment import Experiment, Settings
from pqqp_bench.measure import Bench
from pqqp_bench.store import Store
from pqqp_bench.suite import Suite

BOS = "<bos>"


def bos_tokenizer(post_processor: bool = True, report: bool | None = None) -> PreTrainedTokenizerFast:
    """The character tokenizer with a BOS token. `post_processor`: it adds BOS the way Gemma's and Llama's fast
    tokenizers do (a template); without one it names BOS but never adds it (SmolLM2, GPT-2). `report` sets the
    `add_bos_token` flag it reports, which a GGUF conversion can leave False while its template adds BOS."""
    tok = char_tokenizer()
    tok.add_special_tokens({"bos_token": BOS})
    if report is not None:
        tok.init_kwargs["add_bos_token"] = report
        try:
            tok.add_bos_token = report
        except AttributeError:
            pass
    if post_processor:
        bos = tok.convert_tokens_to_ids(BOS)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)])
    return tok


def resized(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    model.resize_token_embeddings(len(tokenizer))
    return model


def test_auto_prepends_bos_where_the_tokenizer_adds_it() -> None:
    gemma_like, gpt2_like = bos_tokenizer(), bos_tokenizer(post_processor=False)
    assert adds_bos(gemma_like) and not adds_bos(gpt2_like) and not adds_bos(char_tokenizer())
    assert bos_token(gemma_like, "auto") == gemma_like.bos_token_id
    assert bos_token(gpt2_like, "auto") is None
    assert bos_token(gpt2_like, "always") == gpt2_like.bos_token_id
    assert bos_token(gemma_like, "never") is None


def test_auto_decides_from_what_the_tokenizer_does_not_its_flag() -> None:
    """A converted tokenizer that reports add_bos_token=False but adds BOS through its template gets BOS."""
    tok = bos_tokenizer(report=False)
    assert tok("ab")["input_ids"][0] == tok.bos_token_id
    assert bos_token(tok, "auto") == tok.bos_token_id


def test_bad_bos_settings_say_what_is_accepted() -> None:
    with pytest.raises(PqqpError, match=r"^bos='sometimes' is not accepted: auto, always, never"):
        bos_token(bos_tokenizer(), "sometimes")
    with pytest.raises(PqqpError, match="bos='always' but the tokenizer has no BOS token"):
        bos_token(char_tokenizer(), "always")
    with pytest.raises(PqqpError, match="bos='yes' is not accepted"):
        Suite(bos="yes")


def test_bos_windows_hold_bos_then_consecutive_tokens() -> None:
    """BOS + seqlen-1 corpus tokens per window: the same tokens predicted per window as without BOS."""
    stream = torch.arange(100, 300)
    plain = Corpus("n", "numbers", stream, stream + 1000, "test")
    with_bos = Corpus("n", "numbers", stream, stream + 1000, "test", bos=7)
    windows = with_bos.evaluation_windows(10, 50)
    assert windows.shape == plain.evaluation_windows(10, 50).shape == (5, 10)
    assert (windows[:, 0] == 7).all()
    assert torch.equal(windows[:, 1:].reshape(-1), stream[:45] + 1000)
    calibration = with_bos.calibration_samples(4, 10, seed=0)
    assert (calibration[:, 0] == 7).all() and calibration.shape == (4, 10)
    for row in calibration[:, 1:]:
        assert row[0] % 9 == 100 % 9 and torch.equal(row, torch.arange(int(row[0]), int(row[0]) + 9))


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_tiny_models_get_their_windows(family: str, tmp_path: Path) -> None:
    """A tiny Gemma 3 and a tiny Llama saved with a BOS-adding tokenizer: `auto` starts every evaluation and
    calibration window with BOS, `never` does not, and the stored key and details say which."""
    tokenizer = bos_tokenizer()
    folder = tmp_path / family
    resized(tiny_gemma3() if family == "gemma3" else tiny_llama(), tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    corpus = tmp_path / "text.txt"
    corpus.write_text(("The quick brown fox jumps over the lazy dog. " * 40).strip())
    settings = Settings(model=str(folder), corpus=str(corpus), seqlen=32, calib_samples=2, eval_tokens=64,
                        device="cpu", progress=False)
    auto = Experiment(settings)
    assert (auto.windows[:, 0] == tokenizer.bos_token_id).all()
    assert (auto.calibration[:, 0] == tokenizer.bos_token_id).all()
    never = Experiment(Settings(**{**settings.__dict__, "bos": "never"}))
    assert not (never.windows[:, 0] == tokenizer.bos_token_id).any()
    suite = Suite(models=(str(folder),), corpus=str(corpus), seqlen=32, calib_samples=2, eval_tokens=64,
                  pruners=("magnitude",), quantizers=("rtn",), ratios=(0.3,), bits=(8,), curve_bits=(8,),
                  device="cpu", bootstrap=10)
    with Store(tmp_path / "s.sqlite") as store:
        bench = Bench(suite, store, progress=False)
        m = bench.measure(str(folder), "dense")
        assert m.key.split.endswith(",start=bos") and m.details["bos"] == "bos"
        wanda = suite.pruner("wanda", 0.3)
        assert bench.key(str(folder), wanda, 0).calibration.endswith(",start=bos")
        never_bench = Bench(Suite(**{**suite.__dict__, "bos": "never"}), store, progress=False)
        assert never_bench.key(str(folder), wanda, 0).split.endswith(",start=none")


def tiny_qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=len(CHARS) + 1, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=256, use_cache=False)).eval()


def tiny_mistral() -> MistralForCausalLM:
    torch.manual_seed(0)
    return MistralForCausalLM(MistralConfig(vocab_size=len(CHARS) + 1, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=256, sliding_window=None,
                                            use_cache=False)).eval()


FAMILIES = {"llama": tiny_llama, "gemma3": tiny_gemma3, "qwen2": tiny_qwen2, "mistral": tiny_mistral}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("adds", [True, False], ids=["bos", "no-bos"])
def test_pqqp_run_dense_agrees_with_lm_eval_loglikelihood(family: str, adds: bool, tmp_path: Path) -> None:
    """`pqqp run --dense` against lm-eval's HF model scoring the same windows token by token (each window's
    first id as the context, the rest as the continuation): the same perplexity to 1e-4 relative."""
    lm_eval_hf = pytest.importorskip("lm_eval.models.huggingface", reason="needs lm-eval: pip install 'pqqp-bench[lmeval]'")
    tokenizer = bos_tokenizer(post_processor=adds)
    tokenizer.eos_token = "<unk>"
    folder = tmp_path / family
    model = resized(FAMILIES[family](), tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    corpus = tmp_path / "text.txt"
    corpus.write_text(" ".join(f"Sentence {i} tells of item {i * 7 % 13} and its neighbours." for i in range(60)))
    out = tmp_path / "run.json"
    assert main(["run", "--model", str(folder), "--corpus", str(corpus), "--seqlen", "48", "--calib-samples", "1",
                 "--eval-tokens", "192", "--device", "cpu", "--recipe", "dense", "--json", str(out),
                 "--no-progress"]) == 0
    ours = json.loads(out.read_text())["results"][0]
    assert ours["perplexity"]["bos"] == ("bos" if adds else "none")

    # lm-eval loads the model and tokenizer from the folder itself; the windows are the ones pqqp run scored
    lm = lm_eval_hf.HFLM(pretrained=str(folder), batch_size=1, max_length=48, device="cpu")
    windows = load_corpus(str(corpus), AutoTokenizer.from_pretrained(folder), bos="auto").evaluation_windows(48, 192)
    assert bool((windows[:, 0] == tokenizer.bos_token_id).all()) == adds
    requests = [(("", ""), w[:1].tolist(), w[1:].tolist()) for w in windows]
    loglikelihoods = [ll for ll, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
    theirs = math.exp(-sum(loglikelihoods) / (windows.shape[0] * (windows.shape[1] - 1)))
    assert ours["ppl"] == pytest.approx(theirs, rel=1e-4)
