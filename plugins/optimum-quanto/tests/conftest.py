"""Fixtures: the harness's tiny random Llama (tests/conftest.py of the pqqp-bench checkout), no downloads.

The core's conftest is loaded under its own module name, so that it does not clash with this one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

CORE_CONFTEST = Path(__file__).resolve().parents[3] / "tests" / "conftest.py"


def load_core_fixtures():
    spec = importlib.util.spec_from_file_location("pqqp_core_test_fixtures", CORE_CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


core = load_core_fixtures()
tiny_llama = core.tiny_llama


@pytest.fixture
def model():
    return tiny_llama()


@pytest.fixture
def tokens() -> torch.Tensor:
    """Eight random calibration windows of 32 tokens (as the core's fixture)."""
    return torch.randint(1, len(core.CHARS) + 1, (8, 32), generator=torch.Generator().manual_seed(1))
