"""The default suite: one pruner and one quantizer in both orders on the embedded model (or `--pqqp-model`).

    pytest suites/                                        # SmolLM2-135M on pydoc, about 8 minutes on 2 idle cores
    pytest suites/ --pqqp-model meta-llama/Meta-Llama-3-8B --pqqp-corpus wikitext2 --pqqp-device cuda

Every case asserts what must hold whatever the data: a finite metric and the requested compression achieved
(sparsity exact up to one weight per row, the requested bit widths). The order test asserts that the two
orders really produce different models, and reports A(Q->P) = M(P o Q) - M(Q o P) with M = -perplexity.
"""

from __future__ import annotations

import math

import pytest

from pqqp_bench.compress import block_linears, decoder_blocks
from pqqp_bench.spec import parse_recipe

PRUNER = "wanda:p=0.5"
QUANTIZER = "rtn:w=4,a=4,kv=4"
JOINT = f"{PRUNER} > {QUANTIZER}"
CASES = ["dense", PRUNER, QUANTIZER, JOINT, str(parse_recipe(JOINT).reversed())]


def narrowest_row(model) -> int:
    return min(lin.in_features for block in decoder_blocks(model) for lin in block_linears(block).values())


@pytest.mark.pqqp
@pytest.mark.parametrize("recipe", CASES)
def test_case(pqqp_run, pqqp_experiment, recipe: str) -> None:
    case = pqqp_run(recipe)
    stages = parse_recipe(recipe).stages
    achieved = case.report.achieved()
    assert math.isfinite(case.perplexity.ppl), f"{recipe}: perplexity {case.perplexity.ppl}"
    requested = sum(s.sparsity for s in stages if s.kind == "prune")
    # p * in_features is rounded to whole weights per row: exact up to half a weight of the narrowest row
    tolerance = 0.5 / narrowest_row(pqqp_experiment.loaded.model)
    assert achieved["sparsity"] == pytest.approx(requested, abs=tolerance), achieved
    for stage in (s for s in stages if s.kind == "quant"):
        expected = tuple(stage.values[k] for k in ("w", "a", "kv"))
        assert (achieved["w_bits"], achieved["a_bits"], achieved["kv_bits"]) == expected, achieved
    if stages:
        assert case.perplexity.ppl > pqqp_run("dense").perplexity.ppl, "compression improved on the dense model"


@pytest.mark.pqqp
def test_order_changes_the_model(pqqp_run) -> None:
    pq, qp = pqqp_run(JOINT), pqqp_run(CASES[-1])
    advantage = -qp.perplexity.ppl - (-pq.perplexity.ppl)
    print(f"\nA(Q->P) = M(Q>P) - M(P>Q) = {advantage:+.4f} (M = -perplexity; Q>P is {CASES[-1]})")
    assert pq.perplexity.ppl != qp.perplexity.ppl
