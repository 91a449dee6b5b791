"""Offloading (offload.py): blocks off the compute device between their turns give the in-memory numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pqqp_bench.errors import PqqpError
from pqqp_bench.evaluate import layerwise_perplexity, perplexity
from pqqp_bench.experiment import Experiment, Settings
from pqqp_bench.suite import Suite

from conftest import tiny_gemma3


def experiment(model_dir: Path, text_file: Path, offload: str) -> Experiment:
    return Experiment(Settings(model=str(model_dir), corpus=str(text_file), seqlen=32, calib_samples=4,
                               eval_tokens=256, device="cpu", offload=offload, progress=False))


@pytest.mark.parametrize("recipe", ["wanda:p=0.4 > rtn:w=4,a=4,kv=4", "rtn:w=4,a=8,kv=8 > sparsegpt:p=0.3",
                                    "sparsegpt:nm=2:4 > gptq:w=3,g=16"])
def test_offloaded_runs_match_in_memory(model_dir: Path, text_file: Path, recipe: str) -> None:
    results = {mode: experiment(model_dir, text_file, mode).run(recipe) for mode in ("none", "cpu", "disk")}
    reference = results["none"]
    for mode in ("cpu", "disk"):
        assert results[mode].perplexity.window_nll == reference.perplexity.window_nll, mode
        assert results[mode].report.achieved() == reference.report.achieved(), mode


def test_disk_keeps_blocks_off_memory_and_the_dense_model_intact(model_dir: Path, text_file: Path) -> None:
    disk = experiment(model_dir, text_file, "disk")
    blocks = disk.loaded.model.model.layers
    assert all(p.is_meta for p in blocks.parameters())
    dense_before = disk.run("dense").perplexity.window_nll
    pruned = disk.run("magnitude:p=0.5")
    assert all(p.is_meta for p in blocks.parameters())  # the compressed copy wrote its own scratch files
    assert disk.run("dense").perplexity.window_nll == dense_before
    assert pruned.report.achieved()["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert pruned.perplexity.window_nll == experiment(model_dir, text_file, "none").run("magnitude:p=0.5").perplexity.window_nll


def test_model_scope_methods_are_refused_with_offload(model_dir: Path, text_file: Path) -> None:
    with pytest.raises(PqqpError, match="'sleb' needs the whole model.*offload"):
        experiment(model_dir, text_file, "disk").run("sleb:p=0.5")


def test_bad_offload_values_are_refused(model_dir: Path, text_file: Path) -> None:
    with pytest.raises(PqqpError, match="offload 'ram' is not accepted: use one of none, cpu, disk"):
        experiment(model_dir, text_file, "ram")
    with pytest.raises(PqqpError, match="evaluates perplexity only"):
        Suite(offload="disk", metric="lm-eval:pqqp_cloze/acc")


def test_layerwise_perplexity_matches_for_per_block_masks(tokens: torch.Tensor) -> None:
    """Gemma 3 calls its sliding-window and global blocks with different masks and rotary bases."""
    model = tiny_gemma3()
    assert layerwise_perplexity(model, tokens, "cpu", progress=False).window_nll == \
        perplexity(model, tokens, progress=False).window_nll
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_offload_keeps_blocks_on_the_host_and_computes_on_the_gpu(model_dir: Path, text_file: Path) -> None:
    memory = experiment(model_dir, text_file, "none").run("wanda:p=0.4 > rtn:w=4,a=4,kv=4")
    cpu = Experiment(Settings(model=str(model_dir), corpus=str(text_file), seqlen=32, calib_samples=4,
                              eval_tokens=256, device="cuda", offload="cpu", progress=False))
    result = cpu.run("wanda:p=0.4 > rtn:w=4,a=4,kv=4")
    assert next(cpu.loaded.model.model.layers.parameters()).device.type == "cpu"
    assert result.perplexity.ppl == pytest.approx(memory.perplexity.ppl, rel=1e-3)
