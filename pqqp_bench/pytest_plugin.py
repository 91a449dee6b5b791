"""The pytest plugin (registered through the `pytest11` entry point): options and session fixtures.

Every experiment setting has a `--pqqp-*` option; the fixtures build the experiment (model, corpus,
calibration samples, evaluation windows) once per session. Heavy imports happen inside the fixtures, so the
plugin costs nothing in test sessions that do not use it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Callable

import pytest

if TYPE_CHECKING:
    from .experiment import CaseResult, Experiment, Settings

RESULTS = pytest.StashKey[dict]()

OPTIONS = {
    "model": "model: embedded name, HF hub id, HF folder or .gguf file",
    "corpus": "corpus: pydoc, austen, wikitext2, or a .txt/.jsonl path",
    "seqlen": "tokens per calibration sample and evaluation window",
    "calib_samples": "number of calibration windows",
    "eval_tokens": "evaluation tokens (cut into windows of seqlen)",
    "holdout": "fraction of the corpus held out for evaluation",
    "seed": "seed of calibration sampling and randomised methods",
    "batch_size": "evaluation windows per forward pass",
    "device": "auto, cpu, cuda, cuda:N",
    "cache_dir": "where converted models are cached",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    from .experiment import Settings

    defaults = Settings()
    group = parser.getgroup("pqqp", "pqqp-bench: compression-order benchmark")
    for name, text in OPTIONS.items():
        default = getattr(defaults, name)
        group.addoption(
            f"--pqqp-{name.replace('_', '-')}",
            dest=f"pqqp_{name}",
            default=None,
            type=type(default) if default is not None else str,
            help=f"{text} (default {default})",
        )
    group.addoption("--pqqp-trust-remote-code", action="store_true", default=False,
                    help="allow model code from the hub (off by default)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pqqp: a case of the pqqp-bench compression-order grid")
    config.stash[RESULTS] = {}


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """A table of every case measured in this session."""
    results = config.stash.get(RESULTS, {})
    if not results:
        return
    from tabulate import tabulate

    rows = []
    for case in results.values():
        achieved = case.report.achieved()
        bits = " ".join(f"{k.upper()}{achieved[f'{k}_bits']}" for k in ("w", "a", "kv") if achieved[f"{k}_bits"])
        rows.append((case.recipe, case.order or "-", f"{achieved['sparsity']:.3f}", bits or "-",
                     f"{achieved['total']:.2f}", f"{case.perplexity.ppl:.4f}", f"{case.seconds['compress']:.1f}",
                     f"{case.seconds['evaluate']:.1f}"))
    first = next(iter(results.values())).perplexity
    terminalreporter.write_sep("=", f"pqqp-bench cases ({first.convention}, {first.windows} x {first.seqlen} tokens)")
    terminalreporter.write_line(tabulate(
        rows, headers=["recipe", "order", "sparsity", "bits", "C total", "ppl", "compress s", "eval s"]))


@pytest.fixture(scope="session")
def pqqp_settings(pytestconfig: pytest.Config) -> "Settings":
    """The experiment settings from the `--pqqp-*` options (defaults: the embedded model on pydoc)."""
    from .experiment import Settings

    given = {f.name: pytestconfig.getoption(f"pqqp_{f.name}") for f in fields(Settings) if f.name in OPTIONS}
    return Settings(
        **{k: v for k, v in given.items() if v is not None},
        trust_remote_code=pytestconfig.getoption("pqqp_trust_remote_code"),
        progress=False,
    )


@pytest.fixture(scope="session")
def pqqp_experiment(pqqp_settings: "Settings") -> "Experiment":
    """The loaded model, corpus, calibration samples and evaluation windows, built once per session."""
    from .errors import PqqpError
    from .experiment import Experiment

    try:
        return Experiment(pqqp_settings)
    except PqqpError as exc:
        raise pytest.UsageError(f"pqqp: {exc}") from None


@pytest.fixture(scope="session")
def pqqp_run(pqqp_experiment: "Experiment", pytestconfig: pytest.Config) -> Callable[[str], "CaseResult"]:
    """Run a recipe on the session's experiment, once: later requests for the same recipe reuse the result."""
    from .spec import parse_recipe

    results = pytestconfig.stash[RESULTS]

    def run(text: str) -> "CaseResult":
        recipe = parse_recipe(text)
        if recipe.key not in results:
            results[recipe.key] = pqqp_experiment.run(recipe)
        return results[recipe.key]

    return run
