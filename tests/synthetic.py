"""Synthetic results stores for the leaderboard and gate tests: made-up but self-consistent measurements.

Each suite case gets the details `Bench.compute` stores (order, requested and achieved ratios, per-window NLLs
whose perplexity is the stored value, timings), so the report code sees what a real run would give, in
milliseconds instead of minutes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from pqqp_bench.environment import numbers_environment
from pqqp_bench.measure import Bench
from pqqp_bench.spec import Recipe
from pqqp_bench.store import Measurement, Store
from pqqp_bench.suite import Suite

Perplexity = Callable[[Recipe, int], float]


def toy_ppl(recipe: Recipe, seed: int) -> float:
    """Dense 10; pruning and quantization each multiply it; quantize-first is 2% better (a positive A(Q->P))."""
    ppl = 10.0
    for stage in recipe.methods:
        ppl *= 1 + 2 * stage.values["p"] ** 2 if stage.kind == "prune" else 1 + 64 / 2 ** stage.values["w"]
    if recipe.order == "Q>P":
        ppl *= 0.98
    return ppl * (1 + 0.003 * max(seed, 0))


def details(recipe: Recipe, ppl: float, suite: Suite) -> tuple[float, dict]:
    """Per-window NLL sums around log(ppl)·(seqlen-1), and the perplexity they give back exactly."""
    windows, predicted = suite.eval_tokens // suite.seqlen, suite.seqlen - 1
    nll = [math.log(ppl) * predicted * (1 + 0.02 * (i - (windows - 1) / 2)) for i in range(windows)]
    value = math.exp(sum(nll) / (windows * predicted))
    p = next((s.values["p"] for s in recipe.methods if s.kind == "prune"), 0.0)
    bits = next((s.values["w"] for s in recipe.methods if s.kind == "quant"), None)
    prune, quant = 1 / (1 - p), 16 / bits if bits else 1.0
    achieved = {"sparsity": p, "zero_fraction": p, "w_bits": bits, "a_bits": bits, "kv_bits": bits,
                "prune": prune, "quant": quant, "total": prune * quant}
    return value, {
        "order": recipe.order, "requested": {"prune": prune, "quant": quant, "total": prune * quant},
        "achieved": achieved, "sparsity_tolerance": 0.01, "structure": [], "window_nll": nll,
        "tokens": windows * predicted, "windows": windows, "seqlen": suite.seqlen,
        "convention": "token-level", "seconds": {"compress": 1.5, "evaluate": 2.0}, "device": "cpu",
        "environment": numbers_environment(),
    }


def fill(bench: Bench, ppl: Perplexity = toy_ppl, skip: Callable[[Recipe], bool] = lambda r: False) -> int:
    """Store every case of the bench's suite (each seed that can change it), except those `skip` names."""
    count = 0
    for case in bench.suite.cases():
        if skip(case.recipe):
            continue
        for seed in bench.seeds_for(case.recipe):
            key = bench.key(case.model, case.recipe, seed)
            value, info = details(case.recipe, ppl(case.recipe, key.seed), bench.suite)
            count += bench.store.put(Measurement(key, value, info, created="2026-01-01T00:00:00+00:00"), replace=True)
    return count


def fake_model(folder: Path) -> str:
    """A model folder that fingerprints like a real one (a config.json) and whose weights are never loaded; its
    tokenizer (the character one, no BOS) is, for the keys' window start."""
    from conftest import char_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    char_tokenizer().save_pretrained(folder)
    return str(folder)


def suite_yaml(path: Path, model: str, corpus: str = "pydoc", **extra: object) -> Path:
    """A small two-pruner, two-quantizer suite YAML with three bit widths (so Fig. 3's fit has 3 points)."""
    keys = {"models": f"['{model}']", "corpus": f"'{corpus}'", "seqlen": 32, "eval_tokens": 256, "calib_samples": 4,
            "pruners": "[magnitude, wanda]", "quantizers": "[rtn, 'quarot > rtn']", "ratios": "[0.2, 0.3]",
            "bits": "[4, 6, 8]", "curve_bits": "[4, 6, 8]", "bootstrap": 50, "max_ppl_ratio": 100, **extra}
    path.write_text("".join(f"{k}: {v}\n" for k, v in keys.items()))  # `extra` replaces a key: YAML refuses twins
    return path


def open_bench(suite: Suite, store: Path) -> Bench:
    return Bench(suite, Store(store), progress=False, lookup_only=True)
