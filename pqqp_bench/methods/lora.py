"""LoRA recovery (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models"), trained after
compression on the calibration windows (paper §5.4 "Parameter Efficient Fine-tuning", Fig. 8, App. C).

Each chosen decoder Linear W gets a trainable update (alpha / r) B A beside it, A [r, in] and B [out, r], with
B = 0 at the start, so the model starts as compressed. The adapters are trained with AdamW on the next-token
loss over the calibration windows, every other weight frozen; the gradient passes through the activation and
KV-cache fake quantizers by the straight-through estimator (`quantize.straight_through`).

The adapters stay unmerged, as in QLoRA (Dettmers et al. 2023): merging BA into W would refill pruned weights
and move quantized ones off their grid. So the compressed weights stay exactly as the earlier stages left
them, the engine sees the base layers under their own names (`blocks.block_linears`), and a later stage
(Q > L > P) prunes the base weights, with statistics gathered in the adapted model. The adapter branch reads
the layer input before activation quantization, as a separate higher-precision adapter GEMM beside a low-bit
kernel would; it adds memory that the compression ratio does not count (the report gives its size).

The layers are peft's (`inject_adapter_in_model`), so the model stays the same transformers class.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..blocks import block_linears, decoder_blocks
from ..errors import PqqpError
from .base import Method, Param, positive_int, ratio_in_unit

PEFT_INSTALL_HINT = "pip install 'pqqp-bench[peft]'"
ADAPTER = "pqqp_lora"  # peft's adapter name
MAX_GRAD_NORM = 1.0  # gradient clipping, as the transformers Trainer does by default



def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(text)
    return value


def layer_names(text: str) -> str:
    """`all`, or Linear names joined by '+' (`q_proj+v_proj`, `self_attn.o_proj`): normalised, duplicates dropped."""
    if text.lower() == "all":
        return "all"
    names = [name.strip() for name in text.split("+")]
    if not all(name and all(part.isidentifier() or part.isdigit() for part in name.split(".")) for name in names):
        raise ValueError(text)
    return "+".join(dict.fromkeys(names))


def chosen(linears: dict[str, nn.Linear], targets: str) -> list[str]:
    """The names of the block Linears that `targets` picks: all, or those whose name is or ends in a target."""
    if targets == "all":
        return list(linears)
    picked = targets.split("+")
    return [name for name in linears if any(name == t or name.endswith("." + t) for t in picked)]


def window_order(count: int, steps: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """[steps, batch] window indices: every epoch goes over the windows once in a fresh random order."""
    needed = steps * batch
    order = torch.cat([torch.randperm(count, generator=generator) for _ in range(-(-needed // count))])
    return order[:needed].view(steps, batch)


def next_token_loss(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of `model` over [n, seqlen] token ids."""
    return model(input_ids=windows, labels=windows, use_cache=False).loss


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators (adapter init, dropout) inside the block; restore them after it."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def adapter_layers(model: nn.Module) -> list[nn.Module]:
    """The peft LoRA layers inside the decoder blocks."""
    return [m for block in decoder_blocks(model) for m in block.modules() if hasattr(m, "lora_A")]


def add_adapters(model: nn.Module, targets: str, r: int, alpha: float, dropout: float) -> list[nn.Parameter]:
    """Wrap the chosen Linears of every decoder block in peft LoRA layers; freeze everything but the adapters
    (kept in float32 whatever the model dtype, as peft does for training) and return their parameters."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise PqqpError(f"method 'lora' needs the peft library: {PEFT_INSTALL_HINT}") from None
    paths = {id(module): name for name, module in model.named_modules()}
    names = []
    for block in decoder_blocks(model):
        linears = block_linears(block)
        names += [paths[id(linears[name])] for name in chosen(linears, targets)]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for param in model.parameters():
        param.requires_grad_(False)
    params = []
    for layer in adapter_layers(model):
        for module in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]):
            module.float()
            params += list(module.parameters())
    for param in params:
        param.requires_grad_(True)
    return params


def train_adapters(model: nn.Module, params: list[nn.Parameter], windows: torch.Tensor, steps: int, batch: int,
                   lr: float, generator: torch.Generator, progress: bool = True) -> list[float]:
    """AdamW (no weight decay, constant `lr`, gradient norm clipped at 1) on the next-token loss of `batch`
    windows a step; returns the loss of every step. Only the adapters are in training mode meanwhile (their
    dropout): the frozen model computes as it is evaluated. After, the adapters follow the model's mode."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = window_order(windows.shape[0], steps, batch, generator)
    layers = adapter_layers(model)
    for layer in layers:
        layer.train()
    losses = []
    try:
        with torch.enable_grad():
            bar = tqdm(order, desc=f"lora: {steps} steps", unit="step", leave=False, disable=not progress)
            for picked in bar:
                loss = next_token_loss(model, windows[picked.to(windows.device)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                optimizer.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        for layer in layers:
            layer.train(model.training)
    return losses


class LoRA(Method):
    """LoRA adapters on the decoder Linears, trained on the calibration windows to recover what compression lost.

    `steps` is the training budget: steps x batch windows (over and over the calibration set; the paper trains
    2 epochs of WikiText-2). Deterministic given the seed: the adapter init, the window order and any dropout
    are drawn from it. Compresses nothing (C = 1); the adapter size is in the report, not in the ratio.
    """

    name = "lora"
    slow = True
    kind = "tune"
    scope = "model"
    granularity = "low-rank adapters beside the decoder Linears"
    needs_calibration = True
    summary = "LoRA adapters trained on the calibration windows after compression (Hu et al. 2022, via peft)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("r", positive_int, 8, "a positive integer", "adapter rank r: A is [r, in], B is [out, r]"),
        Param("alpha", positive_float, 16.0, "a positive float", "LoRA alpha: the update is (alpha / r) B A"),
        Param("steps", positive_int, 20, "a positive integer", "optimizer steps: the training budget"),
        Param("lr", positive_float, 1e-3, "a positive float", "AdamW learning rate (constant)"),
        Param("batch", positive_int, 1, "a positive integer", "calibration windows per step"),
        Param("targets", layer_names, "all", "all, or Linear names joined by '+', e.g. q_proj+v_proj",
              "which Linears of every decoder block get an adapter (a name or its last part)"),
        Param("dropout", ratio_in_unit, 0.0, "a float in [0, 1)", "dropout on the adapter input while training"),
    )

    def ratio(self) -> float:
        return 1.0

    def validate(self, linears: dict[str, nn.Linear]) -> None:
        targets = self.values["targets"]
        missing = [t for t in ([] if targets == "all" else targets.split("+")) if not chosen(linears, t)]
        if missing:
            raise PqqpError(f"lora targets={missing[0]} names no Linear of the decoder blocks: accepted all, or "
                            f"names joined by '+' among {', '.join(linears)}")
        small = [name for name in chosen(linears, targets) if self.values["r"] > min(linears[name].weight.shape)]
        if small:
            raise PqqpError(f"lora r={self.values['r']} exceeds the smaller side of {small[0]} "
                            f"{tuple(linears[small[0]].weight.shape)}: accepted r <= min(out, in)")

    def apply_model(self, model: Any, calibration: torch.Tensor | None, device: torch.device, seed: int,
                    progress: bool = True) -> dict:
        """Add adapters to `model` in place and train them; return their size, their share of the block Linear
        weights, and the mean training loss of the first and of the last pass over the calibration windows."""
        if calibration is None or calibration.numel() == 0:
            raise PqqpError("lora needs calibration samples: pass calibration token ids")
        if adapter_layers(model):
            raise PqqpError("the model already carries LoRA adapters: accepted one lora stage per recipe")
        v = self.values
        dense = sum(lin.weight.numel() for block in decoder_blocks(model) for lin in block_linears(block).values())
        home = next(model.parameters()).device
        start = time.perf_counter()
        with seeded(seed, device):
            params = add_adapters(model, v["targets"], v["r"], v["alpha"], v["dropout"])
            model.to(device)
            try:
                losses = train_adapters(model, params, calibration.to(device), v["steps"], v["batch"], v["lr"],
                                        torch.Generator().manual_seed(seed), progress)
            finally:
                model.to(home)
        count = sum(p.numel() for p in params)
        span = min(len(losses), -(-calibration.shape[0] // v["batch"]))  # steps of one pass over the windows
        return {"adapter_params": count, "adapter_fraction": count / dense, "steps": v["steps"],
                "first_loss": sum(losses[:span]) / span, "last_loss": sum(losses[-span:]) / span,
                "train_seconds": time.perf_counter() - start}
