"""Our GPTQ (full grid, static groups, act-order) against IST-DASLab's reference `fasterquant` on real layers of the
embedded model (benchmarks/vs_gptq_reference.py). The reference is not a package, so this runs where
PQQP_GPTQ_REFERENCE names a checkout of github.com/IST-DASLab/gptq, and skips elsewhere."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REFERENCE = os.environ.get("PQQP_GPTQ_REFERENCE")
pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(not REFERENCE, reason="set PQQP_GPTQ_REFERENCE to a checkout of IST-DASLab/gptq")]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_gptq_equals_the_reference_bit_for_bit_given_the_same_arithmetic() -> None:
    """Given the same Hessian and the reference's float32 factorisation, every weight of every layer is the same."""
    from vs_gptq_reference import agreements

    for found in agreements(Path(REFERENCE), same_arithmetic=True):
        assert found.same == 1.0, found


def test_gptq_with_its_own_arithmetic_differs_only_at_rounding_boundaries() -> None:
    """Each with its own arithmetic, weights differ only where last bits decide a rounding: a few in ten thousand."""
    from vs_gptq_reference import agreements

    for found in agreements(Path(REFERENCE), same_arithmetic=False):
        assert found.same > 0.998 and found.max_steps <= 3, found
