"""Weight grids: the restricted and full symmetric grids (`grid=`), the full one bit for bit against
compressed-tensors."""

from __future__ import annotations

import pytest
import torch

from pqqp_bench.errors import PqqpError
from pqqp_bench.methods.quantize import fit_grid
from pqqp_bench.spec import parse_recipe


def weights(rows: int = 64, cols: int = 256, seed: int = 0) -> torch.Tensor:
    """Gaussian weights with a few outliers, as real layers have."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w[torch.rand(rows, cols, generator=g) < 0.002] *= 20
    return w


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_restricted_and_full_grids_have_their_steps(bits: int) -> None:
    w = weights()
    absmax = w.abs().amax(dim=1)
    restricted = fit_grid(w, bits, None, "none")
    full = fit_grid(w, bits, None, "none", grid="full")
    assert torch.equal(restricted.scale[:, 0], absmax / (2 ** (bits - 1) - 1))
    assert torch.equal(full.scale[:, 0], 2 * absmax / (2**bits - 1))
    q = (full.round(w) / full.scale).round()
    assert q.min() == -(2 ** (bits - 1)) and q.max() == 2 ** (bits - 1) - 1  # the full grid uses both ends


@pytest.mark.parametrize("bits, group", [(4, 64), (4, None), (8, 128), (3, 32)])
def test_full_grid_equals_compressed_tensors_bit_for_bit(bits: int, group: int | None) -> None:
    """`grid=full,clip=none` is compressed-tensors' symmetric min-max int grid: the same scales and the same
    fake-quantized weights, every bit."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    w = weights()
    strategy = {"strategy": "group", "group_size": group} if group else {"strategy": "channel"}
    args = QuantizationArgs(num_bits=bits, symmetric=True, **strategy)
    view = w.reshape(w.shape[0], -1, group or w.shape[1])
    scale, zero = calculate_qparams(view.amin(dim=-1), view.amax(dim=-1), args)
    ours = fit_grid(w, bits, group, "none", grid="full")
    assert torch.equal(ours.scale, scale.reshape(ours.scale.shape))
    theirs = fake_quantize(w, scale.reshape(w.shape[0], -1), zero.reshape(w.shape[0], -1), args)
    assert torch.equal(ours.round(w), theirs)


def test_grid_parameter_is_checked_and_reaches_gptq() -> None:
    assert parse_recipe("gptq:w=4,grid=full").stages[0].values["grid"] == "full"
    assert parse_recipe("rtn:w=4").stages[0].values["grid"] == "restricted"
    with pytest.raises(PqqpError, match="grid"):
        parse_recipe("rtn:w=4,grid=wide")
