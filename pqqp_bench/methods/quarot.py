"""QuaRot-style rotation (Ashkboos et al. 2024, §4): an exact reparametrisation of a pre-norm decoder that
removes activation outliers, so that weights, activations and the KV cache quantize with less error.

1. Fold each RMSNorm's scale into the Linears that read it (and untie the LM head from the embeddings).
2. Rotate the residual stream by a randomised Hadamard Q: embeddings E Q, residual readers W Q, residual
   writers Q^T W. RMSNorm with unit scale commutes with Q, so the model computes the same function.
3. Rotate each value head by a Hadamard H_d (v_proj rows, o_proj columns), fused, so the V cache is rotated.
4. Online Hadamards: before down_proj (its input is not the residual, so it is rotated at run time, with
   H fused into down_proj), and on queries and keys after RoPE (scores unchanged), so the K cache is rotated.

A rotation compresses nothing: in a recipe it is the basis that the quantizer (and, in both orders, the
pruner) work in, e.g. `quarot > rtn:w=4,a=4,kv=4 > sparsegpt:p=0.3`. Pruning the rotated model is a valid
recipe (paper Finding 3: rotation changes later pruning decisions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..blocks import decoder_blocks
from ..errors import PqqpError
from .base import Method, Param
from .hadamard import hadamard_factors, orthonormal_hadamard, random_rotation
from .quantize import enable_attention_function

READERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
WRITERS = ("self_attn.o_proj", "mlp.down_proj")
NORMS = {"input_layernorm": READERS[:3], "post_attention_layernorm": READERS[3:]}


@dataclass
class OnlineHadamard:
    """Forward pre-hook x -> x (A (x) B) / sqrt(n), applied as two small matrix products, not one n x n."""

    a: torch.Tensor
    b: torch.Tensor

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        m, p = self.a.shape[0], self.b.shape[0]
        y = torch.einsum("...ij,ik,jl->...kl", x.reshape(*x.shape[:-1], m, p), self.a.to(x), self.b.to(x))
        return (y.reshape(x.shape), *args[1:])


def child(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path)


def check_layout(model: nn.Module, blocks: nn.ModuleList) -> None:
    """QuaRot needs pre-norm blocks whose norms only feed Linears (Llama, Mistral, Qwen): say so otherwise."""
    block = blocks[0]
    norms = [name for name, m in block.named_children() if "norm" in type(m).__name__.lower()]
    missing = [p for p in (*READERS, *WRITERS, *NORMS) if not _has(block, p)]
    if missing or sorted(norms) != sorted(NORMS) or not hasattr(model, "lm_head"):
        raise PqqpError(
            f"quarot needs Llama-style pre-norm blocks (norms {', '.join(NORMS)} feeding q/k/v and gate/up); "
            f"{type(block).__name__} has norms {norms}{' and lacks ' + ', '.join(missing) if missing else ''}. "
            "Post-norms on the residual branch (Gemma 2/3) do not commute with a rotation; accepted: Llama-family models"
        )


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def fold_norm(norm: nn.Module, readers: list[nn.Linear]) -> None:
    """W <- W diag(g); g <- 1: the norm's scale moves into every Linear that reads the norm's output."""
    scale = norm.weight.data.double()
    for linear in readers:
        linear.weight.data = (linear.weight.data.double() * scale.unsqueeze(0)).to(linear.weight.dtype)
    norm.weight.data.fill_(1.0)


def rotate_inputs(linear: nn.Linear, rotation: torch.Tensor) -> None:
    rotation = rotation.to(linear.weight.device)
    linear.weight.data = (linear.weight.data.double() @ rotation).to(linear.weight.dtype)


def rotate_outputs(linear: nn.Linear, rotation: torch.Tensor) -> None:
    rotation = rotation.to(linear.weight.device)
    linear.weight.data = (rotation.T @ linear.weight.data.double()).to(linear.weight.dtype)
    if linear.bias is not None:
        linear.bias.data = (linear.bias.data.double() @ rotation).to(linear.bias.dtype)


def rotate_value_heads(attention: nn.Module, head_dim: int) -> None:
    """v_proj rows of each head <- H^T rows; o_proj columns of each head <- columns H: values live rotated."""
    v, o = attention.v_proj, attention.o_proj
    h = orthonormal_hadamard(head_dim).to(v.weight.device)
    rows = v.weight.data.double().reshape(-1, head_dim, v.in_features)
    v.weight.data = torch.einsum("dk,hdi->hki", h, rows).reshape(v.weight.shape).to(v.weight.dtype)
    if v.bias is not None:
        v.bias.data = (v.bias.data.double().reshape(-1, head_dim) @ h).reshape(-1).to(v.bias.dtype)
    cols = o.weight.data.double().reshape(o.out_features, -1, head_dim)
    o.weight.data = (cols @ h).reshape(o.weight.shape).to(o.weight.dtype)


class QuaRot(Method):
    name = "quarot"
    kind = "transform"
    scope = "model"
    granularity = "residual stream, heads and MLP inner dimension"
    needs_calibration = False
    summary = "randomised Hadamard rotations fused into the weights, plus online ones (Ashkboos et al. 2024)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("seed", int, 0, "an integer", "seed of the random signs, added to the experiment seed"),
    )

    def ratio(self) -> float:
        return 1.0

    def check_architecture(self, model: nn.Module) -> None:
        check_layout(model, decoder_blocks(model))

    @torch.no_grad()
    def apply_model(self, model: nn.Module, calibration: torch.Tensor | None, device: torch.device, seed: int,
                    progress: bool = True) -> dict:

        blocks = decoder_blocks(model)
        check_layout(model, blocks)
        embed, head = model.get_input_embeddings(), model.lm_head
        if head.weight is embed.weight:  # the head is rotated differently (norm folded in): untie it
            head.weight = nn.Parameter(head.weight.data.clone())
            model.config.tie_word_embeddings = False
        rotation, kind = random_rotation(embed.weight.shape[1], seed + self.values["seed"])
        attention = child(blocks[0], "self_attn")
        head_dim = attention.head_dim
        for block in blocks:
            for norm, readers in NORMS.items():
                fold_norm(child(block, norm), [child(block, r) for r in readers])
            for path in READERS:
                rotate_inputs(child(block, path), rotation)
            for path in WRITERS:
                rotate_outputs(child(block, path), rotation)
            rotate_value_heads(child(block, "self_attn"), head_dim)
            self.rotate_down_online(child(block, "mlp.down_proj"))
            child(block, "self_attn").pqqp_qk_rotation = orthonormal_hadamard(head_dim).float()
        fold_norm(model.get_decoder().norm, [head])
        rotate_inputs(head, rotation)
        embed.weight.data = (embed.weight.data.double() @ rotation.to(embed.weight.device)).to(embed.weight.dtype)
        enable_attention_function(model.config)
        return {"residual": kind, "heads": f"Hadamard {head_dim}", "online": ["mlp.down_proj input", "queries and keys"]}

    @staticmethod
    def rotate_down_online(down: nn.Linear) -> None:
        factors = hadamard_factors(down.in_features)
        if factors is None:
            raise PqqpError(f"quarot: no Hadamard matrix of order {down.in_features} (down_proj input) is constructible here")
        a, b = (f / f.shape[0] ** 0.5 for f in factors)
        rotate_inputs(down, torch.kron(a, b))
        down.register_forward_pre_hook(OnlineHadamard(a.float(), b.float()))
