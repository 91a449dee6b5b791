"""The decoder-block stack of a causal LM, and running it one block at a time on calibration inputs.

Shared by the layer-wise engine and the model-scope methods (SLEB scores candidate removals with it).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from .errors import PqqpError


class _Captured(Exception):
    """Raised by the hook on the first block to stop the forward pass once its inputs are caught."""


def decoder_blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The model's stack of decoder blocks: the ModuleList with `num_hidden_layers` entries."""
    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise PqqpError(f"cannot find the decoder blocks of {type(model).__name__}: accepted decoder-only HF models")


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The block's Linears by name. A Linear that an adapter wraps (peft's LoRA layer, whose `base_layer` it
    is) is given under the wrapper's name, and the adapter's own Linears are left out: masks, grids, statistics
    and activation quantizers concern the compressed base weights, whatever trains beside them."""
    linears: dict[str, nn.Linear] = {}
    wrapped: set[int] = set()
    for name, module in block.named_modules():
        if id(module) in wrapped:
            continue
        base = getattr(module, "base_layer", None)
        if isinstance(base, nn.Linear) and not isinstance(module, nn.Linear):
            linears[name] = base
            wrapped.update(id(m) for m in module.modules())
        elif isinstance(module, nn.Linear):
            linears[name] = module
    return linears


def block_attention(block: nn.Module) -> nn.Module | None:
    for name in ("self_attn", "attention", "attn"):
        if isinstance(getattr(block, name, None), nn.Module):
            return getattr(block, name)
    return None


def passthrough(*args, **kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def block_call_kwargs(model: PreTrainedModel, blocks: nn.ModuleList, sample: torch.Tensor) -> list[dict]:
    """The keyword arguments each block is called with (masks, rotary embeddings), read from one forward
    pass in which every block passes its input through untouched (so no block needs to be on the device).

    Blocks of one model may differ here: Gemma 3 gives sliding-window layers another mask and rotary base.
    """
    calls: list[dict] = [{} for _ in blocks]

    def keep(index: int):
        def hook(module: nn.Module, args: tuple, kw: dict) -> None:
            calls[index] = {k: v for k, v in kw.items() if k not in ("hidden_states", "past_key_values")}
            calls[index]["use_cache"] = False

        return hook

    handles = [block.register_forward_pre_hook(keep(i), with_kwargs=True) for i, block in enumerate(blocks)]
    for block in blocks:
        block.forward = passthrough
    try:
        model(sample.unsqueeze(0), use_cache=False)
    finally:
        for block in blocks:
            del block.forward
        for handle in handles:
            handle.remove()
    return calls


def capture_block_inputs(model: PreTrainedModel, blocks: nn.ModuleList, samples: torch.Tensor) -> list[torch.Tensor]:
    """Run the model up to its first block on each sample ([n, seqlen] ids); return the block's inputs."""
    inputs: list[torch.Tensor] = []

    def catch(module: nn.Module, args: tuple, kw: dict) -> None:
        inputs.append(args[0] if args else kw["hidden_states"])
        raise _Captured

    handle = blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for sample in samples:
            try:
                model(sample.unsqueeze(0), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return inputs


def run_block(block: nn.Module, inputs: list[torch.Tensor], kwargs: dict) -> list[torch.Tensor]:
    outputs = []
    for x in inputs:
        out = block(x, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


def move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> None:
    """Move every parameter and buffer that is not inside a decoder block (embeddings, norms, rotary) to `device`."""
    inside = {id(m) for m in blocks.modules()}
    for module in model.modules():
        if id(module) in inside:
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            tensor.data = tensor.data.to(device)
