"""The compression-order grid of a suite, as tests (`pytest suites/`; the suite: `--pqqp-suite`, default
`suites/default.yaml`).

* `test_case`: every measurement asserts what must hold whatever the data: a finite metric, and the
  requested compression achieved (sparsity up to the rounding of p·in_features per row, or of p·n_blocks for
  block removal; the requested bit widths).
* `test_progressive_intensity`: Hypothesis 1 for one (model, pruner, quantizer, p): A(Q->P) is
  non-decreasing in the CER difference C*_P - C_Q, up to `noise_sigmas` standard errors of the paired
  bootstrap (over evaluation windows, and over seeds where the suite has several). Points outside the
  practical regime (a ppl above `max_ppl_ratio` x dense, paper App. D.6) are shown and not judged. A failure
  prints the points and the pairs that break monotonicity.
* `test_interference` (suites with `interference: true`, Table 1): a structured pruner (SLEB) gives exactly
  A = 0 wherever both orders remove the same blocks; an unstructured one shows interference (|A| beyond noise
  at some bit width).
* `test_throughput` (suites with a `throughput` section): the recipe's generation tokens/s (vLLM on its
  exported checkpoint, or the transformers fallback, which the row names) and its speed-up over dense, with the
  suite metric beside it; the figures go to the store and to pytest-benchmark's JSON (`extra_info`). With
  `backend: vllm` and no vLLM installed it skips with the reason.
"""

from __future__ import annotations

import math

import pytest

from pqqp_bench.errors import PqqpError
from pqqp_bench.hypothesis import monotonicity, structured_zero_interference
from pqqp_bench.report import Verdict, interference_rows


def test_case(pqqp_bench, pqqp_case) -> None:
    for m in pqqp_bench.measure_case(pqqp_case):
        ach, req = m.details["achieved"], m.details["requested"]
        assert math.isfinite(m.value), f"{pqqp_case.recipe}: perplexity {m.value}"
        assert 1.0 / req["prune"] == pytest.approx(1.0 - ach["sparsity"], abs=m.details["sparsity_tolerance"]), (
            f"{pqqp_case.recipe}: requested C_P {req['prune']:.4f}, achieved sparsity {ach['sparsity']:.4f}")
        for stage in (s for s in pqqp_case.recipe.stages if s.kind == "quant"):
            wanted = tuple(stage.values[k] for k in ("w", "a", "kv"))
            assert (ach["w_bits"], ach["a_bits"], ach["kv_bits"]) == wanted, f"{pqqp_case.recipe}: achieved {ach}"


def test_progressive_intensity(pqqp_bench, pqqp_hypothesis) -> None:
    points = [point for point, _ in pqqp_bench.hypothesis_points(pqqp_hypothesis)]
    verdict = Verdict(pqqp_hypothesis, monotonicity(points, sigmas=pqqp_bench.suite.noise_sigmas),
                      pqqp_bench.suite.noise_sigmas)
    print(f"\n{pqqp_hypothesis.id}\n{verdict.evidence()}")
    if verdict.result.n_points < 2:
        pytest.skip(f"{verdict.result.n_points} point(s) in the practical regime, at least 2 needed:\n"
                    f"{verdict.evidence()}")
    assert verdict.result.holds, f"A(Q->P) is not monotone in C*_P - C_Q:\n{verdict.evidence()}"


def test_interference(pqqp_bench, pqqp_interference) -> None:
    rows = interference_rows(pqqp_bench, pqqp_interference)
    table = "\n".join(f"C_Q {c_q:.2f} (B={bits}): A(Q->P) = {a:+.6g} ± {se:.2g}, same blocks removed: {same}"
                      for c_q, bits, _, a, same, se in rows)
    print(f"\n{pqqp_interference.id}\n{table}")
    structured = any(same is not None for *_, same, _se in rows)
    if structured:
        unchanged = [r for r in rows if r[4] is True]
        if not unchanged:
            pytest.skip(f"the two orders removed different blocks at every bit width:\n{table}")
        nonzero = structured_zero_interference(row[:5] for row in rows)
        assert not nonzero, f"A != 0 although both orders removed the same blocks (no interference expected):\n{table}"
    else:
        sigmas = pqqp_bench.suite.noise_sigmas
        assert any(abs(a) > sigmas * se for *_, a, _same, se in rows), (
            f"no bit width shows interference (|A| > {sigmas:g} stderr) for an unstructured pruner:\n{table}")


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
    assert d["prompt_tokens"] + d["output_tokens"] == d["requests"] * (
        pqqp_bench.suite.throughput.settings.prompt_len + pqqp_bench.suite.throughput.settings.output_len), (
        f"{pqqp_throughput.recipe}: generated lengths differ from the settings: {d}")
    assert math.isfinite(quality.value), f"{pqqp_throughput.recipe}: {pqqp_bench.suite.metric} {quality.value}"
