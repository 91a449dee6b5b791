"""Checkpoints vLLM loads, written from a compressed model so that the exported model is the measured one.

Which format a case gets depends on what its recipe left in the model (`plan`):

* INT8 W8A8 (`compressed-tensors`, format `int-quantized`): 8-bit symmetric per-channel weights and 8-bit
  activations. The weights are the harness's integers: `round(w / scale)` on the grid its quantizer chose
  (`CompressionReport.grids`), with that scale. vLLM's kernel quantizes activations per token, dynamically and
  symmetrically (scale = absmax / 127), as the harness's fake quant does, but from bf16 activations.
* GPTQ W4A16 (`quant_method: gptq`, AutoGPTQ's v1 packing): 4-bit symmetric weights, per channel or per group,
  activations in the model dtype. `qweight` holds `q + 8` eight to an int32 along the input dimension,
  `qzeros` the v1 convention `8 - 1`, `g_idx` the group of each input column; scales as the grid chose them.
* Dense (the model dtype): everything else, i.e. the dense model, pruned models (unstructured or N:M sparsity
  gives vLLM no speed-up: it has no sparse kernels) and fake-quantized cases vLLM has no kernel for (e.g. W6A6:
  the weights are the fake-quantized values, the activations are *not* quantized by vLLM). SLEB's removed
  blocks are gone from the model itself, so its export simply has fewer layers.

Each export says what vLLM will not reproduce (`Export.notes`): unquantized activations or KV cache, and the
cast of float weights to the serving dtype. QuaRot's online rotations have no vLLM equivalent, so a recipe
with `quarot` is refused rather than exported as a different model; so is one with `lora`, whose adapters stay
beside the compressed weights (merged, they would undo its pruning and quantization).

Scales are written in float32 whatever the dtype (vLLM casts them to its own parameter dtype on load); the
integer weights are exact. `compressed-tensors` is imported only for the W8A8 format.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import nn

from .blocks import block_linears, decoder_blocks
from .errors import PqqpError
from .methods.quantize import ActivationFakeQuant, WeightGrid

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .compress import CompressionReport

DENSE, W8A8, W4A16 = "dense", "int8-w8a8", "gptq-w4a16"
FORMATS = {
    DENSE: "dense weights (no low-bit kernel)",
    W8A8: "INT8 W8A8, compressed-tensors int-quantized",
    W4A16: "INT4 W4A16, GPTQ",
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
GPTQ_PACK = 8  # 4-bit values per int32
EXPORT_INSTALL_HINT = "pip install 'pqqp-bench[export]'"


@dataclass(frozen=True)
class Export:
    """An exported checkpoint: its folder, its format (`FORMATS`) and what vLLM will not reproduce."""

    folder: Path
    format: str
    notes: tuple[str, ...] = ()

    @property
    def low_bit(self) -> bool:
        """Whether vLLM runs this checkpoint with low-bit kernels (otherwise: dense weights)."""
        return self.format != DENSE

    def as_dict(self) -> dict:
        return {"format": self.format, "low_bit": self.low_bit, "served_as": FORMATS[self.format],
                "notes": list(self.notes)}


@dataclass(frozen=True)
class QuantizedLinear:
    """One decoder Linear as the compressed model holds it: its module path, grid and activation bits."""

    path: str
    linear: nn.Linear
    grid: WeightGrid | None
    a_bits: int | None
    a_clip: float


def activation_quant(linear: nn.Linear) -> ActivationFakeQuant | None:
    """The activation fake quant registered on a Linear (by the quantizers), if any."""
    hooks = [h for h in linear._forward_pre_hooks.values() if isinstance(h, ActivationFakeQuant)]
    return hooks[-1] if hooks else None


def decoder_linears(model: "PreTrainedModel", report: "CompressionReport") -> list[QuantizedLinear]:
    """Every decoder Linear with the grid its quantizer chose (`report.grids`) and its activation quant."""
    paths = {id(module): name for name, module in model.named_modules()}
    found = []
    for index, block in enumerate(decoder_blocks(model)):
        for name, linear in block_linears(block).items():
            hook = activation_quant(linear)
            found.append(QuantizedLinear(paths[id(linear)], linear, report.grids.get(f"blocks.{index}.{name}"),
                                         hook.bits if hook else None, hook.clip if hook else 1.0))
    return found


def plan(model: "PreTrainedModel", report: "CompressionReport") -> tuple[str, tuple[str, ...]]:
    """The export format of a compressed model and what vLLM will not reproduce of it."""
    if any(s["stage"].startswith("quarot") for s in report.structure):
        raise PqqpError(f"recipe '{report.recipe}' cannot be exported for vLLM: quarot's online rotations have no "
                        f"vLLM equivalent; accepted recipes of pruners (magnitude, wanda, sparsegpt, sleb), rtn, gptq")
    if any(s["stage"].partition(":")[0] == "lora" for s in report.structure):
        raise PqqpError(f"recipe '{report.recipe}' cannot be exported for vLLM: its LoRA adapters stay unmerged beside "
                        f"the compressed weights; accepted recipes of pruners (magnitude, wanda, sparsegpt, sleb), rtn, gptq")
    linears = decoder_linears(model, report)
    grids = [q.grid for q in linears]
    a_bits = {q.a_bits for q in linears}
    notes = [f"KV cache at {max(b for b in report.kv_bits if b)} bits in the harness: vLLM serves it in the model dtype"
             ] if any(report.kv_bits) else []
    every = all(g is not None for g in grids)
    shape = {(g.bits, g.symmetric, g.group == q.linear.in_features) for g, q in zip(grids, linears) if g is not None}
    if every and shape == {(8, True, True)} and a_bits == {8} and all(q.a_clip == 1.0 for q in linears):
        return W8A8, tuple(notes)
    if every and a_bits == {None} and {s[:2] for s in shape} == {(4, True)}:
        sizes = {gptq_group(q) for q in linears}
        if len(sizes) == 1 and (sizes == {-1} or sizes.pop() % 2 == 0):  # one group size (-1: per channel)
            return W4A16, tuple(notes)
    if any(g is not None for g in grids):
        bits = sorted({g.bits for g in grids if g is not None})
        notes.append(f"weights hold the {'/'.join(map(str, bits))}-bit fake-quantized values, served as dense floats "
                     f"(vLLM has no kernel for this grid)")
    if a_bits - {None}:
        notes.append(f"activations at {max(a_bits - {None})} bits in the harness: vLLM serves them unquantized")
    return DENSE, tuple(notes)


def export(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", report: "CompressionReport",
           folder: str | Path, dtype: str = "bfloat16") -> Export:
    """Write `model` (compressed as `report` says) to `folder` as vLLM loads it: config, safetensors, tokenizer."""
    if dtype not in DTYPES:
        raise PqqpError(f"export dtype {dtype!r} is not accepted: accepted {', '.join(DTYPES)}")
    fmt, notes = plan(model, report)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:  # written beside, renamed into place when complete: a reader never finds half a checkpoint
        notes = write_checkpoint(model, tokenizer, report, partial, fmt, notes, dtype)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return Export(folder, fmt, tuple(notes))


def write_checkpoint(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", report: "CompressionReport",
                     folder: Path, fmt: str, notes: tuple[str, ...], dtype: str) -> tuple[str, ...]:
    """The checkpoint's files in `folder`: safetensors (packed where `fmt` quantizes), config, tokenizer."""
    floats = DTYPES[dtype]
    tensors = {name: t.detach().to(floats if t.is_floating_point() else t.dtype).contiguous()
               for name, t in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)  # tied: loaders rebuild it from the embedding
    config = model.config.to_dict()
    if fmt != DENSE:
        for q in decoder_linears(model, report):
            del tensors[f"{q.path}.weight"]
            packed = w8a8_tensors(q) if fmt == W8A8 else gptq_tensors(q)
            tensors.update({f"{q.path}.{k}": v.contiguous() for k, v in packed.items()})
        config["quantization_config"] = w8a8_config() if fmt == W8A8 else gptq_config(report, model)
    if floats != torch.float32:
        notes += (f"float tensors cast from float32 to {dtype} for serving",)
    config["dtype"] = dtype
    config.pop("torch_dtype", None)
    for private in [k for k in config if k.startswith("_")]:
        config.pop(private)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return notes


# --------------------------------------------------------------------------------------------- formats


def integers(q: QuantizedLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """The Linear's integer levels [out, in] and its scales [out, groups], exactly as the grid holds them."""
    grid = q.grid
    if type(grid) is not WeightGrid or not grid.symmetric:  # a plugin's grid (e.g. quanto's float shift) does not
        raise PqqpError(f"{q.path}: its weights are on a {type(grid).__name__} that is not symmetric integer: accepted "
                        "for export the symmetric grids of rtn, gptq and mpq")
    scale, _ = grid.columns(0, q.linear.in_features)
    levels = torch.round(q.linear.weight.data.float() / scale)
    if not torch.equal(levels * scale, q.linear.weight.data.float()):
        raise PqqpError(f"{q.path}: weights are not on their {grid.bits}-bit grid; cannot export them as integers")
    return levels.to(torch.int32), grid.scale.float()


def w8a8_scheme():
    try:
        from compressed_tensors.quantization import preset_name_to_scheme
    except ImportError:
        raise PqqpError(f"the INT8 W8A8 export needs compressed-tensors: {EXPORT_INSTALL_HINT}") from None
    return preset_name_to_scheme("W8A8", ["Linear"])


def w8a8_tensors(q: QuantizedLinear) -> dict[str, torch.Tensor]:
    """int8 `weight` and float32 `weight_scale` [out, 1], through compressed-tensors' own compressor."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.config import CompressionFormat

    levels, scale = integers(q)
    compressor = BaseCompressor.get_value_from_registry(CompressionFormat.int_quantized.value)
    packed = compressor.compress({"weight": levels.float() * scale, "weight_scale": scale}, w8a8_scheme())
    if not torch.equal(packed["weight"].to(torch.int32), levels):
        raise PqqpError(f"{q.path}: compressed-tensors rounded the weights differently from the harness's grid")
    return packed


def w8a8_config() -> dict:
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    config = QuantizationConfig(config_groups={"group_0": w8a8_scheme()}, ignore=["lm_head"],
                                format=CompressionFormat.int_quantized.value,
                                quantization_status=QuantizationStatus.COMPRESSED)
    return config.model_dump(exclude_none=True)


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """uint4 values [rows, cols] -> int32 [rows / 8, cols]: value 8i + j in bits 4j..4j+3 of row i."""
    rows, cols = values.shape
    grouped = values.to(torch.int64).reshape(rows // GPTQ_PACK, GPTQ_PACK, cols)
    shifts = (4 * torch.arange(GPTQ_PACK, dtype=torch.int64)).view(1, GPTQ_PACK, 1)
    packed = (grouped << shifts).sum(dim=1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_rows(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_rows`: int32 [rows / 8, cols] -> values [rows, cols] in 0..15."""
    shifts = (4 * torch.arange(GPTQ_PACK, dtype=torch.int64)).view(1, GPTQ_PACK, 1)
    values = (packed.to(torch.int64).unsqueeze(1) >> shifts) & 0xF
    return values.reshape(-1, packed.shape[1])


def gptq_tensors(q: QuantizedLinear) -> dict[str, torch.Tensor]:
    """qweight [in/8, out], qzeros [groups, out/8], scales [groups, out], g_idx [in] (AutoGPTQ v1 layout)."""
    levels, scale = integers(q)  # levels in -8..7, scale [out, groups]
    columns = q.linear.in_features
    if columns % GPTQ_PACK or q.linear.out_features % GPTQ_PACK:
        raise PqqpError(f"{q.path}: GPTQ packing needs sizes divisible by {GPTQ_PACK}, got {tuple(q.linear.weight.shape)}")
    groups = scale.shape[1]
    zeros = torch.full((groups, q.linear.out_features), 8 - 1)  # v1 stores zero - 1; symmetric zero is 8
    return {
        "qweight": pack_rows((levels + 8).T),
        "qzeros": pack_rows(zeros.T).T,
        "scales": scale.T.contiguous(),
        "g_idx": (torch.arange(columns) // q.grid.group).to(torch.int32),
    }


def gptq_dequantize(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The [out, in] float weight a GPTQ v1 checkpoint holds (the symmetric case: zero point 8)."""
    levels = unpack_rows(tensors["qweight"]).T.float() - 8  # [out, in]
    return levels * tensors["scales"].T[:, tensors["g_idx"].long()]


def gptq_group(q: QuantizedLinear) -> int:
    """GPTQ's `group_size` of a Linear's grid: -1 for one group per output channel."""
    assert q.grid is not None
    return -1 if q.grid.group == q.linear.in_features else q.grid.group


def gptq_config(report: "CompressionReport", model: "PreTrainedModel") -> dict:
    """`desc_act` is false: with `actorder` the harness's groups stay in natural column order (static groups)."""
    (group,) = {gptq_group(q) for q in decoder_linears(model, report)}
    return {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": False, "sym": True,
            "checkpoint_format": "gptq", "lm_head": False}
