"""Staged composition and stage reuse: both schedules keep the order invariants, a case computed from a cached
prefix ends bit for bit where a run from scratch ends, and a grid reuses the prefixes it computed."""

from __future__ import annotations

import copy

import pytest
import torch

from pqqp_bench.compress import (CompressionState, block_linears, compress, cut_points, decoder_blocks, keeps_reference,
                                 passes, schedule_matters)
from pqqp_bench.errors import PqqpError
from pqqp_bench.evaluate import perplexity
from pqqp_bench.prefixes import PrefixCache, cache_size, prefix_key, trie_order, wanted_prefixes
from pqqp_bench.spec import Recipe, parse_recipe

from conftest import tiny_gemma3, tiny_llama

JOINT = [
    "wanda:p=0.3 > rtn:w=4,a=6,kv=6",
    "rtn:w=4,a=6,kv=6 > wanda:p=0.3",
    "sparsegpt:p=0.3 > gptq:w=4",
    "gptq:w=4 > sparsegpt:p=0.3",
    "quarot > rtn:w=4,a=4,kv=4 > sparsegpt:p=0.3",
    "quarot > sparsegpt:p=0.3 > rtn:w=4,a=4,kv=4",
    "magnitude:p=0.2 > sleb:p=0.5 > rtn:w=4",
    "rtn:w=4 > magnitude:p=0.3",
]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module, windows: torch.Tensor) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    pa, pb = perplexity(a, windows, progress=False), perplexity(b, windows, progress=False)
    assert pa.window_nll == pb.window_nll and pa.ppl == pb.ppl


@pytest.mark.parametrize("schedule", ["staged", "fused"])
@pytest.mark.parametrize("text", JOINT)
def test_invariants_hold_in_both_schedules(text: str, schedule: str, tokens: torch.Tensor) -> None:
    """P->Q keeps the mask (pruned weights stay zero), Q->P keeps the grid: `record` checks both and raises."""
    model = tiny_llama(layers=4)
    report = compress(model, parse_recipe(text), tokens, progress=False, schedule=schedule)
    achieved = report.achieved()
    if "wanda" in text or "sparsegpt" in text:
        assert achieved["sparsity"] == pytest.approx(0.3, abs=0.02)
    assert achieved["w_bits"] == 4
    for block, work_grids in zip(decoder_blocks(model), range(len(decoder_blocks(model)))):
        for name, linear in block_linears(block).items():
            grid = report.grids[f"blocks.{work_grids}.{name}"]
            assert grid.holds(linear.weight.data), name


def test_staged_is_the_composition_of_stages(tokens: torch.Tensor) -> None:
    """Staged `f1 > f2` runs f1 over the whole model first: the state after its first pass is the single-stage
    recipe's own result, and the end is the recipe's result."""
    recipe = parse_recipe("wanda:p=0.3 > gptq:w=4")
    whole, alone = tiny_llama(layers=3), tiny_llama(layers=3)
    compress(whole, recipe, tokens, progress=False)
    compress(alone, parse_recipe("wanda:p=0.3"), tokens, progress=False)
    states: list[CompressionState] = []
    compress(tiny_llama(layers=3), recipe, tokens, progress=False, at_cut=lambda s: states.append(s.clone()))
    assert [s.done for s in states] == [1, 2]
    assert_same_model(states[0].model, alone, tokens[:2])
    assert_same_model(states[1].model, whole, tokens[:2])


def test_fused_differs_only_where_a_calibrated_stage_is_followed(tokens: torch.Tensor) -> None:
    for text, matters in [("wanda:p=0.3 > rtn:w=4", True), ("rtn:w=4 > wanda:p=0.3", False),
                          ("magnitude:p=0.3 > rtn:w=4", False), ("gptq:w=4 > sparsegpt:p=0.3", True),
                          ("quarot > rtn:w=4 > gptq:w=4", False), ("sparsegpt:p=0.2", False)]:
        recipe = parse_recipe(text)
        assert schedule_matters(recipe.stages) is matters, text
        if not matters:
            a, b = tiny_llama(layers=3), tiny_llama(layers=3)
            compress(a, recipe, tokens, progress=False, schedule="staged")
            compress(b, recipe, tokens, progress=False, schedule="fused")
            assert_same_model(a, b, tokens[:2])
    a, b = tiny_llama(layers=3), tiny_llama(layers=3)
    compress(a, parse_recipe("wanda:p=0.3 > rtn:w=4,a=4"), tokens, progress=False, schedule="staged")
    compress(b, parse_recipe("wanda:p=0.3 > rtn:w=4,a=4"), tokens, progress=False, schedule="fused")
    assert any(not torch.equal(x, y) for x, y in zip(weights(a).values(), weights(b).values()))


def test_passes_and_cut_points() -> None:
    recipe = parse_recipe("quarot > wanda:p=0.2 > rtn:w=4 > sleb:p=0.5 > gptq:w=4")
    assert [len(p) for p in passes(recipe.stages, "staged")] == [1, 1, 1, 1, 1]
    assert [len(p) for p in passes(recipe.stages, "fused")] == [1, 2, 1, 1]
    assert cut_points(recipe.stages, "staged") == [1, 2, 3, 4, 5]
    assert cut_points(recipe.stages, "fused") == [1, 3, 4, 5]
    assert keeps_reference(parse_recipe("rtn:w=4 > wanda:p=0.2").stages, "staged")
    assert not keeps_reference(parse_recipe("rtn:w=4 > wanda:p=0.2").stages, "fused")
    assert not keeps_reference(parse_recipe("wanda:p=0.2 > rtn:w=4").stages, "staged")
    with pytest.raises(PqqpError, match="unknown schedule 'interleaved': accepted staged, fused"):
        passes(recipe.stages, "interleaved")


@pytest.mark.parametrize("schedule", ["staged", "fused"])
@pytest.mark.parametrize("text", JOINT + ["rtn:w=4 > wanda:p=0.2 > magnitude:p=0.2"])
def test_resumed_from_every_cut_is_bit_identical(text: str, schedule: str, tokens: torch.Tensor) -> None:
    """From the state at any pass end, the rest of the recipe ends exactly where the run from scratch ends:
    weights, per-window NLLs, the report's achieved ratios and structure."""
    recipe = parse_recipe(text)
    scratch = tiny_llama(layers=4)
    states: list[CompressionState] = []
    torch.manual_seed(0)
    full = compress(scratch, recipe, tokens, progress=False, schedule=schedule, keep_reference=True,
                    at_cut=lambda s: states.append(s.clone()))
    assert [s.done for s in states] == cut_points(recipe.stages, schedule)
    for state in states[:-1]:
        start = state.clone()
        torch.manual_seed(123)  # the state's own random state is restored
        report = compress(start.model, recipe, tokens, progress=False, schedule=schedule, start=start,
                          keep_reference=True)
        assert_same_model(start.model, scratch, tokens[:3])
        assert report.achieved() == full.achieved()
        assert report.structure == full.structure


def test_state_refuses_a_prefix_of_another_recipe(tokens: torch.Tensor) -> None:
    states: list[CompressionState] = []
    compress(tiny_llama(), parse_recipe("wanda:p=0.2 > rtn:w=4"), tokens, progress=False, at_cut=states.append)
    with pytest.raises(RuntimeError, match="not a prefix"):
        compress(tiny_llama(), parse_recipe("wanda:p=0.2 > rtn:w=4"), tokens, progress=False, start=states[0])


def test_cache_is_bounded_least_recently_used_first(tokens: torch.Tensor) -> None:
    states: list[CompressionState] = []
    compress(tiny_llama(), parse_recipe("wanda:p=0.2 > rtn:w=4 > magnitude:p=0.1"), tokens, progress=False,
             keep_reference=True, at_cut=lambda s: states.append(s.clone()))
    size = max(s.nbytes() for s in states)
    cache = PrefixCache(gib=2.5 * size / 1024 ** 3)
    keys = [prefix_key(("m",), Recipe(()), f"k{i}") for i in range(3)]
    for key, state in zip(keys, states):
        cache.offer(key, state, True)
    assert list(cache.entries) == keys[1:] and cache.used() <= cache.capacity
    assert cache.longest([(1, keys[0]), (2, keys[1])], True).done == states[1].done
    cache.offer(keys[0], states[0], True)  # evicts keys[2], the least recently used
    assert list(cache.entries) == [keys[1], keys[0]]
    assert cache.longest([(5, ("x",))], False) is None and cache.misses == 1
    off = PrefixCache(gib=0)
    off.offer(keys[0], states[0], True)
    assert not off.entries
    for bad in ("-1", "lots", "nan", "inf"):
        with pytest.raises(PqqpError, match="accepted a size in GiB >= 0"):
            cache_size(bad)


def test_a_state_without_reference_does_not_serve_a_later_pruner(tokens: torch.Tensor) -> None:
    states: list[CompressionState] = []
    compress(tiny_llama(), parse_recipe("rtn:w=4"), tokens, progress=False, at_cut=states.append)
    cache = PrefixCache(gib=1.0)
    key = prefix_key(("m",), parse_recipe("rtn:w=4"), "staged")
    cache.offer(key, states[0], False)
    assert cache.longest([(1, key)], need_reference=True) is None
    assert cache.longest([(1, key)], need_reference=False) is not None


def test_wanted_prefixes_and_trie_order() -> None:
    recipes = [parse_recipe(t) for t in ["dense", "wanda:p=0.2", "rtn:w=4", "wanda:p=0.2 > rtn:w=4",
                                          "rtn:w=4 > wanda:p=0.2", "quarot > rtn:w=4", "quarot > rtn:w=4 > wanda:p=0.2",
                                          "quarot > wanda:p=0.2 > rtn:w=4", "quarot > wanda:p=0.2 > rtn:w=6"]]
    wanted = wanted_prefixes(recipes, "staged")
    assert wanted == {parse_recipe("wanda:p=0.2").key: False, parse_recipe("rtn:w=4").key: True,
                      parse_recipe("quarot").key: True, parse_recipe("quarot > rtn:w=4").key: True,
                      parse_recipe("quarot > wanda:p=0.2").key: False}
    order = [str(recipes[i]) for i in trie_order(recipes)]
    assert order[0] == "dense"
    for i, text in enumerate(order):  # every prefix comes before what extends it
        for after in order[i + 1:]:
            assert not text.startswith(after + " >"), (text, after)
    assert order.index("quarot > rtn:w=4") + 1 == order.index("quarot > rtn:w=4 > wanda:p=0.2")
    # fused: a fused run is no cut, so `wanda > rtn` does not start from `wanda`
    assert parse_recipe("wanda:p=0.2").key not in wanted_prefixes(recipes, "fused")


def test_gemma3_resumed_is_bit_identical(tokens: torch.Tensor) -> None:
    recipe = parse_recipe("rtn:w=4,a=6,kv=6 > sparsegpt:p=0.3")
    scratch = tiny_gemma3()
    states: list[CompressionState] = []
    compress(scratch, recipe, tokens, progress=False, at_cut=lambda s: states.append(s.clone()))
    start = states[0].clone()
    compress(start.model, recipe, tokens, progress=False, start=start)
    assert_same_model(start.model, scratch, tokens[:2])


def test_deepcopy_of_a_state_keeps_hooks_on_the_copy(tokens: torch.Tensor) -> None:
    """Activation fake-quant hooks and KV quantizers travel with the copy, and the original stays usable."""
    states: list[CompressionState] = []
    model = tiny_llama()
    compress(model, parse_recipe("rtn:w=8,a=4,kv=4"), tokens, progress=False, at_cut=lambda s: states.append(s.clone()))
    copied = states[0].model
    assert copied is not model
    assert_same_model(copy.deepcopy(model), copied, tokens[:2])
    plain = tiny_llama()
    assert perplexity(plain, tokens[:2], progress=False).ppl != perplexity(copied, tokens[:2], progress=False).ppl


def grid_suite(model_dir, text_file, **extra) -> "Suite":
    from pqqp_bench.suite import Suite

    return Suite(models=(str(model_dir),), corpus=str(text_file), seqlen=32, calib_samples=4, eval_tokens=128,
                 pruners=("wanda", "sparsegpt"), quantizers=("rtn", "quarot > gptq"), ratios=(0.3,), bits=(4, 8),
                 curve_bits=(4, 8), bootstrap=50, device="cpu", **extra)


def test_a_grid_from_cached_prefixes_stores_what_it_stores_from_scratch(model_dir, text_file, tmp_path) -> None:
    """Every case of a grid, computed in the suite's order with the prefix cache and without it: the same value
    and per-window NLLs, bit for bit; the joint cases did start from cached prefixes."""
    from pqqp_bench.measure import Bench
    from pqqp_bench.store import Store

    stored = {}
    for name, size in (("cached", 4.0), ("scratch", 0.0)):
        suite = grid_suite(model_dir, text_file, prefix_cache=size)
        with Store(tmp_path / f"{name}.sqlite") as store:
            bench = Bench(suite, store, progress=False)
            stored[name] = {(c.recipe.key, m.key.seed): m for c in suite.cases() for m in bench.measure_case(c)}
            cache = bench.experiments[str(model_dir)].prefixes
            if size:
                reused = [m.details.get("reused_prefix") for m in stored[name].values()]
                joint = [c for c in suite.cases() if c.role == "joint"]
                assert sum(1 for r in reused if r) >= len(joint) and cache.hits >= len(joint)
                assert "quarot" in reused and cache.used() <= cache.capacity
            else:
                assert cache.hits == 0 and not cache.entries
    assert stored["cached"].keys() == stored["scratch"].keys()
    for key, measured in stored["cached"].items():
        other = stored["scratch"][key]
        assert measured.value == other.value, measured.key.recipe
        assert measured.details["window_nll"] == other.details["window_nll"], measured.key.recipe


def test_schedule_is_in_the_key_only_where_it_can_change_the_model(model_dir, text_file, tmp_path) -> None:
    from pqqp_bench.measure import Bench
    from pqqp_bench.store import Store

    staged, fused = grid_suite(model_dir, text_file), grid_suite(model_dir, text_file, schedule="fused")
    with Store(tmp_path / "s.sqlite") as store:
        a, b = Bench(staged, store, progress=False), Bench(fused, store, progress=False)
        model = str(model_dir)
        for text, differs in [("wanda:p=0.3 > rtn:w=4", True), ("rtn:w=4 > wanda:p=0.3", False),
                              ("wanda:p=0.3", False), ("quarot > gptq:w=4 > sparsegpt:p=0.3", True)]:
            ka, kb = a.key(model, parse_recipe(text), 0), b.key(model, parse_recipe(text), 0)
            assert (ka.digest() != kb.digest()) is differs, text
            assert ("schedule=staged" in ka.calibration) is differs
        with pytest.raises(PqqpError, match="unknown schedule 'both': accepted staged, fused"):
            grid_suite(model_dir, text_file, schedule="both")
        with pytest.raises(PqqpError, match="bad prefix cache size -2"):
            grid_suite(model_dir, text_file, prefix_cache=-2)
        assert staged.settings(model, prefix_cache=0.0).prefix_cache == 0.0  # a caller may override a suite key
        assert fused.settings(model).schedule == "fused" and staged.settings(model).prefix_cache == 2.0


DISK = ["quarot > rtn:w=4,a=4,kv=4 > sparsegpt:p=0.3", "magnitude:p=0.2 > sleb:p=0.5 > rtn:w=4",
        "rtn:w=4,a=6,kv=6 > wanda:p=0.3", "gptq:w=4,g=16 > sparsegpt:p=0.3", "quarot > sleb:p=0.25 > gptq:w=4"]


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("text", DISK)
def test_a_state_written_to_disk_resumes_bit_identically(text, build, tokens, tmp_path) -> None:
    """Every pass end written as safetensors + JSON, rebuilt on a copy of the dense model, then resumed: the same
    model, per-window NLLs, achieved ratios and structure as the run from scratch."""
    from pqqp_bench.prefix_files import load_state, save_state

    if "quarot" in text and build is tiny_gemma3:
        text = text.replace("quarot > ", "")  # QuaRot refuses Gemma's post-norms
    recipe = parse_recipe(text)
    dense = build() if build is tiny_gemma3 else build(layers=4)
    scratch = copy.deepcopy(dense)
    states: list[CompressionState] = []
    full = compress(scratch, recipe, tokens, progress=False, keep_reference=True,
                    at_cut=lambda s: states.append(s.clone()))
    for state in states[:-1]:
        folder = save_state(state, tmp_path / f"entry-{state.done}")
        start = load_state(folder, dense)
        assert start.done == state.done
        report = compress(start.model, recipe, tokens, progress=False, start=start, keep_reference=True)
        assert_same_model(start.model, scratch, tokens[:3])
        assert report.achieved() == full.achieved() and report.structure == full.structure


def test_disk_cache_serves_another_process_and_repairs_a_corrupt_entry(tokens, tmp_path) -> None:
    dense = tiny_llama(layers=3)
    recipe = parse_recipe("quarot > rtn:w=4,a=4,kv=4 > wanda:p=0.3")
    key = prefix_key(("m",), Recipe(recipe.stages[:2]), "staged")
    writer = PrefixCache(gib=1.0, folder=tmp_path / "cache")
    states: list[CompressionState] = []
    compress(copy.deepcopy(dense), recipe, tokens, progress=False, keep_reference=True,
             at_cut=lambda s: states.append(s.clone()))
    writer.offer(key, states[1], True, recipe.stages[:2])
    assert writer.written == 1
    reader = PrefixCache(gib=1.0, folder=tmp_path / "cache")  # another process: an empty memory
    state = reader.longest([(2, key)], True, dense)
    assert state is not None and reader.read_from_disk == 1 and state.done == 2
    entry = next(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    tensors = entry / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-100])  # truncated
    with pytest.warns(UserWarning, match="unreadable .* removed, recomputing"):
        assert PrefixCache(gib=1.0, folder=tmp_path / "cache").longest([(2, key)], True, dense) is None
    assert not entry.exists()


def test_methods_the_disk_form_cannot_hold_stay_in_memory(tokens, tmp_path) -> None:
    from pqqp_bench.prefix_files import writable

    assert writable(parse_recipe("quarot > gptq:w=4 > sleb:p=0.2").stages)
    assert not writable(parse_recipe("share:r=0.5").stages)
    assert not writable(parse_recipe("rtn:w=4 > lora:steps=1").stages)


def test_xdist_shards_are_runs_of_consecutive_cases() -> None:
    from types import SimpleNamespace

    from pqqp_bench.pytest_plugin import case_groups

    cases = [SimpleNamespace(model="a") for _ in range(7)] + [SimpleNamespace(model="b") for _ in range(3)]
    assert case_groups(cases, 4) == ["a#0"] * 4 + ["a#1"] * 3 + ["b#0"] * 2 + ["b#1"]
    assert case_groups(cases, 1) == ["a#0"] * 7 + ["b#0"] * 3


def test_a_grid_writes_its_prefixes_to_disk_and_a_new_process_starts_from_them(model_dir, text_file, tmp_path) -> None:
    """With `prefix_cache_dir`, a grid's wanted prefixes are written there; a second bench (a new process: empty
    memory, fresh store) starts its cases from them and stores the same values and per-window NLLs."""
    from pqqp_bench.measure import Bench
    from pqqp_bench.store import Store

    suite = grid_suite(model_dir, text_file, prefix_cache_dir=str(tmp_path / "prefixes"))
    stored = []
    for run in ("first", "second"):
        with Store(tmp_path / f"{run}.sqlite") as store:
            bench = Bench(suite, store, progress=False)
            stored.append({c.recipe.key: m for c in suite.cases() for m in bench.measure_case(c)})
            cache = bench.experiments[str(model_dir)].prefixes
        if run == "first":
            assert cache.written > 0 and cache.read_from_disk == 0
    assert cache.read_from_disk > 0
    for key, measured in stored[0].items():
        assert measured.value == stored[1][key].value
        assert measured.details["window_nll"] == stored[1][key].details["window_nll"]
