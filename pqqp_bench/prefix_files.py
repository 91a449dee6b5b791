"""Compressed recipe prefixes on disk: safetensors for the tensors, JSON for the rest, never pickle.

The on-disk form of `prefixes.PrefixCache`'s entries, for models too large to keep several copies in memory and
for xdist/Ray workers that share a filesystem. An entry is a folder `<key hash>/` holding `tensors.safetensors`
(the model's state dict with tied tensors once, each block's packed masks, grids and reference weights, the online
rotations, the random state) and `state.json` (what was done to the model's structure and modules, the block
works' bits, the report so far, and the sha256 of the tensors file). A state is rebuilt from a copy of the dense
model: the removed blocks deleted (SLEB's record of the original block numbers), a rotated head untied, the
state dict loaded, the hooks and attention attributes put back. Only the built-in methods whose changes are all
of that kind are written (`WRITABLE`); other prefixes stay in memory only.

Entries are written to a temporary folder and renamed into place; a folder that fails to load (truncated,
edited, of another format) is removed and counts as a miss. The folder is bounded like the memory cache: least
recently read entries go first.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .blocks import block_attention, block_linears, decoder_blocks
from .methods.base import LayerWork, PackedMasks
from .methods.quantize import KV_ATTENTION, ActivationFakeQuant, KVFakeQuant, WeightGrid, enable_attention_function
from .methods.quarot import OnlineHadamard
from .methods.sleb import ORIGIN, original_indices, remove_blocks

if TYPE_CHECKING:
    from .compress import CompressionReport, CompressionState
    from .methods.base import Method

FORMAT = 1
WRITABLE = ("magnitude", "wanda", "sparsegpt", "sleb", "rtn", "gptq", "quarot")
TENSORS, STATE = "tensors.safetensors", "state.json"


class NotWritable(Exception):
    """A state holds something this module does not know how to write (kept in memory only)."""


def writable(stages: tuple["Method", ...]) -> bool:
    return all(s.name in WRITABLE and s.builtin() for s in stages)


def entry_name(key: tuple) -> str:
    return hashlib.sha256(repr(key).encode()).hexdigest()[:32]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- writing -------------------------------------------------------------------------------------------------


def model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """The state dict into `tensors` (`m.<name>`), each storage once; returns the aliases (name -> first name)."""
    seen: dict[tuple, str] = {}
    aliases = {}
    for name, tensor in model.state_dict().items():
        ident = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if ident in seen:
            aliases[name] = seen[ident]
        else:
            seen[ident] = name
            tensors[f"m.{name}"] = tensor.detach().contiguous().cpu()
    return aliases


def module_extras(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[dict]:
    """The forward pre-hooks and attention attributes the methods put on modules, in registration order."""
    extras = []
    for name, module in model.named_modules():
        if module._forward_hooks or getattr(module, "_forward_hooks_with_kwargs", None):
            raise NotWritable(f"{name} has forward hooks")
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, ActivationFakeQuant):
                extras.append({"module": name, "hook": "activation", "bits": hook.bits, "clip": hook.clip})
            elif isinstance(hook, OnlineHadamard):
                tensors[f"h.{name}.a"], tensors[f"h.{name}.b"] = hook.a.contiguous().cpu(), hook.b.contiguous().cpu()
                extras.append({"module": name, "hook": "hadamard"})
            else:
                raise NotWritable(f"{name} has a pre-hook {type(hook).__name__}")
        kv = getattr(module, "pqqp_kv", None)
        if kv is not None:
            extras.append({"module": name, "kv": kv.bits})
        rotation = getattr(module, "pqqp_qk_rotation", None)
        if rotation is not None:
            tensors[f"r.{name}"] = rotation.contiguous().cpu()
            extras.append({"module": name, "qk_rotation": True})
    return extras


def work_record(work: LayerWork, tensors: dict[str, torch.Tensor], index: int) -> dict:
    prefix = f"w.{index}"
    for name, (packed, _) in work.masks._packed.items():
        tensors[f"{prefix}.mask.{name}"] = packed.contiguous().cpu()
    grids = {}
    for name, grid in work.grids.items():
        if type(grid) is not WeightGrid:
            raise NotWritable(f"grid {type(grid).__name__}")
        tensors[f"{prefix}.scale.{name}"] = grid.scale.contiguous().cpu()
        tensors[f"{prefix}.zero.{name}"] = grid.zero.contiguous().cpu()
        grids[name] = {"bits": grid.bits, "group": grid.group, "symmetric": grid.symmetric}
    for name, weight in work.reference.items():
        tensors[f"{prefix}.ref.{name}"] = weight.contiguous().cpu()
    return {"index": index, "seed": work.seed, "masks": {n: list(s) for n, (_, s) in work.masks._packed.items()},
            "grids": grids, "reference": list(work.reference), "bits": work.bits, "kv_bits": work.kv_bits}


def report_record(report: "CompressionReport") -> dict:
    if report.linears or report.kv_bits or report.grids:
        raise NotWritable("a finished report")
    return {"recipe": report.recipe, "requested": report.requested, "dense_numel": report.dense_numel,
            "structure": report.structure, "seconds": report.seconds, "flags": report.flags}


def save_state(state: "CompressionState", folder: Path) -> Path:
    """Write `state` as the entry folder `folder` (atomically: a temporary folder renamed into place)."""
    model = state.model
    tensors: dict[str, torch.Tensor] = {}
    record = {
        "format": FORMAT, "done": state.done,
        "aliases": model_tensors(model, tensors),
        "extras": module_extras(model, tensors),
        "origin": list(original_indices(model.config, len(decoder_blocks(model)))),
        "tied": model.get_output_embeddings().weight is model.get_input_embeddings().weight,
        "attention": model.config._attn_implementation,
        "works": [work_record(state.works[id(b)], tensors, i) for i, b in enumerate(decoder_blocks(model))
                  if id(b) in state.works],
        "report": report_record(state.report),
        "broken": {stage: dict(counts) for stage, counts in state.broken.items()},
    }
    if state.rng is not None:
        tensors["rng"] = state.rng
    json.dumps(record)  # a record that JSON cannot hold fails here, before anything is written
    tmp = folder.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / TENSORS))
        record["sha256"] = sha256(tmp / TENSORS)
        (tmp / STATE).write_text(json.dumps(record))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote this entry meanwhile: keep theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --- reading -------------------------------------------------------------------------------------------------


def load_state(folder: Path, dense: nn.Module) -> "CompressionState":
    """The state written in `folder`, rebuilt on a copy of `dense`. Raises ValueError for an entry that does not
    load (its caller removes it)."""
    from collections import Counter

    from .compress import CompressionReport, CompressionState

    try:
        record = json.loads((folder / STATE).read_text())
        if record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format')!r}")
        if sha256(folder / TENSORS) != record["sha256"]:
            raise ValueError("tensors file does not match its checksum")
        tensors = load_file(str(folder / TENSORS))
    except (OSError, KeyError, json.JSONDecodeError, SafetensorError) as exc:
        raise ValueError(str(exc)) from None
    model = copy.deepcopy(dense)
    blocks = decoder_blocks(model)
    now = original_indices(model.config, len(blocks))
    gone = [i for i, o in enumerate(now) if o not in set(record["origin"])]
    if gone:
        remove_blocks(model, blocks, gone)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if not record["tied"] and head.weight is embed.weight:
        head.weight = nn.Parameter(head.weight.data.clone())
        model.config.tie_word_embeddings = False
    if record["attention"] == KV_ATTENTION:
        enable_attention_function(model.config)
    weights = {name[2:]: t for name, t in tensors.items() if name.startswith("m.")}
    weights.update({name: weights[first] for name, first in record["aliases"].items()})
    model.load_state_dict(weights, strict=True)
    restore_extras(model, record["extras"], tensors)
    device = next(model.parameters()).device
    works = {}
    blocks = decoder_blocks(model)
    for item in record["works"]:
        work = restore_work(item, blocks[item["index"]], tensors, device)
        works[id(work.block)] = work
    r = record["report"]
    report = CompressionReport(r["recipe"], r["requested"], r["dense_numel"], structure=r["structure"],
                               seconds=r["seconds"], flags=r["flags"])
    broken = {stage: Counter(counts) for stage, counts in record["broken"].items()}
    return CompressionState(model, record["done"], works, report, broken, tensors.get("rng"))


def restore_extras(model: nn.Module, extras: list[dict], tensors: dict[str, torch.Tensor]) -> None:
    for extra in extras:
        module = model.get_submodule(extra["module"])
        device = next(module.parameters(), torch.empty(0)).device
        if extra.get("hook") == "activation":
            module.register_forward_pre_hook(ActivationFakeQuant(extra["bits"], extra["clip"]))
        elif extra.get("hook") == "hadamard":
            name = extra["module"]
            module.register_forward_pre_hook(OnlineHadamard(tensors[f"h.{name}.a"].to(device),
                                                            tensors[f"h.{name}.b"].to(device)))
        elif "kv" in extra:
            module.pqqp_kv = KVFakeQuant(extra["kv"])
        elif extra.get("qk_rotation"):
            module.pqqp_qk_rotation = tensors[f"r.{extra['module']}"].to(device)


def restore_work(item: dict[str, Any], block: nn.Module, tensors: dict[str, torch.Tensor], device: torch.device
                 ) -> LayerWork:
    prefix = f"w.{item['index']}"
    reference = {name: tensors[f"{prefix}.ref.{name}"].to(device) for name in item["reference"]}
    work = LayerWork(item["index"], block, block_linears(block), block_attention(block), reference=reference,
                     seed=item["seed"])
    masks = PackedMasks()
    for name, shape in item["masks"].items():
        masks._packed[name] = (tensors[f"{prefix}.mask.{name}"].to(device), torch.Size(shape))
    work.masks = masks
    work.grids = {name: WeightGrid(g["bits"], tensors[f"{prefix}.scale.{name}"].to(device),
                                   tensors[f"{prefix}.zero.{name}"].to(device), g["group"], g["symmetric"])
                  for name, g in item["grids"].items()}
    work.bits, work.kv_bits = item["bits"], item["kv_bits"]
    return work


# --- the folder ----------------------------------------------------------------------------------------------


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def evict(root: Path, capacity: int, incoming: int) -> None:
    """Remove the least recently read entries until `incoming` more bytes fit in `capacity`."""
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: (p / STATE).stat().st_mtime if (p / STATE).exists() else 0.0)
    used = sum(folder_size(p) for p in entries)
    for entry in entries:
        if used + incoming <= capacity:
            break
        used -= folder_size(entry)
        shutil.rmtree(entry, ignore_errors=True)
