"""The 4-bit sparse delta kernel against its torch reference (Triton's interpreter on CPU,
compiled on CUDA)."""

from __future__ import annotations

import pytest
import torch

from memsdk.kernels.delta import merge_delta_, pack_delta, unpack_delta
from memsdk.kernels.delta.naive import dequantize_naive, pack_delta_naive
from memsdk.kernels.dispatch import relative_rms

TOLERANCE = 1e-6  # pack and merge are exact up to fp32 rounding of value / scale

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _case(shape: tuple[int, ...], keep: float, dtype: torch.dtype, device: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    delta = (torch.randn(shape, generator=generator) * 1e-2).to(dtype).to(device)
    mask = (torch.rand(shape, generator=generator) < keep).to(device)
    return delta, mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("shape", "keep", "group_size"),
    [((63,), 1.0, 16), ((37, 41), 0.3, 64), ((128, 256), 0.01, 64), ((5, 7), 0.0, 32)],
)
def test_pack_matches_reference(shape, keep, group_size, dtype, device) -> None:
    delta, mask = _case(shape, keep, dtype, device)
    packed = pack_delta(delta, mask, group_size=group_size, backend="triton")
    indices, codes, scales = pack_delta_naive(delta.cpu(), mask.cpu(), group_size=group_size)
    assert torch.equal(packed.indices.cpu(), indices)
    assert torch.equal(packed.scales.cpu(), scales)
    if not indices.numel():
        return
    values = dequantize_naive(codes, scales, indices.numel(), group_size=group_size)
    kernel_values = dequantize_naive(
        packed.codes.cpu(), packed.scales.cpu(), indices.numel(), group_size=group_size
    )
    assert relative_rms(kernel_values, values) < 1e-3
    # 4-bit symmetric quantisation: each value is within half a step of its scale.
    kept = delta.reshape(-1)[indices.to(device)].float().cpu()
    step = packed.scales.cpu().repeat_interleave(group_size)[: indices.numel()]
    assert bool(((kept - kernel_values).abs() <= step / 2 * (1 + 1e-5)).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_and_unpack_match_reference(dtype, device) -> None:
    delta, mask = _case((63, 45), 0.2, torch.float32, device, seed=1)
    packed = pack_delta(delta, mask, backend="torch")
    packed = type(packed)(
        packed.indices.to(device), packed.codes.to(device), packed.scales.to(device), packed.shape
    )
    base = torch.randn(63, 45, generator=torch.Generator().manual_seed(2)).to(dtype).to(device)
    expected = merge_delta_(base.clone(), packed, alpha=0.5, backend="torch")
    merged = merge_delta_(base.clone(), packed, alpha=0.5, backend="triton")
    assert relative_rms(merged, expected) < (TOLERANCE if dtype == torch.float32 else 1e-2)
    untouched = ~mask
    assert torch.equal(merged[untouched], base[untouched])
    dense = unpack_delta(packed, backend="triton")
    assert relative_rms(dense, unpack_delta(packed, backend="torch")) < TOLERANCE
    assert bool((dense[untouched] == 0).all())


def test_merge_writes_only_kept_entries() -> None:
    """The base is filled with NaN except at kept entries: a read or write anywhere else would
    leave NaN where the reference has numbers, or put numbers where NaN must stay."""
    delta, mask = _case((97,), 0.4, torch.float32, "cpu", seed=3)
    packed = pack_delta(delta, mask, group_size=16, backend="triton")
    base = torch.full((97,), float("nan"))
    base[mask] = 1.0
    merge_delta_(base, packed, backend="triton")
    assert bool(torch.isnan(base[~mask]).all())
    assert bool(torch.isfinite(base[mask]).all())
    assert relative_rms(base[mask] - 1.0, delta[mask]) < 0.1  # 4-bit error, not a kernel error


def test_quantisation_error_is_small() -> None:
    delta, mask = _case((256, 256), 1.0, torch.float32, "cpu", seed=4)
    dense = unpack_delta(pack_delta(delta, mask, backend="torch"), backend="torch")
    # Gaussian values, groups of 64: the step is about a third of a standard deviation, so
    # the rounding error's RMS is about a tenth of the values' RMS.
    assert relative_rms(dense, delta) < 0.15


def test_errors_name_the_problem() -> None:
    delta, mask = _case((8, 8), 0.5, torch.float32, "cpu")
    with pytest.raises(ValueError, match="group_size must be one of"):
        pack_delta(delta, mask, group_size=48)
    with pytest.raises(ValueError, match="mask must be a bool tensor of the delta's shape"):
        pack_delta(delta, mask[:4])
    with pytest.raises(ValueError, match="delta must be float32"):
        pack_delta(delta.long(), mask)
    packed = pack_delta(delta, mask)
    with pytest.raises(ValueError, match=r"packed for shape \(8, 8\), the weight has shape"):
        merge_delta_(torch.zeros(4, 16), packed)
    with pytest.raises(ValueError, match="must be contiguous"):
        merge_delta_(torch.zeros(8, 8).t(), packed)
    with pytest.raises(ValueError, match="backend must be one of"):
        merge_delta_(torch.zeros(8, 8), packed, backend="cuda")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    delta, mask = _case((8, 8), 0.5, torch.float32, "cpu")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        pack_delta(delta, mask, backend="triton")
