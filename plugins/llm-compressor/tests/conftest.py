"""Fixtures: the harness's tiny random Llama and calibration tokens (tests/conftest.py of the checkout this
plugin lives in, loaded by path: both files are called conftest), one torch thread, a cache of compressed
models so that each recipe runs once per session."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("pqqp_harness_conftest", REPO / "tests" / "conftest.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
tiny_llama, char_tokenizer, CHARS = harness.tiny_llama, harness.char_tokenizer, harness.CHARS

# One thread: the models are tiny, and on a shared 2-core machine more threads made each small matmul of
# oneshot's sequential pipeline tens of times slower (7.5 s instead of 0.3 s for one Wanda run).
torch.set_num_threads(1)


def calibration_tokens(samples: int = 8, seqlen: int = 32, seed: int = 1) -> torch.Tensor:
    """The harness tests' calibration: random character ids, [samples, seqlen]."""
    return torch.randint(1, len(CHARS) + 1, (samples, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def tokens() -> torch.Tensor:
    return calibration_tokens()


@pytest.fixture(scope="session")
def compressed(tokens: torch.Tensor) -> Callable:
    """compressed(recipe) -> (model, report): a fresh tiny Llama compressed by `recipe`, computed once."""
    from pqqp_bench.compress import compress
    from pqqp_bench.spec import parse_recipe

    done: dict[str, tuple] = {}

    def run(recipe: str):
        if recipe not in done:
            model = tiny_llama()
            done[recipe] = (model, compress(model, parse_recipe(recipe), tokens, progress=False))
        return done[recipe]

    return run
