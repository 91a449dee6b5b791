"""Our GPTQ against IST-DASLab's reference `GPTQ.fasterquant` (github.com/IST-DASLab/gptq) on real layers of the
embedded model, with the same grid: `gptq:w=B,g=G,clip=none,actorder=true,grid=full` against the reference's
`Quantizer(bits=B, perchannel=True, sym=True, mse=False)` with `groupsize=G, actorder=True, static_groups=True`.

    git clone https://github.com/IST-DASLab/gptq /tmp/gptq-reference
    python benchmarks/vs_gptq_reference.py --reference /tmp/gptq-reference [--bits 4 --group 64]

Both quantize the same weights from the same calibration inputs (the embedded model's first `--calib-samples`
windows through the dense model, each layer's inputs captured by a forward hook; the reference accumulates its
own Hessian with `add_batch`, ours is X^T X, a scale GPTQ does not depend on). Per layer it prints the share of
weights on the same grid point, and how far apart (in grid steps) the others are.

Two modes, both printed:
- `native`: each implementation with its own arithmetic. They differ only there: the reference accumulates H
  sample by sample with a running rescale and inverts it in float32, ours takes X^T X in one product and inverts
  in float64, so a weight whose compensated value lies within those last bits of a rounding boundary can go to
  the neighbouring grid point, after which the two sweeps compensate differently along the rest of its row.
- `same arithmetic`: the reference gets our X^T X as its H and ours factorises it in float32 as the reference
  does (`GPTQ.factor`). Then every weight must be identical, bit for bit.
The reference code is imported from the given checkout and never copied. tests/test_gptq_reference.py runs this
when PQQP_GPTQ_REFERENCE names a checkout.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tabulate import tabulate

from pqqp_bench.blocks import block_linears, decoder_blocks
from pqqp_bench.methods.base import LayerWork
from pqqp_bench.methods.gptq import GPTQ
from pqqp_bench.spec import parse_recipe

LAYERS = ("0.self_attn.q_proj", "0.mlp.down_proj", "15.self_attn.o_proj", "15.mlp.gate_proj", "29.mlp.down_proj")


@dataclass(frozen=True)
class Agreement:
    layer: str
    weights: int
    same: float  # share of weights on the same grid point
    one_step: float  # share one grid step apart
    max_steps: float
    rows_same: float  # share of rows identical throughout


def reference_modules(path: Path):
    """The reference's `gptq` and `quant` modules, imported from its checkout (CPU: its cuda.synchronize is a no-op)."""
    sys.path.insert(0, str(path))
    try:
        gptq, quant = importlib.import_module("gptq"), importlib.import_module("quant")
    finally:
        sys.path.remove(str(path))
    if not torch.cuda.is_available():
        gptq.torch.cuda.synchronize = lambda *args, **kwargs: None
    return gptq, quant


def layer_inputs(model: torch.nn.Module, names: tuple[str, ...], samples: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """The inputs every named Linear (`<block>.<path>`) sees while the dense model reads `samples`."""
    blocks = decoder_blocks(model)
    linears = {name: block_linears(blocks[int(name.split(".", 1)[0])])[name.split(".", 1)[1]] for name in names}
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    hooks = [lin.register_forward_pre_hook(lambda mod, args, n=name: seen[n].append(args[0].detach().clone()))
             for name, lin in linears.items()]
    with torch.no_grad():
        for row in samples:
            model(row.unsqueeze(0), use_cache=False)
    for hook in hooks:
        hook.remove()
    return seen


def float32_factor(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`inverse_hessian_factor` in the reference's arithmetic: float32 throughout, the damping added in place."""
    h = hessian.clone().float()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    diagonal = torch.arange(h.shape[0])
    h[diagonal, diagonal] += damp * torch.mean(torch.diag(h))
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True), dead


class ReferenceArithmetic(GPTQ):
    factor = staticmethod(float32_factor)


def compare_layer(name: str, linear: torch.nn.Linear, inputs: list[torch.Tensor], gptq, quant, bits: int,
                  group: int, same_arithmetic: bool) -> Agreement:
    flat = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs])
    hessian = flat.T @ flat
    theirs = copy.deepcopy(linear)
    ref = gptq.GPTQ(theirs)
    ref.quantizer = quant.Quantizer()
    ref.quantizer.configure(bits, perchannel=True, sym=True, mse=False)
    if same_arithmetic:
        ref.H = hessian.clone()
    else:
        for x in inputs:
            ref.add_batch(x[0], None)
    ref.fasterquant(blocksize=128, percdamp=0.01, groupsize=group, actorder=True, static_groups=True)

    ours = copy.deepcopy(linear)
    method = parse_recipe(f"gptq:w={bits},g={group},clip=none,actorder=true,grid=full").stages[0]
    if same_arithmetic:
        method = ReferenceArithmetic(**method.values)
    work = LayerWork(0, torch.nn.Module(), {name: ours}, None, {}, stats={name: hessian})
    with torch.no_grad():
        method.quantize_weights(work)

    step = work.grids[name].columns(0, linear.in_features)[0]
    steps = ((ours.weight.data - theirs.weight.data) / step).abs().round()
    return Agreement(name, steps.numel(), (steps == 0).float().mean().item(), (steps == 1).float().mean().item(),
                     steps.max().item(), (steps == 0).all(dim=1).float().mean().item())


def agreements(reference: Path, bits: int = 4, group: int = 64, calib_samples: int = 8, seqlen: int = 512,
               layers: tuple[str, ...] = LAYERS, same_arithmetic: bool = False) -> list[Agreement]:
    from pqqp_bench.experiment import Experiment, Settings

    gptq, quant = reference_modules(reference)
    experiment = Experiment(Settings(calib_samples=calib_samples, seqlen=seqlen, eval_tokens=seqlen, device="cpu",
                                     progress=False, prefix_cache=0))
    model = experiment.loaded.model
    seen = layer_inputs(model, layers, experiment.calibration)
    blocks = decoder_blocks(model)
    found = []
    for name in layers:
        index, path = name.split(".", 1)
        found.append(compare_layer(name, block_linears(blocks[int(index)])[path], seen[name], gptq, quant, bits, group,
                                   same_arithmetic))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, type=Path, help="a checkout of github.com/IST-DASLab/gptq")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--calib-samples", type=int, default=8)
    args = parser.parse_args()
    rows = [(mode, a.layer, a.weights, f"{100 * a.same:.4f}%", f"{100 * a.one_step:.4f}%", f"{a.max_steps:g}",
             f"{100 * a.rows_same:.2f}%")
            for mode, same in (("native", False), ("same arithmetic", True))
            for a in agreements(args.reference, args.bits, args.group, args.calib_samples, same_arithmetic=same)]
    print(tabulate(rows, headers=["mode", "layer", "weights", "same grid point", "one step apart", "max steps",
                                  "rows identical"], disable_numparse=True))


if __name__ == "__main__":
    main()
