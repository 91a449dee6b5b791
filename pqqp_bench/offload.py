"""Models larger than memory: decoder blocks live off the compute device and visit it one at a time.

Compression already works block by block (compress.py); with offloading, evaluation does too. Two homes:

* `cpu`: the model sits in host memory; each block is moved to the compute device for its turn and back. For a
  model larger than the GPU but not than the host (a 70B model on one 80 GB GPU).
* `disk` (:class:`DiskHome`): the blocks are never all in memory. The model is built on the `meta` device, the
  weights outside the blocks (embeddings, final norm, head) are loaded, and each block is read from the model's
  safetensors files when its turn comes; a compressed block is written to a scratch folder of its own copy and
  read back from there. Peak memory: the weights outside the blocks, one block, and the activations.

Either way the numbers are those of the in-memory model (same operations on the same shapes, block by block);
`tests/test_offload.py` checks that. Model-scope methods (SLEB, rotations, sharing, mixed precision, LoRA) need
the whole model at once and are refused with offloading.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .errors import PqqpError

HOME_ATTRIBUTE = "pqqp_home"  # set on a model whose blocks live off the compute device


class DiskHome:
    """Blocks on disk: dense weights read from the model's safetensors files, compressed ones from `scratch`.

    `prefixes[i]` is block i's parameter-name prefix in the files (e.g. `model.layers.3.`)."""

    def __init__(self, files: dict[str, Path], prefixes: list[str], dtype: torch.dtype) -> None:
        self.files, self.prefixes, self.dtype = files, prefixes, dtype
        self.scratch = tempfile.TemporaryDirectory(prefix="pqqp-offload-")  # removed with this home
        self.written: set[int] = set()

    def block_path(self, index: int) -> Path:
        return Path(self.scratch.name) / f"block_{index}.safetensors"

    def fetch(self, index: int, block: nn.Module, device: torch.device) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        block.to_empty(device=device)
        if index in self.written:
            state = load_file(self.block_path(index), device=str(device))
        else:
            prefix, state = self.prefixes[index], {}
            for name in block.state_dict():
                with safe_open(self.files[prefix + name], framework="pt", device=str(device)) as f:
                    state[name] = f.get_tensor(prefix + name).to(self.dtype)
        block.load_state_dict(state, strict=True)

    def release(self, index: int, block: nn.Module, changed: bool) -> None:
        from safetensors.torch import save_file

        if changed:
            save_file({k: v.contiguous() for k, v in block.state_dict().items()}, self.block_path(index))
            self.written.add(index)
        block.to("meta")

    def __deepcopy__(self, memo: dict) -> "DiskHome":
        """A model copy gets a scratch folder of its own, holding what this one had written."""
        twin = DiskHome(self.files, self.prefixes, self.dtype)
        for index in self.written:
            shutil.copyfile(self.block_path(index), twin.block_path(index))
        twin.written = set(self.written)
        return twin


def home_of(model: nn.Module) -> DiskHome | None:
    return getattr(model, HOME_ATTRIBUTE, None)


@contextmanager
def visiting(home: DiskHome | None, index: int, block: nn.Module, device: torch.device, changed: bool = False
             ) -> Iterator[nn.Module]:
    """The block on `device` for its turn: fetched from disk (or moved there), then sent back where it was
    (written back first if `changed`)."""
    back = next((p.device for p in block.parameters()), device)
    if home is None:
        block.to(device)
    else:
        home.fetch(index, block, device)
    try:
        yield block
    finally:
        if home is None:
            block.to(back)
        else:
            home.release(index, block, changed)


def refuse_model_scope(model: nn.Module, stages: Iterator) -> None:
    """Offloaded models take layer-scope methods only: a model-scope one needs every block at once."""
    if home_of(model) is None:
        return
    for stage in stages:
        if stage.scope == "model":
            raise PqqpError(f"method {stage.name!r} needs the whole model in memory and cannot run with offload: "
                            f"accepted with offload cpu/disk: layer-scope methods (magnitude, wanda, sparsegpt, rtn, gptq, ...)")


def safetensors_index(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, for an HF model folder (sharded or not)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.exists():
        raise PqqpError(f"offload disk needs safetensors weights, and {folder} has none: accepted an HF folder "
                        f"with model.safetensors or model.safetensors.index.json")
    from safetensors import safe_open

    with safe_open(single, framework="pt") as f:
        return {name: single for name in f.keys()}


def load_on_disk(model_class, folder: Path, config, dtype: torch.dtype, device: str, blocks_of) -> nn.Module:
    """Build the model on `meta`, load the weights outside its blocks onto `device`, and give it a DiskHome that
    reads each block from `folder`'s safetensors files when its turn comes."""
    from accelerate import init_empty_weights
    from safetensors import safe_open

    with init_empty_weights(include_buffers=False):
        model = model_class.from_config(config, dtype=dtype)
    files = safetensors_index(folder)
    blocks = blocks_of(model)
    inside = {id(p) for p in blocks.parameters()}
    by_name = dict(model.named_parameters())
    block_prefix = next(name for name, module in model.named_modules() if module is blocks) + "."
    for name, param in by_name.items():
        if id(param) in inside:
            continue
        if name not in files:  # a tied head: filled by tie_weights below
            continue
        with safe_open(files[name], framework="pt", device=device) as f:
            tensor = f.get_tensor(name).to(dtype)
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        setattr(module, attr, nn.Parameter(tensor, requires_grad=False))
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta and id(p) not in inside]
    if missing:
        raise PqqpError(f"offload disk: weights {', '.join(missing[:3])} are not in {folder}'s safetensors files")
    for buffer_name, buffer in model.named_buffers():
        if buffer.is_meta:
            raise PqqpError(f"offload disk: buffer {buffer_name} of {type(model).__name__} stayed on meta")
    persistent = {name for block in blocks for name in block.state_dict()}
    transient = [name for block in blocks[:1] for name, _ in block.named_buffers() if name not in persistent]
    if transient:  # to_empty would leave them uninitialised after a block's visit
        raise PqqpError(f"offload disk: the blocks of {type(model).__name__} hold non-persistent buffers "
                        f"({', '.join(transient)}): accepted offload none or cpu for this model")
    for tensor in model.buffers():
        tensor.data = tensor.data.to(device)
    prefixes = [f"{block_prefix}{i}." for i in range(len(blocks))]
    setattr(model, HOME_ATTRIBUTE, DiskHome(files, prefixes, dtype))
    return model
