"""The sliding-window attention kernel against its torch reference (Triton's interpreter on CPU,
compiled on CUDA), and the reference against dense masked SDPA and the engine's own path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from memsdk.kernels.dispatch import relative_rms
from memsdk.kernels.swa_attention import flash as swa_impl
from memsdk.kernels.swa_attention import swa_attention
from memsdk.kernels.swa_attention.naive import swa_attention_naive, window_mask

# Relative RMS against the fp32 reference. fp32 kernels agree to rounding (about 3e-7 seen).
# bf16: inputs are the same bf16 values, so the error is the rounding of the stored results
# (and, compiled, of the probabilities and score gradients fed to the bf16 tensor cores); the
# interpreter truncates instead of rounding when it stores bf16, about 4e-3 on its own.
TOLERANCE = {
    torch.float32: {"out": 1e-5, "grad": 1e-5},
    torch.bfloat16: {"out": 2e-2, "grad": 3e-2},
}

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

# (batch, heads, Tq, Tk, head_dim, window)
CASES = {
    "length-63": (1, 2, 63, 63, 32, 16),
    "ragged-odd-dim-24": (2, 1, 100, 100, 24, 37),
    "window-over-length-dim-40": (1, 2, 40, 40, 40, 1000),
    "window-1": (1, 1, 50, 50, 16, 1),
    "streaming-cache-of-window": (1, 2, 37, 101, 32, 64),
    "streaming-cache-beyond-window": (1, 1, 20, 90, 16, 8),
    "unmasked-inner-tiles": (1, 1, 150, 150, 32, 70),
    "single-query": (2, 2, 1, 30, 16, 12),
}


@pytest.fixture
def nan_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer a kernel writes starts as NaN: an element it forgets stays NaN."""

    def scratch(shape, *, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(swa_impl, "_scratch", scratch)


def _inputs(case, dtype, device, seed=0):
    batch, heads, tq, tk, dim, _ = case
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, tq, dim, generator=generator)
    k = torch.randn(batch, heads, tk, dim, generator=generator)
    v = torch.randn(batch, heads, tk, dim, generator=generator)
    grad = torch.randn(batch, heads, tq, dim, generator=generator)
    return [t.to(dtype).to(device) for t in (q, k, v, grad)]


def _assert_close(actual, expected, tolerance, what):
    """relative_rms below tolerance; a reference that is exactly zero (the q and k gradients
    of a window of 1, where softmax is constant) needs an actual value that is zero too, to
    fp32 rounding of the unit-scale inputs."""
    assert torch.isfinite(actual).all(), f"{what} has NaN or inf (an unwritten element?)"
    if float(expected.float().abs().max()) == 0.0:
        assert float(actual.float().abs().max()) < 1e-4, what
        return
    error = relative_rms(actual, expected)
    assert error < tolerance, f"{what}: relative RMS {error:.2e} >= {tolerance:.0e}"


def _run(q, k, v, grad, window, backend):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = swa_attention(q, k, v, window=window, backend=backend)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out.detach(), dq, dk, dv


def _reference(q, k, v, grad, window):
    q, k, v = (t.detach().float().requires_grad_() for t in (q, k, v))
    out = swa_attention_naive(q, k, v, window=window)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad.float())
    return out.detach(), dq, dk, dv


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_reference(name, dtype, device, nan_scratch) -> None:
    case = CASES[name]
    q, k, v, grad = _inputs(case, dtype, device)
    got = _run(q, k, v, grad, case[-1], "triton")
    expected = _reference(q, k, v, grad, case[-1])
    tol = TOLERANCE[dtype]
    assert got[0].dtype == dtype and got[0].shape == q.shape
    for what, actual, ref in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        _assert_close(actual, ref, tol["out" if what == "out" else "grad"], f"{name} {what}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tiles", [(16, 32), (32, 16), (64, 64)])
def test_other_tilings(tiles, device, monkeypatch, nan_scratch) -> None:
    """Query and key tiles of different sizes change which tiles are masked or skipped."""
    block_m, block_n = tiles
    blocks = {"fwd_m": block_m, "fwd_n": block_n, "bwd_m": block_m, "bwd_n": block_n}
    monkeypatch.setattr(
        swa_impl, "_block_sizes", lambda head_dim: {**blocks, "warps": 4, "stages": 1}
    )
    for case in (CASES["unmasked-inner-tiles"], CASES["streaming-cache-of-window"]):
        q, k, v, grad = _inputs(case, torch.float32, device, seed=1)
        got = _run(q, k, v, grad, case[-1], "triton")
        for actual, ref in zip(got, _reference(q, k, v, grad, case[-1]), strict=True):
            _assert_close(actual, ref, 1e-5, f"tiles {tiles}")


@pytest.mark.parametrize("device", DEVICES)
def test_tile_boundaries(device, nan_scratch) -> None:
    """Windows and cache lengths one below, at and one above multiples of the tile size: the
    cases where a tile moves between skipped, masked and unmasked (a tiling of 16 in the
    interpreter; on a GPU the windows straddle 64 as well)."""
    for offset in (0, 15, 17, 30, 64):
        for window in (15, 16, 17, 31, 47, 63, 65):
            case = (1, 1, 48, 48 + offset, 16, window)
            q, k, v, grad = _inputs(case, torch.float32, device, seed=offset + window)
            got = _run(q, k, v, grad, window, "triton")
            for actual, ref in zip(got, _reference(q, k, v, grad, window), strict=True):
                _assert_close(actual, ref, 1e-5, f"offset {offset} window {window}")


@pytest.mark.parametrize("device", DEVICES)
def test_strided_inputs_as_the_engine_passes_them(device) -> None:
    """The engine splits a fused (B, T, 3, H, D) projection and transposes: no copies."""
    generator = torch.Generator().manual_seed(2)
    qkv = torch.randn(2, 45, 3, 2, 24, generator=generator).to(device)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    assert not q.is_contiguous()
    grad = torch.randn(2, 2, 45, 24, generator=generator).to(device)
    got = _run(q, k, v, grad, 20, "triton")
    for actual, ref in zip(got, _reference(q, k, v, grad, 20), strict=True):
        _assert_close(actual, ref, 1e-5, "strided")


@pytest.mark.parametrize("window", [1, 5, 64])
def test_reference_matches_dense_masked_sdpa(window) -> None:
    q, k, v, grad = _inputs((2, 2, 33, 57, 16, window), torch.float64, "cpu", seed=3)
    mask = window_mask(33, 57, window, q.device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = swa_attention_naive(*leaves, window=window)
    grads = torch.autograd.grad(out, leaves, grad)
    out = out.detach()
    leaves_sdpa = [t.clone().requires_grad_() for t in (q, k, v)]
    out_sdpa = F.scaled_dot_product_attention(*leaves_sdpa, attn_mask=mask)
    grads_sdpa = torch.autograd.grad(out_sdpa, leaves_sdpa, grad)
    out_sdpa = out_sdpa.detach()
    assert relative_rms(out, out_sdpa) < 1e-6
    for got, expected in zip(grads, grads_sdpa, strict=True):
        if window > 1:
            assert relative_rms(got, expected) < 1e-5
    # Key j is seen by query i exactly when pos(i) - window < j <= pos(i).
    assert mask.sum(1).tolist() == [min(window, 57 - 33 + i + 1) for i in range(33)]


def test_reference_is_the_engine_attention() -> None:
    """The engine's two CPU paths (a dense mask for short chunks, blocks of `window` queries
    for long ones) compute the function the kernel computes."""
    from memsdk.engine.model import _blocked_attention, _window_mask

    q, k, v, _ = _inputs((1, 2, 70, 90, 16, 0), torch.float32, "cpu", seed=4)
    window = 24
    blocked = _blocked_attention(q, k, v, 90 - 70, window)
    kernel = swa_attention(q, k, v, window=window, backend="triton")
    assert relative_rms(kernel, blocked) < 1e-5
    short_q = q[:, :, -10:]
    short_k, short_v = k[:, :, -(10 + window) :], v[:, :, -(10 + window) :]
    mask = _window_mask(10, 10 + window, window, q.device)
    dense = F.scaled_dot_product_attention(short_q, short_k, short_v, attn_mask=mask)
    assert relative_rms(swa_attention(short_q, short_k, short_v, window=window), dense) < 1e-5


def test_auto_on_cpu_is_the_reference_and_custom_scale() -> None:
    q, k, v, _ = _inputs((1, 1, 12, 12, 8, 4), torch.float32, "cpu", seed=5)
    expected = swa_attention_naive(q, k, v, window=4, scale=0.3)
    assert torch.equal(swa_attention(q, k, v, window=4, scale=0.3), expected)
    kernel = swa_attention(q, k, v, window=4, scale=0.3, backend="triton")
    assert relative_rms(kernel, expected) < 1e-5
    default = swa_attention_naive(q, k, v, window=4, scale=1 / math.sqrt(8))
    assert torch.equal(swa_attention(q, k, v, window=4), default)


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_goes_through_the_reference(device) -> None:
    """Meta-learning differentiates through inner gradients (create_graph=True)."""
    q, k, v, grad = _inputs((1, 1, 20, 20, 16, 6), torch.float32, device, seed=6)

    def second_order(backend):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = swa_attention(*leaves, window=6, backend=backend)
        (dq,) = torch.autograd.grad(out, leaves[0], grad, create_graph=True)
        return torch.autograd.grad(dq.pow(2).sum(), leaves[1:])

    for got, expected in zip(second_order("triton"), second_order("torch"), strict=True):
        assert relative_rms(got, expected) < 1e-5


def test_empty_inputs() -> None:
    q = torch.zeros(1, 2, 0, 8)
    k = torch.zeros(1, 2, 5, 8)
    assert swa_attention(q, k, k, window=3, backend="triton").shape == (1, 2, 0, 8)


def test_errors_name_the_problem() -> None:
    q = torch.zeros(1, 2, 8, 16)
    with pytest.raises(ValueError, match=r"q must be 4-D \(batch, heads, length, head_dim\)"):
        swa_attention(q[0], q, q, window=4)
    with pytest.raises(ValueError, match="k and v must have one shape"):
        swa_attention(q, q, q[:, :, :4], window=4)
    with pytest.raises(ValueError, match="must agree on batch, heads and head_dim"):
        swa_attention(q, q[:, :1], q[:, :1], window=4)
    with pytest.raises(ValueError, match="at least as many positions as q"):
        swa_attention(q, q[:, :, :4], q[:, :, :4], window=4)
    with pytest.raises(ValueError, match="must share one dtype"):
        swa_attention(q, q.double().float().half(), q, window=4)
    with pytest.raises(ValueError, match="q must be float32, bfloat16 or float16"):
        swa_attention(q.double(), q, q, window=4)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        swa_attention(q, q, q, window=0)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        swa_attention(q, q, q, window=2.5)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        swa_attention(q, q, q, window=4, scale=float("inf"))
    with pytest.raises(ValueError, match="head_dim <= 256"):
        wide = torch.zeros(1, 1, 2, 300)
        swa_attention(wide, wide, wide, window=4, backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        swa_attention(q, q, q, window=4, backend="cuda")
    with pytest.raises(TypeError, match="k must be a torch tensor"):
        swa_attention(q, [1, 2], q, window=4)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="must be on one device"):
            swa_attention(q, q.cuda(), q, window=4)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        swa_attention(q, q, q, window=2, backend="triton")


@pytest.mark.gpu
def test_engine_on_cuda_matches_cpu() -> None:
    """On CUDA the model runs both Triton kernels (attention and the dynamic MLP); its logits,
    its gradients and the meta-learning loss (a double backward) match the CPU torch path."""
    import dataclasses

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from memsdk.engine.model import ByteLM, ModelConfig
    from memsdk.engine.train import meta_loss
    from memsdk.engine.ttt import TTTConfig

    torch.manual_seed(0)
    # Two dynamic blocks: the inner gradient of the first crosses the second's attention.
    model = ByteLM(dataclasses.replace(ModelConfig.tiny(), n_layer=8))
    with torch.no_grad():
        for i in range(model.config.first_dynamic, model.config.n_layer):
            model.blocks[i].down0.normal_(std=0.02)  # a dynamic branch that contributes
    tokens = torch.randint(0, 256, (2, 3 * 48 + 1), generator=torch.Generator().manual_seed(1))
    results = {}
    for device in ("cpu", "cuda"):
        replica = ByteLM(model.config).to(device)
        replica.load_state_dict(model.state_dict())
        # The CPU path's double backward needs SDPA's math kernel (its flash kernel has no
        # second derivative).
        with sdpa_kernel(SDPBackend.MATH):
            logits = replica(tokens[:, :-1].to(device))
            grads = torch.autograd.grad(logits.square().mean(), list(replica.parameters()))
            loss = meta_loss(replica, tokens.to(device), 48, TTTConfig(inner_lr=1.0))
            meta_grads = torch.autograd.grad(loss, list(replica.parameters()), allow_unused=True)
        results[device] = (logits.detach().cpu(), [g.cpu() for g in grads], loss.detach().cpu(),
                           [None if g is None else g.cpu() for g in meta_grads])  # fmt: skip
    (logits, grads, loss, meta), (logits_gpu, grads_gpu, loss_gpu, meta_gpu) = results.values()
    assert relative_rms(logits_gpu, logits) < 1e-4
    for got, expected in zip(grads_gpu, grads, strict=True):
        assert relative_rms(got, expected) < 1e-3
    assert abs(float(loss_gpu) - float(loss)) < 1e-4 * abs(float(loss))
    for got, expected in zip(meta_gpu, meta, strict=True):
        if expected is not None:
            assert relative_rms(got, expected) < 1e-3
