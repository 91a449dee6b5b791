"""llm-compressor's SparseGPT, Wanda, GPTQ and round-to-nearest as pqqp-bench methods (model scope).

Parameters mirror the harness's own `sparsegpt`, `wanda`, `gptq` and `rtn` (p, nm, w, g, clip, actorder,
damp, block), with llm-compressor's defaults where the two differ (`actorder=true`: its static activation
ordering; `clip=none`: its min-max observer). Only the Linears of the decoder blocks are compressed. Nothing in
these modifiers is random and the calibration samples are fed in order, so runs are deterministic; oneshot
takes no seed, and the harness's seed is not used. oneshot picks its compute device itself (the first
accelerator, else the CPU): the harness's `device` is not passed on.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any, ClassVar

import torch
from torch import nn

from pqqp_bench.errors import PqqpError
from pqqp_bench.methods.base import Method, Param, boolean, positive_int, positive_int_or_none, ratio_in_unit
from pqqp_bench.methods.prune import Pruner
from pqqp_bench.methods.quantizer import Quantizer

from . import convert, session

if importlib.util.find_spec("llmcompressor") is None:  # the registry lists the plugin as broken, with this reason
    raise ImportError("llmcompressor is not installed here: run plugins/llm-compressor/setup_venv.sh and use the "
                      "python of its venv")

LIBRARY = f"llmcompressor {importlib.metadata.version('llmcompressor')}"
IGNORE = ["re:.*lm_head"]  # targets are exact decoder Linear names; lm_head is named anyway, as the library advises


def open_unit(text: str) -> float:
    """A ratio in (0, 1): llm-compressor's SparseGPT prunes at least one weight per block even at p=0."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise ValueError(text)
    return value


def weight_bits(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 8:
        raise ValueError(text)
    return value


def observer_clip(text: str) -> str:
    if text.lower() not in ("none", "mse"):
        raise ValueError(text)
    return text.lower()


P = Param("p", open_unit, None, "a float in (0, 1)", "fraction of each layer's weights set to zero (llm-compressor's "
          "sparsity: of the whole layer, earlier zeros included)")
DAMP = Param("damp", ratio_in_unit, 0.01, "a float in [0, 1)",
             "dampening, as a fraction of mean(diag H) (dampening_frac)")
BLOCK = Param("block", positive_int, 128, "a positive integer", "columns per lazy-update block (block_size)")
W = Param("w", weight_bits, None, "an integer 2..8", "weight bits (symmetric int)")
CLIP = Param("clip", observer_clip, "none", "none or mse", "scale observer: none = min-max (llm-compressor's default), "
             "mse = its MSE grid search")
OBSERVERS = {"none": "memoryless_minmax", "mse": "memoryless_mse"}


class LlmcMethod(Method):
    """What the four methods share: run their modifier through oneshot on the decoder Linears."""

    scope = "model"

    def modifier(self, targets: list[str]) -> Any:
        raise NotImplementedError

    def outcome(self, targets: list[convert.Target]) -> dict:
        """What the stage hands back to the engine (masks, or bits and grids) and records."""
        raise NotImplementedError

    def full(self) -> dict[str, Any]:
        """The cache key also names the llm-compressor release: another one is another measurement, even where
        this adapter's version stays the same."""
        return {**super().full(), "library": LIBRARY}

    @torch.no_grad()
    def apply_model(self, model: nn.Module, calibration: torch.Tensor | None, device: torch.device, seed: int,
                    progress: bool = True) -> dict:
        targets = convert.decoder_targets(model)
        session.library()  # imported quietly before the modifier's module imports it
        modifier = self.modifier([target.name for target in targets])
        before = session.Attributes.of(model)
        try:
            messages = session.run_oneshot(model, [modifier], calibration if self.needs_calibration else None, progress)
            session.undispatch(model)
            result = {"library": LIBRARY, "modifier": type(modifier).__name__, **self.outcome(targets)}
        finally:  # also where oneshot failed: no wrapper of llm-compressor's is left on the model
            session.undispatch(model)
            for target in targets:
                convert.strip(target.module)
            before.restore(model)
        return {**result, "library warnings": messages} if messages else result


class LlmcPruner(LlmcMethod, Pruner):
    """p: unstructured, the share p of each layer (SparseGPT: of each block of columns; Wanda: of each row);
    nm=N:M keeps N of every M consecutive input weights (llm-compressor's mask_structure "M-N:M")."""

    params: ClassVar[tuple[Param, ...]] = (P, Pruner.params[1])

    def pruning(self, targets: list[str]) -> dict[str, Any]:
        """The modifier arguments both pruners take."""
        nm = self.values["nm"]
        structure = "0:0" if nm is None else f"{nm[1] - nm[0]}:{nm[1]}"
        return {"sparsity": self.sparsity, "mask_structure": structure, "targets": targets, "ignore": IGNORE}

    def outcome(self, targets: list[convert.Target]) -> dict:
        convert.finish_quantized(targets)
        return {"masks": convert.kept_masks(targets), "zero_fraction": round(convert.zero_fraction(targets), 6)}


class LlmcSparseGPT(LlmcPruner):
    name = "llmc-sparsegpt"
    slow = True
    implements = "sparsegpt"  # beside ours in the leaderboard's implementations table
    needs_calibration = True
    granularity = "weight (unstructured per column block, or N:M groups)"
    summary = "llm-compressor's SparseGPTModifier through oneshot"
    params: ClassVar[tuple[Param, ...]] = LlmcPruner.params + (DAMP, BLOCK)

    def validate(self, linears: dict[str, nn.Linear]) -> None:
        super().validate(linears)
        nm, block = self.values["nm"], self.values["block"]
        if nm and block % nm[1]:
            raise PqqpError(f"llmc-sparsegpt block={block} must be a multiple of M={nm[1]}: accepted a block size "
                            "divisible by M")

    def modifier(self, targets: list[str]) -> Any:
        from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

        return SparseGPTModifier(**self.pruning(targets), dampening_frac=self.values["damp"],
                                 block_size=self.values["block"])


class LlmcWanda(LlmcPruner):
    name = "llmc-wanda"
    implements = "wanda"  # beside ours in the leaderboard's implementations table
    needs_calibration = True
    granularity = "weight (unstructured per output row, or N:M groups)"
    summary = "llm-compressor's WandaPruningModifier through oneshot"

    def modifier(self, targets: list[str]) -> Any:
        from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier

        return WandaPruningModifier(**self.pruning(targets))


class LlmcQuantizer(LlmcMethod, Quantizer):
    """Weight-only symmetric int quantization, per output channel (g=none) or per group of g inputs."""

    params: ClassVar[tuple[Param, ...]] = (
        W,
        Param("g", positive_int_or_none, None, "a positive group size dividing in_features, or none",
              "weight group size (none: per output channel)"),
        CLIP,
    )

    def check(self) -> None:
        if self.values["w"] is None:
            raise PqqpError(f"method '{self.name}' needs weight bits w=2..8 (weight-only: llm-compressor's "
                            "activation and KV schemes are not offered)")

    def scheme(self, targets: list[str], **extra: Any) -> dict:
        """config_groups for the modifier: one weight-only scheme over exactly the decoder Linears."""
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        group = self.values["g"]
        weights = QuantizationArgs(num_bits=self.values["w"], type="int", symmetric=True,
                                   strategy="channel" if group is None else "group", group_size=group,
                                   observer=OBSERVERS[self.values["clip"]], **extra)
        return {"group_0": QuantizationScheme(targets=targets, weights=weights)}

    def outcome(self, targets: list[convert.Target]) -> dict:
        grids = convert.finish_quantized(targets)
        missing = [t.path for t in targets if t.path not in grids]
        if missing:
            raise PqqpError(f"{self.canonical()}: llm-compressor left {len(missing)} decoder Linears unquantized "
                            f"(first {missing[0]}): accepted a model whose decoder Linears it can target")
        return {"bits": {path: grid.bits for path, grid in grids.items()}, "grids": grids}


class LlmcGPTQ(LlmcQuantizer):
    name = "llmc-gptq"
    slow = True
    implements = "gptq"  # beside ours in the leaderboard's implementations table
    needs_calibration = True
    granularity = "weight (per output channel or group)"
    summary = "llm-compressor's GPTQModifier through oneshot (weight-only int)"
    params: ClassVar[tuple[Param, ...]] = LlmcQuantizer.params + (
        Param("actorder", boolean, True, "true or false", "static activation ordering (llm-compressor's default)"),
        DAMP,
        BLOCK,
    )

    def modifier(self, targets: list[str]) -> Any:
        from llmcompressor.modifiers.gptq import GPTQModifier

        return GPTQModifier(config_groups=self.scheme(targets), ignore=IGNORE, block_size=self.values["block"],
                            dampening_frac=self.values["damp"], actorder="static" if self.values["actorder"] else None)


class LlmcRTN(LlmcQuantizer):
    name = "llmc-rtn"
    implements = "rtn"  # beside ours in the leaderboard's implementations table
    needs_calibration = False
    granularity = "weight (per output channel or group)"
    summary = "llm-compressor's QuantizationModifier through oneshot: data-free round-to-nearest (weight-only int)"

    def modifier(self, targets: list[str]) -> Any:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return QuantizationModifier(config_groups=self.scheme(targets), ignore=IGNORE)
