"""The compression-order grid of a suite, as tests (`pytest suites/`; the suite: `--pqqp-suite`, default
`suites/default.yaml`).

* `test_case`: every measurement asserts what must hold whatever the data: a finite metric, and the
  requested compression achieved (sparsity up to the rounding of p·in_features per row, or of p·n_blocks for
  block removal, once per pruning stage of the recipe; the requested bit widths).
* `test_progressive_intensity`: Hypothesis 1 for one (model, pruner, quantizer, p): A(Q->P) against the CER
  difference x = C*_P - C_Q, judged by `hypothesis.judge` (one bootstrap over the evaluation windows shared by
  all points, and over seeds where the suite has several) with three outcomes: supported (the slope of A in x
  is above 0 beyond noise) passes, violated (a pair drops beyond noise, or the slope is below 0 beyond noise)
  fails, inconclusive skips, with its evidence and the smallest slope the data could have detected. Points
  outside the practical regime (a ppl above `max_ppl_ratio` x dense, paper App. D.6) are shown and not judged.
* `test_progressive_intensity_pooled` (suites with several p): the same over every (p, B) point of one
  (model, pruner, quantizer), the paper's pooled view of Figs. 3 and 4, with the exponential fit.
* `test_interference` (suites with `interference: true`, Table 1): a structured pruner (SLEB) gives exactly
  A = 0 wherever both orders remove the same blocks (supported; a non-zero A there fails; no such width:
  inconclusive); an unstructured one is supported where some bit width interferes, |A| beyond noise
  (Bonferroni over the widths), else inconclusive.
* `test_pipeline` (suites with a `pipelines` section, paper §5.4, Figs. 7-10): for one family of general
  pipelines, A(first -> second) = M(first) - M(second) against the family's intensity gap x, where `first`
  puts the weaker stage earlier (a point at x = 0 comparing a recipe with itself anchors A = 0), with the same
  three outcomes.
* `test_order_search` (suites with an `order_search` section, App. D.7): every order of one method set is
  measured; prints the predictor's recommendation (`order_search.predictor`: by default the intensity rule,
  increasing CER from the single runs; or a probe on sampled blocks, predictors.py), its rank and its regret.
  `test_order_rule`: over all sets of a model, the predictor's mean regret is at most a random order's (the exact
  mean over all permutations) — the measured claim, which may fail; the figures say by how much.
* `test_throughput` (suites with a `throughput` section): the recipe's generation tokens/s (vLLM on its
  exported checkpoint, or the transformers fallback, which the row names) and its speed-up over dense, with the
  suite metric beside it; the figures go to the store and to pytest-benchmark's JSON (`extra_info`). With
  `backend: vllm` and no vLLM installed it skips with the reason.
"""

from __future__ import annotations

import math

import pytest

from pqqp_bench.errors import PqqpError
from pqqp_bench.hypothesis import INCONCLUSIVE, VIOLATED
from pqqp_bench.ordering import summarize
from pqqp_bench.sections.grid import verdict as report_verdict
from pqqp_bench.sections.interference import interference_verdict
from pqqp_bench.sections.order_search import order_evidence, order_outcome, predictor_name, summary_text
from pqqp_bench.sections.pipelines import pipeline_verdict


def test_case(pqqp_bench, pqqp_case) -> None:
    for m in pqqp_bench.measure_case(pqqp_case):
        ach, req = m.details["achieved"], m.details["requested"]
        assert math.isfinite(m.value), f"{pqqp_case.recipe}: perplexity {m.value}"
        assert not m.details.get("flags"), (  # a plugin's library broke what an earlier stage set (compress.reconcile)
            f"{pqqp_case.recipe}: achieved {ach}, flagged: " + "; ".join(m.details["flags"]))
        stages = max(1, sum(s.kind == "prune" for s in pqqp_case.recipe.stages))  # each rounds its count once
        assert 1.0 / req["prune"] == pytest.approx(1.0 - ach["sparsity"], abs=stages * m.details["sparsity_tolerance"]), (
            f"{pqqp_case.recipe}: requested C_P {req['prune']:.4f}, achieved sparsity {ach['sparsity']:.4f}")
        for stage in (s for s in pqqp_case.recipe.stages if s.kind == "quant"):
            if "avg" in stage.values:  # mixed precision: the parameter-weighted mean weight bits meet the budget
                assert float(ach["w_bits"]) <= stage.values["avg"] + 1e-9, f"{pqqp_case.recipe}: achieved {ach}"
                continue
            for k in ("w", "a", "kv"):  # a plugin may lack a (None: not quantized) or name a format (a=fp8)
                wanted = stage.values.get(k)
                if wanted is None or isinstance(wanted, int):
                    assert ach[f"{k}_bits"] == wanted, f"{pqqp_case.recipe}: {k} bits {wanted} asked, achieved {ach}"


def outcome(verdict, kind: str) -> None:
    """The pytest outcome of a verdict: violated fails, supported passes, inconclusive skips with its evidence."""
    if verdict.status == VIOLATED:
        pytest.fail(f"{kind} violated:\n{verdict.evidence()}")
    if verdict.status == INCONCLUSIVE:
        pytest.skip(f"inconclusive:\n{verdict.evidence()}")


def test_progressive_intensity(pqqp_analysis, pqqp_hypothesis) -> None:
    verdict = report_verdict(pqqp_analysis, pqqp_hypothesis)
    print(f"\n{pqqp_hypothesis.id}\n{verdict.evidence()}")
    outcome(verdict, "A(Q->P) non-decreasing in C*_P - C_Q")


def test_progressive_intensity_pooled(pqqp_analysis, pqqp_pooled) -> None:
    verdict = report_verdict(pqqp_analysis, pqqp_pooled)
    print(f"\n{pqqp_pooled.id}\n{verdict.evidence()}")
    outcome(verdict, "A(Q->P) non-decreasing in C*_P - C_Q over every (p, B)")


def test_interference(pqqp_analysis, pqqp_interference) -> None:
    verdict = interference_verdict(pqqp_analysis, pqqp_interference)
    print(f"\n{pqqp_interference.id}\n{verdict.evidence()}")
    outcome(verdict, "interference (Table 1, Finding 4)")


def test_throughput(pqqp_bench, pqqp_throughput, benchmark) -> None:
    try:
        backend = pqqp_bench.backend
    except PqqpError as exc:  # backend: vllm, and no vLLM here
        pytest.skip(str(exc))
    quality, m = benchmark.pedantic(pqqp_bench.throughput_case, args=(pqqp_throughput.model, pqqp_throughput.recipe),
                                    rounds=1, iterations=1)
    d = m.details
    benchmark.extra_info.update({
        "tokens_per_s": m.value, "speedup": d["speedup"], "dense_tokens_per_s": d["dense_tokens_per_s"],
        "backend": d["backend"], "backend_reason": d["backend_reason"], "served_as": d["served_as"],
        "low_bit": d["low_bit"], "kernels": d["kernels"], "quantization": d["quantization"],
        "elapsed": d["elapsed"], "version": d["version"], "notes": d["notes"],
        pqqp_bench.suite.metric: quality.value,
    })
    print(f"\n{pqqp_throughput.recipe}: {m.value:.1f} tokens/s ({backend.name}), x{d['speedup']:.2f} over dense, "
          f"{d['served_as']}; {pqqp_bench.suite.metric} {quality.value:.4g}")
    assert m.value > 0 and math.isfinite(m.value), f"{pqqp_throughput.recipe}: {m.value} tokens/s"
    settings = pqqp_bench.suite.section("throughput").settings
    assert d["prompt_tokens"] + d["output_tokens"] == d["requests"] * (settings.prompt_len + settings.output_len), (
        f"{pqqp_throughput.recipe}: generated lengths differ from the settings: {d}")
    assert math.isfinite(quality.value), f"{pqqp_throughput.recipe}: {pqqp_bench.suite.metric} {quality.value}"


def test_pipeline(pqqp_analysis, pqqp_pipeline) -> None:
    verdict = pipeline_verdict(pqqp_analysis, pqqp_pipeline)
    print(f"\n{pqqp_pipeline.id}\n{verdict.evidence()}")
    outcome(verdict, "A(first -> second) non-decreasing in x")


def test_order_search(pqqp_bench, pqqp_analysis, pqqp_order) -> None:
    result, details = order_outcome(pqqp_analysis, pqqp_order)
    print(f"\n{pqqp_order.id}\n{order_evidence(pqqp_analysis, pqqp_order, result, details)}")
    assert all(math.isfinite(m) for _, m in result.metrics), f"an order collapsed to a non-finite metric: {result}"
    methods = pqqp_order.methods
    reached = {methods.describe(o): pqqp_bench.measure(pqqp_order.model, methods.recipe(o)).details for o in methods.orders()}
    sparsity = [d["achieved"]["sparsity"] for d in reached.values()]
    tolerance = 2 * max(d["sparsity_tolerance"] for d in reached.values())
    assert max(sparsity) - min(sparsity) <= tolerance, (
        f"the orders reached different sparsities (orders compare only at equal ratios): "
        f"{ {k: round(d['achieved']['sparsity'], 4) for k, d in reached.items()} }")
    assert len({str(d["achieved"]["w_bits"]) for d in reached.values()}) == 1, (
        f"the orders reached different weight bits: { {k: d['achieved']['w_bits'] for k, d in reached.items()} }")


def test_order_rule(pqqp_bench, pqqp_analysis, pqqp_order_rule) -> None:
    model = pqqp_order_rule.model
    specs = [s for s in pqqp_bench.suite.section("order_search").specs(pqqp_bench.suite) if s.model == model]
    outcomes = [order_outcome(pqqp_analysis, s)[0] for s in specs]
    rows = "\n".join(f"{s.methods.name}: rank {r.rank}/{len(r.metrics)}, regret {r.regret:.4g}, random regret "
                     f"{r.random_regret:.4g}" for s, r in zip(specs, outcomes))
    summary = summarize(outcomes)
    predictor = predictor_name(pqqp_bench.suite)
    text = f"{model}: {summary_text(summary, predictor)}\n{rows}"
    print(f"\n{text}")
    assert summary.mean_regret <= summary.random_regret, (
        f"the order of {predictor} loses more than a random order on average:\n{text}")
