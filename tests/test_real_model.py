"""One end-to-end check on the real embedded model (SmolLM2-135M), kept small: ~30 s on 2 cores."""

from __future__ import annotations

import math

import pytest

from pqqp_bench.experiment import Experiment, Settings

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def experiment() -> Experiment:
    return Experiment(Settings(calib_samples=4, eval_tokens=1024, seqlen=256, progress=False))


def test_embedded_model_loads_as_fp32_llama(experiment: Experiment) -> None:
    model = experiment.loaded.model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert next(model.parameters()).dtype.is_floating_point and next(model.parameters()).element_size() == 4


def test_both_orders_on_the_embedded_model(experiment: Experiment) -> None:
    dense = experiment.run("dense").perplexity.ppl
    pq = experiment.run("wanda:p=0.5 > rtn:w=8,a=8,kv=8")
    qp = experiment.run("rtn:w=8,a=8,kv=8 > wanda:p=0.5")
    assert 1.0 < dense < 40.0  # a working LM on English prose; the collapsed models of W4A4 sit in the thousands
    for case in (pq, qp):
        assert math.isfinite(case.perplexity.ppl) and case.perplexity.ppl > dense
        assert case.report.achieved()["sparsity"] == pytest.approx(0.5, abs=0.5 / 576)
    assert pq.perplexity.ppl != qp.perplexity.ppl
