"""The dynamic-MLP kernels (forward, backward, the two-phase inner step) against their torch
reference (Triton's interpreter on CPU, compiled on CUDA), and the reference against autograd
and against the engine's ``inner_update``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memsdk.engine.ttt import TTTConfig, inner_update
from memsdk.kernels.dispatch import relative_rms
from memsdk.kernels.fast_mlp import (
    clipped_sgd_,
    fast_mlp,
    fast_mlp_grads,
    fast_mlp_step_,
    fused,
    squared_norm,
)
from memsdk.kernels.fast_mlp.naive import (
    clipped_sgd_naive_,
    fast_mlp_grads_naive,
    fast_mlp_naive,
    squared_norm_naive,
)

# Relative RMS against the fp32 reference. fp32 agrees to rounding (about 3e-7 seen). bf16:
# the same bf16 inputs, so the error is the rounding of the stored pre-activation, activation
# and outputs (the interpreter truncates when it stores bf16: about 6e-3 seen); the squared
# norm is a sum of squares of bf16-rounded gradients.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}
NORM_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}
# An update moves each weight by lr * factor * g; bf16 weights round (truncate in the
# interpreter) once, so the updated weights differ by about one bf16 step.
UPDATE_TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 1e-2}

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

# x shape, (d, h)
CASES = {
    "batched-ragged-d24": ((2, 37, 24), (24, 72)),
    "length-63-d40": ((63, 40), (40, 100)),
    "hidden-below-d": ((3, 5, 48), (48, 20)),
    "one-row": ((1, 1, 16), (16, 64)),
}


@pytest.fixture
def nan_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer a kernel writes starts as NaN: an element it forgets stays NaN."""

    def scratch(shape, *, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(fused, "_scratch", scratch)


def _inputs(name, dtype, device, seed=0):
    shape, (d, h) = CASES[name]
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator)
    up = torch.randn(d, h, generator=generator) / d**0.5
    down = torch.randn(h, d, generator=generator) / h**0.5
    dy = torch.randn(shape, generator=generator)
    return [t.to(dtype).to(device) for t in (x, up, down, dy)]


def _assert_close(actual, expected, tolerance, what):
    assert torch.isfinite(actual).all(), f"{what} has NaN or inf (an unwritten element?)"
    error = relative_rms(actual, expected)
    assert error < tolerance, f"{what}: relative RMS {error:.2e} >= {tolerance:.0e}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_fast_mlp_forward_and_gradients_match_reference(name, dtype, device, nan_scratch):
    x, up, down, dy = _inputs(name, dtype, device)
    leaves = [t.clone().requires_grad_() for t in (x, up, down)]
    y = fast_mlp(*leaves, backend="triton")
    assert y.shape == x.shape and y.dtype == dtype
    dx, d_up, d_down = torch.autograd.grad(y, leaves, dy)
    ref_y, ref_up, ref_down, ref_dx = fast_mlp_grads_naive(x, up, down, dy)
    tol = TOLERANCE[dtype]
    _assert_close(y.detach(), ref_y, tol, f"{name} y")
    _assert_close(dx, ref_dx, tol, f"{name} dx")
    _assert_close(d_up, ref_up, tol, f"{name} d_up")
    _assert_close(d_down, ref_down, tol, f"{name} d_down")


@pytest.mark.parametrize("device", DEVICES)
def test_fast_mlp_only_some_gradients_and_strided_input(device):
    x, up, down, dy = _inputs("batched-ragged-d24", torch.float32, device)
    x = x.transpose(0, 1)  # (37, 2, 24), not contiguous
    dy = dy.transpose(0, 1)
    leaf = up.clone().requires_grad_()
    y = fast_mlp(x, leaf, down, backend="triton")
    (d_up,) = torch.autograd.grad(y, leaf, dy)
    _, ref_up, _, _ = fast_mlp_grads_naive(x, up, down, dy)
    _assert_close(d_up, ref_up, 1e-5, "d_up")


@pytest.mark.parametrize("name", list(CASES))
def test_reference_matches_autograd_of_the_torch_mlp(name):
    x, up, down, dy = _inputs(name, torch.float64, "cpu")
    leaves = [t.clone().requires_grad_() for t in (x, up, down)]
    y = F.gelu(leaves[0] @ leaves[1]) @ leaves[2]
    dx, d_up, d_down = torch.autograd.grad(y, leaves, dy)
    ref_y, ref_up, ref_down, ref_dx = fast_mlp_grads_naive(x, up, down, dy)
    for got, expected in ((ref_y, y.detach()), (ref_dx, dx), (ref_up, d_up), (ref_down, d_down)):
        assert relative_rms(got, expected) < 1e-6  # fp32 reference against fp64 autograd
    assert relative_rms(fast_mlp_naive(x, up, down), y.detach()) < 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["batched-ragged-d24", "length-63-d40"])
def test_grads_phase_matches_reference(name, dtype, device, nan_scratch):
    x, up, down, dy = _inputs(name, dtype, device, seed=1)
    grads = fast_mlp_grads(x, up, down, dy, input_grad=True, backend="triton")
    ref_y, ref_up, ref_down, ref_dx = fast_mlp_grads_naive(x, up, down, dy)
    tol = TOLERANCE[dtype]
    _assert_close(grads.output, ref_y, tol, "output")
    _assert_close(grads.grad_up, ref_up, tol, "grad_up")
    _assert_close(grads.grad_down, ref_down, tol, "grad_down")
    _assert_close(grads.grad_input, ref_dx, tol, "grad_input")
    assert grads.grad_up.dtype == dtype and grads.squared_norm.dtype == torch.float32
    expected = float(ref_up.pow(2).sum() + ref_down.pow(2).sum())
    assert abs(float(grads.squared_norm) / expected - 1) < NORM_TOLERANCE[dtype]
    # The fused squares are those of the stored gradients, as a separate pass would see them.
    separate = squared_norm([grads.grad_up, grads.grad_down], backend="triton")
    assert abs(float(grads.squared_norm) / float(separate) - 1) < 1e-5
    assert fast_mlp_grads(x, up, down, dy, backend="triton").grad_input is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_squared_norm_matches_reference(dtype, device, nan_scratch):
    generator = torch.Generator().manual_seed(2)
    tensors = [
        torch.randn(shape, generator=generator).to(dtype).to(device)
        for shape in ((3000,), (37, 41), (1,), (0,))
    ]
    got = squared_norm(tensors, backend="triton")
    expected = squared_norm_naive(tensors)
    assert got.shape == () and abs(float(got) / float(expected) - 1) < 1e-5


def _step_case(dtype, device, seed):
    x, up, down, dy = _inputs("length-63-d40", dtype, device, seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    up0 = (up.float() + 0.1 * torch.randn(up.shape, generator=generator).to(device)).to(dtype)
    down0 = (down.float() + 0.1 * torch.randn(down.shape, generator=generator).to(device)).to(dtype)
    return x, up, down, dy, up0, down0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("max_norm", "decay"), [(1.0, 0.0), (1.0, 0.05), (1e6, 0.2)])
def test_step_matches_reference(max_norm, decay, dtype, device, nan_scratch):
    """Clipping active (norm far above max_norm) and inactive (max_norm huge), with and
    without decay toward the initial weights."""
    x, up, down, dy, up0, down0 = _step_case(dtype, device, seed=3)
    weights = [up.clone(), down.clone()]
    step = fast_mlp_step_(
        x, *weights, dy, lr=0.5, max_norm=max_norm, up0=up0, down0=down0, decay=decay,
        backend="triton",
    )  # fmt: skip
    _, ref_up, ref_down, _ = fast_mlp_grads_naive(x, up, down, dy)
    expected = [up.float().clone(), down.float().clone()]
    norm, factor, accepted = clipped_sgd_naive_(
        expected,
        [ref_up, ref_down],
        squared_norm_naive([ref_up, ref_down]),
        lr=0.5,
        max_norm=max_norm,
        initial=[up0, down0],
        decay=decay,
    )
    assert bool(step.step.accepted) and bool(accepted)
    assert abs(float(step.step.norm) / float(norm) - 1) < NORM_TOLERANCE[dtype]
    assert (float(factor) < 1) == (max_norm == 1.0)
    for got, want, start in zip(weights, expected, (up, down), strict=True):
        if dtype == torch.float32:
            # The moves too, as the weights alone hide them: they are small next to the
            # weights (in bf16 they are below one rounding step of many weights).
            _assert_close(got - start, want - start, 1e-3, "move")
        _assert_close(got, want, UPDATE_TOLERANCE[dtype], "updated weight")
    _assert_close(step.output, fast_mlp_naive(x, up, down), TOLERANCE[dtype], "output")


@pytest.mark.parametrize("device", DEVICES)
def test_update_is_the_engine_inner_update(device):
    """Same gradients in, same weights out as ``memsdk.engine.ttt.inner_update``; in fp32 the
    torch reference is bit-identical on CPU and the kernel agrees to rounding."""
    x, up, down, dy, up0, down0 = _step_case(torch.float32, device, seed=4)
    _, grad_up, grad_down, _ = fast_mlp_grads_naive(x, up, down, dy)
    config = TTTConfig(inner_lr=0.7, max_grad_norm=2.0, decay=0.1)
    fast = {"up": up, "down": down}
    new, norm = inner_update(fast, [grad_up, grad_down], {"up": up0, "down": down0}, config)
    for backend in ("torch", "triton"):
        weights = [up.clone(), down.clone()]
        step = clipped_sgd_(
            weights,
            [grad_up, grad_down],
            squared_norm([grad_up, grad_down], backend=backend),
            lr=config.inner_lr,
            max_norm=config.max_grad_norm,
            initial=[up0, down0],
            decay=config.decay,
            backend=backend,
        )
        if backend == "torch" and device == "cpu":
            assert torch.equal(weights[0], new["up"]) and torch.equal(weights[1], new["down"])
            assert torch.equal(step.norm, norm)
        assert relative_rms(weights[0], new["up"]) < 1e-6
        assert relative_rms(weights[1], new["down"]) < 1e-6
        assert abs(float(step.norm) / float(norm) - 1) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_two_blocks_share_one_global_norm(device):
    """Phase one per block, the squared norms added, phase two once over all four weights:
    the engine's step over two dynamic blocks."""
    blocks = [_step_case(torch.float32, device, seed) for seed in (5, 6)]
    weights, grads, squares = [], [], []
    for x, up, down, dy, _, _ in blocks:
        phase = fast_mlp_grads(x, up, down, dy, backend="triton")
        weights += [up.clone(), down.clone()]
        grads += [phase.grad_up, phase.grad_down]
        squares.append(phase.squared_norm)
    step = clipped_sgd_(weights, grads, sum(squares), lr=1.0, max_norm=1.0, backend="triton")
    fast, reference_grads = {}, []
    for i, (x, up, down, dy, _, _) in enumerate(blocks):
        _, grad_up, grad_down, _ = fast_mlp_grads_naive(x, up, down, dy)
        fast.update({f"{i}.up": up, f"{i}.down": down})
        reference_grads += [grad_up, grad_down]
    new, norm = inner_update(fast, reference_grads, fast, TTTConfig(inner_lr=1.0))
    assert abs(float(step.norm) / float(norm) - 1) < 1e-5
    for got, want in zip(weights, new.values(), strict=True):
        assert relative_rms(got, want) < 1e-6


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_norm_leaves_the_weights(bad, device):
    x, up, down, dy, up0, down0 = _step_case(torch.float32, device, seed=7)
    for backend in ("torch", "triton"):
        weights = [up.clone(), down.clone()]
        poisoned = dy.clone()
        poisoned[0, 0] = bad
        step = fast_mlp_step_(
            x, *weights, poisoned, lr=1.0, max_norm=1.0, up0=up0, down0=down0, decay=0.1,
            backend=backend,
        )  # fmt: skip
        assert not bool(step.step.accepted)
        assert not bool(torch.isfinite(step.step.norm))
        assert torch.equal(weights[0], up) and torch.equal(weights[1], down)
        grads = [torch.zeros_like(up), torch.full_like(down, bad)]
        step = clipped_sgd_(
            weights, grads, squared_norm(grads, backend=backend), lr=1.0, max_norm=1.0,
            backend=backend,
        )  # fmt: skip
        assert not bool(step.accepted)
        assert torch.equal(weights[0], up) and torch.equal(weights[1], down)


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_goes_through_the_reference(device):
    x, up, down, dy = _inputs("batched-ragged-d24", torch.float32, device, seed=8)

    def second_order(backend):
        leaves = [t.clone().requires_grad_() for t in (x, up, down)]
        y = fast_mlp(*leaves, backend=backend)
        (d_up,) = torch.autograd.grad(y, leaves[1], dy, create_graph=True)
        return torch.autograd.grad(d_up.pow(2).sum(), [leaves[0], leaves[2]])

    for got, expected in zip(second_order("triton"), second_order("torch"), strict=True):
        assert relative_rms(got, expected) < 1e-5


def test_auto_on_cpu_is_the_reference():
    x, up, down, dy = _inputs("one-row", torch.float32, "cpu")
    assert torch.equal(fast_mlp(x, up, down), fast_mlp_naive(x, up, down))
    grads = fast_mlp_grads(x, up, down, dy)
    assert torch.equal(grads.grad_up, fast_mlp_grads_naive(x, up, down, dy)[1])


def test_errors_name_the_problem():
    x, up, down, dy = _inputs("batched-ragged-d24", torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"x must be \(B, C, d\) or \(C, d\)"):
        fast_mlp(x[None], up, down)
    with pytest.raises(ValueError, match="batched fast weights"):
        fast_mlp(x, up.expand(2, -1, -1), down)
    with pytest.raises(ValueError, match="do not chain"):
        fast_mlp(x, up, down[:, :3])
    with pytest.raises(ValueError, match="must share one dtype"):
        fast_mlp(x, up.half(), down)
    with pytest.raises(ValueError, match="up must be float32, bfloat16 or float16"):
        fast_mlp(x, up.double(), down)
    with pytest.raises(ValueError, match="grad_output must have the shape of the output"):
        fast_mlp_grads(x, up, down, dy[:1])
    with pytest.raises(ValueError, match="backend must be one of"):
        fast_mlp(x, up, down, backend="gpu")
    with pytest.raises(TypeError, match="down must be a torch tensor"):
        fast_mlp(x, up, None)
    grads = [torch.zeros_like(up), torch.zeros_like(down)]
    squares = torch.zeros(())
    with pytest.raises(ValueError, match="decay > 0 needs initial"):
        clipped_sgd_([up, down], grads, squares, lr=1.0, max_norm=1.0, decay=0.1)
    with pytest.raises(ValueError, match=r"one gradient .* per weight"):
        clipped_sgd_([up, down], grads[:1], squares, lr=1.0, max_norm=1.0)
    with pytest.raises(ValueError, match=r"weight 1 has shape \(72, 24\) but its gradient"):
        clipped_sgd_([up, down], [grads[0], grads[0]], squares, lr=1.0, max_norm=1.0)
    with pytest.raises(ValueError, match="weight 0 must be contiguous"):
        clipped_sgd_([up.t(), down], [grads[0].t(), grads[1]], squares, lr=1.0, max_norm=1.0)
    with pytest.raises(ValueError, match="lr must be >= 0 and max_norm > 0"):
        clipped_sgd_([up, down], grads, squares, lr=1.0, max_norm=0.0)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        clipped_sgd_([up, down], grads, squares, lr=1.0, max_norm=1.0, initial=[up, down], decay=1)
    with pytest.raises(ValueError, match="squared_norm must be a one-element tensor"):
        clipped_sgd_([up, down], grads, torch.zeros(2), lr=1.0, max_norm=1.0)
    with pytest.raises(ValueError, match="weights must be a non-empty list"):
        clipped_sgd_([], [], squares, lr=1.0, max_norm=1.0)
    with pytest.raises(ValueError, match="tensors must hold float32"):
        squared_norm([torch.zeros(3, dtype=torch.int64)])


def test_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, up, down, _ = _inputs("one-row", torch.float32, "cpu")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        fast_mlp(x, up, down, backend="triton")


@pytest.mark.gpu
def test_engine_fused_inner_update_is_inner_update() -> None:
    """The CUDA branch of the engine's streaming step against ``inner_update`` on CPU."""
    from types import SimpleNamespace

    from memsdk.engine.ttt import _fused_inner_update

    x, up, down, dy, up0, down0 = _step_case(torch.float32, "cpu", seed=9)
    _, grad_up, grad_down, _ = fast_mlp_grads_naive(x, up, down, dy)
    config = TTTConfig(inner_lr=0.7, max_grad_norm=1.0, decay=0.05)
    expected, _ = inner_update(
        {"up": up, "down": down}, [grad_up, grad_down], {"up": up0, "down": down0}, config
    )
    initial = {"up": up0.cuda(), "down": down0.cuda()}
    state = SimpleNamespace(config=config, initial_weights=lambda: initial, fast_weights=None)
    fast = {"up": up.cuda(), "down": down.cuda()}
    assert _fused_inner_update(state, fast, [grad_up.cuda(), grad_down.cuda()])
    for name in ("up", "down"):
        assert relative_rms(state.fast_weights[name].cpu(), expected[name]) < 1e-6
    assert torch.equal(fast["up"].cpu(), up)  # the old weights are copied, not overwritten
    rejected = SimpleNamespace(config=config, initial_weights=lambda: initial, fast_weights=None)
    bad = [grad_up.cuda(), torch.full_like(grad_down, float("nan")).cuda()]
    assert not _fused_inner_update(rejected, fast, bad)
    assert rejected.fast_weights is None
