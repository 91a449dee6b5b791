"""SLEB block removal: greedy choice against a brute-force reference, a model that still runs, generates and
saves after removal (Llama, Gemma 3), and composition with layer-wise stages in both orders."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pqqp_bench.compress import compress, decoder_blocks
from pqqp_bench.errors import PqqpError
from pqqp_bench.methods import METHODS
from pqqp_bench.methods.sleb import ORIGIN, SLEB
from pqqp_bench.spec import parse_recipe

from conftest import tiny_gemma3, tiny_llama

CPU = torch.device("cpu")


def sharpen(model, factor: float = 5.0):
    """Scale every non-norm weight so each block clearly matters (random-init blocks barely change the output)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(factor)
    return model


def make_identity(model, index: int) -> None:
    """Zero the residual writes of block `index`: its output equals its input, so removing it changes nothing."""
    block = decoder_blocks(model)[index]
    block.self_attn.o_proj.weight.data.zero_()
    block.mlp.down_proj.weight.data.zero_()


def own_text(model, n: int = 8, length: int = 32, seed: int = 1) -> torch.Tensor:
    """Calibration windows sampled from the model itself, so removing a useful block raises their perplexity."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, model.config.vocab_size, (n, 1), generator=gen)
    with torch.no_grad():
        for _ in range(length - 1):
            probs = model(ids, use_cache=False).logits[:, -1].float().softmax(-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], dim=1)
    return ids


@pytest.fixture(scope="module")
def identity_llama_shared() -> tuple[torch.nn.Module, torch.Tensor]:
    model = sharpen(tiny_llama(layers=4))
    make_identity(model, 2)
    return model, own_text(model)


@pytest.fixture
def identity_llama(identity_llama_shared) -> tuple[torch.nn.Module, torch.Tensor]:
    """A sharpened 4-block Llama whose block 2 is the identity, with 8 windows of its own text (a fresh copy)."""
    return copy.deepcopy(identity_llama_shared[0]), identity_llama_shared[1]


@pytest.fixture(scope="module")
def gemma_shared() -> tuple[torch.nn.Module, torch.Tensor]:
    model = sharpen(tiny_gemma3(), 3.0)
    return model, own_text(model, n=4)


@pytest.fixture
def gemma(gemma_shared) -> tuple[torch.nn.Module, torch.Tensor]:
    """A sharpened tiny Gemma 3 (sliding, full, sliding, full) with 4 windows of its own text (a fresh copy)."""
    return copy.deepcopy(gemma_shared[0]), gemma_shared[1]


def without(model, position: int):
    """A deep copy of `model` with block `position` deleted, the plain way (config updated, no renumbering)."""
    copy_ = copy.deepcopy(model)
    del decoder_blocks(copy_)[position]
    types = getattr(copy_.config, "layer_types", None)
    copy_.config.num_hidden_layers -= 1
    if types is not None:
        copy_.config.layer_types = types[:position] + types[position + 1:]
    return copy_


@torch.no_grad()
def mean_nll(model, tokens: torch.Tensor) -> float:
    return sum(model(s.unsqueeze(0), labels=s.unsqueeze(0), use_cache=False).loss.item() for s in tokens) / len(tokens)


def brute_force(model, tokens: torch.Tensor, rounds: int) -> list[int]:
    """Reference SLEB: each round, full forward of every one-block-removed copy; original indices removed."""
    origin, removed = list(range(len(decoder_blocks(model)))), []
    for _ in range(rounds):
        scores = [mean_nll(without(model, j), tokens) for j in range(len(origin))]
        best = scores.index(min(scores))
        model = without(model, best)
        removed.append(origin.pop(best))
    return removed


def assert_runs_and_generates(model, tokens: torch.Tensor) -> None:
    with torch.no_grad():
        logits = model(tokens[:2], use_cache=False).logits
    assert logits.shape == (2, tokens.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()
    model.config.use_cache = True
    ids = tokens[:1, :8]
    cached = model.generate(ids, max_new_tokens=3, use_cache=True, do_sample=False)
    plain = model.generate(ids, max_new_tokens=3, use_cache=False, do_sample=False)
    assert cached.shape == (1, 11)
    assert torch.equal(cached, plain)  # a KV cache indexed by stale layer_idx would give other tokens or fail


def test_registered_with_kind_scope_ratio_and_parameters() -> None:
    cls = METHODS["sleb"]
    assert cls is SLEB and (cls.kind, cls.scope, cls.needs_calibration) == ("prune", "model", True)
    assert cls.granularity == "transformer block"
    recipe = parse_recipe("sleb:p=0.25 > rtn:w=4")
    assert recipe.ratios() == pytest.approx({"prune": 4 / 3, "quant": 4.0, "total": 16 / 3})
    assert recipe.order == "P>Q" and str(recipe) == "sleb:p=0.25 > rtn:w=4"
    assert parse_recipe("sleb:p=0.5,samples=2").stages[0].values == {"p": 0.5, "samples": 2}
    for bad in ("sleb", "sleb:p=1", "sleb:p=0.5,samples=0", "sleb:p=0.5,nm=2:4"):
        with pytest.raises(PqqpError):
            parse_recipe(bad)


@pytest.mark.parametrize("p, removed", [(0.25, 1), (0.5, 2), (0.75, 3)])
def test_removes_the_requested_blocks_and_still_runs(p: float, removed: int, identity_llama) -> None:
    model, tokens = identity_llama
    before = {id(b): i for i, b in enumerate(decoder_blocks(model))}
    result = SLEB(p=p).apply_model(model, tokens, CPU, 0)
    blocks = decoder_blocks(model)
    assert len(result["removed_blocks"]) == removed and result["kept_blocks"] == 4 - removed == len(blocks)
    assert model.config.num_hidden_layers == 4 - removed
    kept = [before[id(b)] for b in blocks]
    assert sorted(kept + result["removed_blocks"]) == [0, 1, 2, 3]
    assert getattr(model.config, ORIGIN) == kept
    assert [b.self_attn.layer_idx for b in blocks] == list(range(len(blocks)))
    assert_runs_and_generates(model, tokens)


def test_greedy_choice_equals_brute_force_and_takes_the_identity_block_first(identity_llama) -> None:
    model, tokens = identity_llama
    reference = brute_force(model, tokens, rounds=2)
    result = SLEB(p=0.5).apply_model(model, tokens, CPU, 0)
    assert result["removed_blocks"] == reference and reference[0] == 2
    assert result["calibration_ppl"][1] == pytest.approx(torch.tensor(mean_nll(model, tokens)).exp().item(), rel=1e-4)


def test_gemma3_keeps_each_block_with_its_own_attention_type(gemma) -> None:
    model, tokens = gemma
    types = list(model.config.layer_types)
    reference = brute_force(model, tokens, rounds=2)  # full forwards: the model's own masks and rotary per layer
    result = SLEB(p=0.5).apply_model(model, tokens, CPU, 0)
    assert result["removed_blocks"] == reference
    kept = [i for i in range(4) if i not in reference]
    assert model.config.layer_types == [types[i] for i in kept]
    for index, block in enumerate(decoder_blocks(model)):
        assert block.self_attn.layer_type == model.config.layer_types[index]
        assert block.self_attn.layer_idx == index
    assert_runs_and_generates(model, tokens)


def test_removal_saves_and_reloads(gemma, tmp_path: Path) -> None:
    model, tokens = gemma
    result = SLEB(p=0.25).apply_model(model, tokens, CPU, 0)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 3 and loaded.config.layer_types == model.config.layer_types
    assert getattr(loaded.config, ORIGIN) == [i for i in range(4) if i not in result["removed_blocks"]]
    with torch.no_grad():
        assert torch.equal(loaded(tokens, use_cache=False).logits, model(tokens, use_cache=False).logits)


@pytest.mark.parametrize("p, blocks", [(0.0, 4), (0.1, 4), (0.25, 2)])  # round(0.4) = round(0.5) = 0
def test_p_rounding_to_zero_blocks_removes_nothing(p: float, blocks: int) -> None:
    model = tiny_llama(layers=blocks)
    dense = copy.deepcopy(model.state_dict())
    result = SLEB(p=p).apply_model(model, None, CPU, 0)
    assert result["removed_blocks"] == [] and len(decoder_blocks(model)) == blocks
    assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())


def test_p_removing_every_block_is_refused(tokens) -> None:
    with pytest.raises(PqqpError, match="remove all 2"):
        SLEB(p=0.9).apply_model(tiny_llama(layers=2), tokens, CPU, 0)


def test_deterministic_and_uses_only_the_first_samples(tokens) -> None:
    runs = [SLEB(p=0.5, samples=2).apply_model(tiny_llama(layers=4), tokens, CPU, 7) for _ in range(2)]
    assert runs[0] == runs[1]
    assert SLEB(p=0.5).apply_model(tiny_llama(layers=4), tokens[:2], CPU, 7) == runs[0]
    more = SLEB(p=0.5).apply_model(tiny_llama(layers=4), tokens[:3], CPU, 7)
    assert more["calibration_ppl"] != runs[0]["calibration_ppl"]


def test_refuses_a_model_whose_logits_are_not_norm_then_lm_head(tokens) -> None:
    model = tiny_llama(layers=4)
    model.config.final_logit_softcapping = 0.5  # SLEB's head would soft-cap, Llama's forward does not
    with pytest.raises(PqqpError, match="cannot reproduce the logits"):
        SLEB(p=0.25).apply_model(model, tokens, CPU, 0)


def test_second_stage_reports_original_block_numbers(identity_llama) -> None:
    model, tokens = identity_llama
    before = {id(b): i for i, b in enumerate(decoder_blocks(model))}
    report = compress(model, parse_recipe("sleb:p=0.25 > sleb:p=0.34"), tokens, progress=False)
    first, second = (s["removed_blocks"] for s in report.structure)
    assert first == [2] and len(second) == 1
    assert sorted(before[id(b)] for b in decoder_blocks(model)) == sorted({0, 1, 2, 3} - {2, *second})
    assert report.achieved()["sparsity"] == pytest.approx(0.5)


def test_composes_with_rtn_in_both_orders_bit_identically(identity_llama) -> None:
    """RTN quantizes each weight independently of its inputs, so when both orders remove the same blocks the
    models must be identical: no interference (the paper's Table 1 case)."""
    model, tokens = identity_llama
    models, reports = {}, {}
    for recipe in ("sleb:p=0.25 > rtn:w=4,a=4", "rtn:w=4,a=4 > sleb:p=0.25"):
        models[recipe] = copy.deepcopy(model)
        reports[recipe] = compress(models[recipe], parse_recipe(recipe), tokens, progress=False)
    (pq, qp), (rpq, rqp) = models.values(), reports.values()
    assert rpq.structure[0]["removed_blocks"] == rqp.structure[0]["removed_blocks"] == [2]
    for report in (rpq, rqp):
        achieved = report.achieved()
        assert achieved["sparsity"] == pytest.approx(0.25) and (achieved["w_bits"], achieved["a_bits"]) == (4, 4)
        assert achieved["total"] == pytest.approx(4 / 0.75)
    a, b = pq.state_dict(), qp.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(pq(tokens, use_cache=False).logits, qp(tokens, use_cache=False).logits)
    assert_runs_and_generates(qp, tokens)


def test_gptq_then_sleb_counts_removed_blocks_as_pruned(identity_llama) -> None:
    model, tokens = identity_llama
    report = compress(model, parse_recipe("gptq:w=4 > sleb:p=0.5"), tokens, progress=False)
    removed = report.structure[0]["removed_blocks"]
    assert len(removed) == 2 and len(decoder_blocks(model)) == 2
    assert report.achieved()["sparsity"] == pytest.approx(len(removed) / 4)
    assert {r.w_bits for r in report.linears} == {4} and len(report.linears) == 2 * 7
    assert_runs_and_generates(model, tokens)


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_bounded_search_removes_the_same_blocks_with_the_same_perplexities(which, identity_llama, gemma) -> None:
    """The branch-and-bound rounds (the default) against every candidate scored in full: the same blocks, the
    same calibration perplexities (the winner is scored by the same code), fewer full-vocabulary heads."""
    from pqqp_bench.methods.sleb import select_blocks

    model, tokens = identity_llama if which == "llama" else gemma
    blocks = decoder_blocks(model)
    counts: list[tuple[int, int]] = []
    with torch.no_grad():
        bounded = select_blocks(model, blocks, tokens, 2, progress=False, counts=counts)
        full = select_blocks(model, blocks, tokens, 2, progress=False, top=None)
    assert bounded == full
    assert all(0 < exact <= total for exact, total in counts)
    assert sum(e for e, _ in counts) < sum(t for _, t in counts)  # some candidate never needed the full head


@torch.no_grad()
def test_lower_bound_is_below_the_exact_nll(gemma) -> None:
    from pqqp_bench.blocks import block_call_kwargs, capture_block_inputs
    from pqqp_bench.methods.sleb import OutputHead, candidate_states

    model, tokens = gemma
    blocks = decoder_blocks(model)
    calls = block_call_kwargs(model, blocks, tokens[0])
    inputs = capture_block_inputs(model, blocks, tokens)
    head = OutputHead.of(model)
    kept = list(range(len(blocks)))
    for top in (1, 4, 64):
        ids = head.candidates(candidate_states(blocks, calls, kept, inputs)[0], tokens, top)
        for final in candidate_states(blocks, calls, kept, inputs):
            assert head.lower_bound(final, tokens, ids) <= head.nll(final, tokens) * (1 + 1e-6)
    everything = [torch.arange(model.config.vocab_size)] * len(tokens)  # the whole vocabulary: the bound is exact
    final = candidate_states(blocks, calls, kept, inputs)[1]
    assert head.lower_bound(final, tokens, everything) == pytest.approx(head.nll(final, tokens), rel=1e-5)
