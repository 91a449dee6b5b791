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
"""

from __future__ import annotations

import math

import pytest

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
