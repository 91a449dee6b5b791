"""Methods in isolation: quantization grids, pruning masks, tie-breaks, parameter validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pqqp_bench.errors import PqqpError
from pqqp_bench.methods import METHODS, LayerWork
from pqqp_bench.methods.base import PackedMasks
from pqqp_bench.methods.prune import Magnitude, Wanda, ascending_order, keep_mask
from pqqp_bench.methods.quantize import fake_quant_asymmetric, fake_quant_symmetric, quantize_weight
from pqqp_bench.methods.rtn import RTN


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_registry_declares_kind_granularity_ratio_and_calibration() -> None:
    assert set(METHODS) >= {"magnitude", "wanda", "rtn"}
    for cls in METHODS.values():
        assert cls.kind in ("prune", "quant", "transform", "share", "tune") and cls.granularity and isinstance(cls.needs_calibration, bool)
        assert cls.scope in ("layer", "model")
    assert Wanda(p=0.75).ratio() == pytest.approx(4.0)
    assert Magnitude(nm=(2, 4)).ratio() == pytest.approx(2.0)
    assert RTN(w=4).ratio() == pytest.approx(4.0) and RTN(w=3).ratio() == pytest.approx(16 / 3)
    assert METHODS["wanda"].needs_calibration and not METHODS["rtn"].needs_calibration


@pytest.mark.parametrize("clip", ["mse", "none"])
@pytest.mark.parametrize("group", [None, 16])
def test_weight_rtn_error_falls_as_bits_rise(clip: str, group: int | None) -> None:
    weight = randn(32, 64)
    errors = [(quantize_weight(weight, b, group, clip) - weight).pow(2).mean().item() for b in range(2, 17)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-8


def test_activation_and_kv_error_falls_as_bits_rise() -> None:
    x = randn(4, 16, 64)
    sym = [(fake_quant_symmetric(x, b) - x).abs().mean().item() for b in range(2, 17)]
    asym = [(fake_quant_asymmetric(x, b) - x).abs().mean().item() for b in range(2, 17)]
    assert all(a > b for a, b in zip(sym, sym[1:])) and all(a > b for a, b in zip(asym, asym[1:]))


def test_grids_have_the_declared_number_of_levels_and_keep_zero() -> None:
    row = torch.linspace(-1, 1, 1001).unsqueeze(0)
    assert fake_quant_symmetric(row, 4).unique().numel() == 15  # -7..7 used; -8 only under clipping
    assert fake_quant_asymmetric(row.clamp(min=0), 3).unique().numel() == 8  # 0..7 over [0, 1]
    assert fake_quant_symmetric(torch.zeros(1, 8), 4).eq(0).all()
    assert (fake_quant_asymmetric(row, 4)[row == 0] == 0).all()


def test_mse_clipping_is_no_worse_than_no_clipping() -> None:
    weight = randn(64, 128)
    weight[:, 0] *= 20  # an outlier column: clipping should pay off
    err = {c: (quantize_weight(weight, 3, None, c) - weight).pow(2).sum().item() for c in ("mse", "none")}
    assert err["mse"] < err["none"]


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.77])
def test_unstructured_mask_prunes_exactly_the_requested_share_of_each_row(p: float) -> None:
    weight = randn(16, 70)
    mask = keep_mask(weight.abs(), weight, None, p, None)
    assert (~mask).sum(dim=1).eq(round(p * 70)).all()
    kept_min = weight.abs().masked_fill(~mask, float("inf")).min(dim=1).values
    pruned_max = weight.abs().masked_fill(mask, -1).max(dim=1).values
    assert (pruned_max <= kept_min).all()


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4)])
def test_n_of_m_masks_are_exact(n: int, m: int) -> None:
    weight = randn(8, 64)
    mask = keep_mask(weight.abs(), weight, None, 1 - n / m, (n, m))
    assert mask.reshape(8, -1, m).sum(dim=-1).eq(n).all()


def test_ties_are_broken_by_reference_magnitude_not_by_index() -> None:
    score = torch.tensor([[1.0, 1.0, 1.0, 1.0, 5.0]])
    reference = torch.tensor([[0.4, -0.1, 0.3, 0.2, 9.0]])
    assert ascending_order(score, reference.abs()).tolist() == [[1, 3, 2, 0, 4]]
    assert keep_mask(score, reference, None, 0.4, None).tolist() == [[True, False, True, False, True]]


def test_a_second_pruning_stage_adds_to_the_first_and_keeps_it() -> None:
    weight = randn(8, 40)
    first = keep_mask(weight.abs(), weight, None, 0.25, None)
    second = keep_mask(randn(8, 40, seed=1).abs(), weight, first, 0.25, None)
    assert (~second).sum(dim=1).eq(20).all()
    assert not (second & ~first).any()


def test_wanda_scores_weight_magnitude_times_input_norm() -> None:
    linear = nn.Linear(6, 3, bias=False)
    linear.weight.data = torch.ones(3, 6)
    sqnorm = torch.tensor([1.0, 4.0, 9.0, 16.0, 25.0, 36.0])
    work = LayerWork(0, linear, {"l": linear}, None, {"l": linear.weight.data.clone()}, stats={"l": sqnorm})
    Wanda(p=0.5).apply(work)
    assert work.masks["l"].tolist() == [[False, False, False, True, True, True]] * 3
    assert linear.weight.data[:, :3].eq(0).all()


def test_rtn_rejects_group_sizes_that_do_not_divide_the_layer() -> None:
    with pytest.raises(PqqpError, match="group size g=48 does not divide in_features=64"):
        RTN(w=4, g=48).validate({"q_proj": nn.Linear(64, 64)})
    with pytest.raises(PqqpError, match="nm=2:3 needs in_features divisible by 3"):
        Wanda(nm=(2, 3)).validate({"q_proj": nn.Linear(64, 64)})


@pytest.mark.parametrize("shape", [(3, 6), (7, 13), (1, 1), (64, 576)])
def test_packed_masks_read_back_exactly_at_one_bit_per_weight(shape: tuple[int, int]) -> None:
    masks = PackedMasks()
    mask = randn(*shape, seed=shape[1]) > 0
    masks["l"] = mask
    assert torch.equal(masks["l"], mask) and masks["l"].dtype == torch.bool
    assert masks._packed["l"][0].numel() == -(-mask.numel() // 8)
    assert list(masks) == ["l"] and masks.get("other") is None
    with pytest.raises(TypeError, match="bool tensor"):
        masks["l"] = mask.float()


@pytest.mark.parametrize("kind", ["continuous", "ties", "pruned-before", "zeros"])
def test_threshold_mask_equals_ranking_every_entry(kind: str) -> None:
    """The fast mask of long rows is the mask of the full (score, tiebreak, position) ranking, bit for bit: with
    continuous scores, heavy ties (quantized magnitudes), earlier-pruned entries (-inf), signed zeros, and per-row
    or shared counts including 0 and more than the row holds."""
    from pqqp_bench.methods.prune import ranked_mask, threshold_mask

    gen = torch.Generator().manual_seed(hash(kind) % 1000)
    for trial in range(60):
        rows, n = int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(64, 300, (1,), generator=gen))
        if kind == "continuous":
            score = torch.randn(rows, n, generator=gen)
        elif kind == "ties":
            score = torch.randint(-3, 4, (rows, n), generator=gen).float()
        elif kind == "pruned-before":
            score = torch.randn(rows, n, generator=gen).masked_fill(torch.rand(rows, n, generator=gen) < 0.3, float("-inf"))
        else:
            score = torch.zeros(rows, n).masked_fill(torch.rand(rows, n, generator=gen) < 0.5, -0.0)
        tiebreak = torch.randint(0, 5, (rows, n), generator=gen).float()
        count = (torch.randint(0, n + 3, (rows,), generator=gen) if trial % 2
                 else torch.tensor(int(torch.randint(0, n + 3, (1,), generator=gen))))
        assert torch.equal(ranked_mask(score, tiebreak, count), threshold_mask(score, tiebreak, count))
