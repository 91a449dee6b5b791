"""The input statistics a layer-scope method asks for (`Method.statistic`), gathered by the engine through forward
hooks while the block runs on its calibration inputs, before the method's `apply` (compress.compress_block).

A statistic is a name and a function from one Linear input (tokens x features, float32) to what is summed over
all tokens the Linear sees. Adding one is one entry in `STATISTICS`; the engine does not change.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

STATISTICS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sqnorm": lambda x: (x * x).sum(dim=0),  # Wanda's ||X_j||_2^2 per input feature
    "hessian": lambda x: x.T @ x,  # X^T X, GPTQ's and SparseGPT's H/2
}


@contextmanager
def input_statistics(linears: dict[str, nn.Linear], kind: str) -> Iterator[dict[str, torch.Tensor]]:
    """Accumulate, through forward hooks, each Linear's input statistic `kind` (a `STATISTICS` name) over the
    tokens it sees. The hooks see the inputs after any activation fake-quant pre-hook, i.e. what the layer really
    computes on. Linears fed the very same tensor (q/k/v, gate/up) share one computation."""
    of = STATISTICS[kind]
    stats: dict[str, torch.Tensor] = {}
    last: list = [None, None]  # the last input tensor seen and its statistic (held, so its id cannot recur)

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if args[0] is not last[0]:
                last[:] = [args[0], of(args[0].detach().reshape(-1, args[0].shape[-1]).float())]
            stats[name] = stats[name] + last[1] if name in stats else last[1].clone()

        return hook

    handles = [linear.register_forward_hook(hook_for(name)) for name, linear in linears.items()]
    try:
        yield stats
    finally:
        last.clear()
        for handle in handles:
            handle.remove()
