"""Token-level perplexity over non-overlapping windows (the GPTQ/SparseGPT convention).

The evaluation text is cut into windows of `seqlen` tokens that share no context; each window predicts its
tokens 2..seqlen from the ones before, and perplexity is exp(total NLL / predicted tokens). Per-window NLL
sums are kept, so differences between two models can be paired window by window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

CONVENTION = "token-level perplexity, non-overlapping windows (GPTQ/SparseGPT convention)"


@dataclass
class PerplexityResult:
    ppl: float
    seqlen: int
    windows: int
    tokens: int
    window_nll: list[float] = field(repr=False)
    seconds: float = 0.0
    convention: str = CONVENTION
    bos: str = "none"  # how each window starts: `bos` (the model's BOS token) or `none` (data.bos_label)

    @property
    def nll(self) -> float:
        return sum(self.window_nll) / self.tokens


def window_nll(model: PreTrainedModel, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each row of `batch` ([b, seqlen] ids), in float32."""
    logits = model(batch, use_cache=False).logits[:, :-1].float()
    targets = batch[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape).sum(dim=1)


def result(sums: list[float], windows: torch.Tensor, start: float) -> PerplexityResult:
    """Perplexity from the per-window NLL sums of `windows` ([n, seqlen]), timed from `start`."""
    n, seqlen = windows.shape
    tokens = n * (seqlen - 1)
    return PerplexityResult(math.exp(sum(sums) / tokens), seqlen, n, tokens, sums, time.perf_counter() - start)


@torch.inference_mode()
def perplexity(
    model: PreTrainedModel,
    windows: torch.Tensor,
    *,
    batch_size: int = 1,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of `model` on `windows` ([n, seqlen] token ids), evaluated `batch_size` windows at a time."""
    device = next(model.parameters()).device
    start = time.perf_counter()
    sums: list[float] = []
    batches = windows.split(batch_size)
    for batch in tqdm(batches, desc="perplexity", unit="batch", disable=not progress, leave=False):
        sums += window_nll(model, batch.to(device)).tolist()
    return result(sums, windows, start)


@torch.inference_mode()
def layerwise_perplexity(
    model: PreTrainedModel,
    windows: torch.Tensor,
    device: str | torch.device,
    *,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of a model whose blocks live off `device` (offload.py), one block on `device` at a time.

    All windows pass through block 1, then block 2, ... (the SparseGPT evaluation scheme), one window per call,
    so the numbers are those of `perplexity(..., batch_size=1)`. The model's own head finishes each window: the
    first block hands over the window's final hidden state and the others pass it through, so final norms,
    soft-capping and tied heads are the model's."""
    from ..blocks import block_call_kwargs, capture_block_inputs, decoder_blocks, move_outside_blocks, passthrough, run_block
    from ..offload import home_of, visiting

    device = torch.device(device)
    start = time.perf_counter()
    blocks = decoder_blocks(model)
    outside = next(p.device for p in model.parameters() if not p.is_meta)
    move_outside_blocks(model, blocks, device)
    try:
        windows = windows.to(device)
        calls = block_call_kwargs(model, blocks, windows[0])
        hidden = capture_block_inputs(model, blocks, windows)
        for index, block in enumerate(tqdm(blocks, desc="perplexity (layer-wise)", unit="block", disable=not progress,
                                           leave=False)):
            with visiting(home_of(model), index, block, device):
                hidden = run_block(block, hidden, calls[index])
        final = iter(hidden)
        blocks[0].forward = lambda *args, **kwargs: next(final)
        for block in blocks[1:]:
            block.forward = passthrough
        try:
            sums = [window_nll(model, window.unsqueeze(0)).item() for window in windows]
        finally:
            for block in blocks:
                del block.forward
    finally:
        move_outside_blocks(model, blocks, outside)
    return result(sums, windows, start)
