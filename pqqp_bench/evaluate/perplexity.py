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

    @property
    def nll(self) -> float:
        return sum(self.window_nll) / self.tokens


def window_nll(model: PreTrainedModel, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each row of `batch` ([b, seqlen] ids), in float32."""
    logits = model(batch, use_cache=False).logits[:, :-1].float()
    targets = batch[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape).sum(dim=1)


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
    n, seqlen = windows.shape
    tokens = n * (seqlen - 1)
    ppl = math.exp(sum(sums) / tokens)
    return PerplexityResult(ppl, seqlen, n, tokens, sums, time.perf_counter() - start)
