"""The TTT-Linear kernel against its torch reference (Triton's interpreter on CPU, compiled on
CUDA): outputs, final states and every gradient, on awkward shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memsdk.kernels.dispatch import relative_rms
from memsdk.kernels.ttt_linear import chunk as kernel_module
from memsdk.kernels.ttt_linear import ttt_linear
from memsdk.kernels.ttt_linear.naive import inner_gradient, ttt_linear_naive

# The interpreter and compiled fp32 (IEEE products) agree with the reference to rounding; bf16
# inputs are read exactly, the work is fp32 with TF32 products on a GPU, and outputs and
# gradients are rounded to bf16 (relative error 2**-9 per value).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

# (batch, length, heads, head_dim, mini_batch_size)
SHAPES = [
    (2, 63, 2, 24, 16),  # length 63, an odd head width
    (1, 40, 3, 16, 16),  # not a multiple of the mini-batch
    (2, 10, 2, 32, 16),  # shorter than one mini-batch
    (1, 45, 1, 20, 12),  # a mini-batch that is not a power of two
]

NAMES = ("q", "k", "v", "eta", "ln_weight", "ln_bias", "W0", "b0", "position_scale")


def _inputs(batch, length, heads, dim, mini_batch, dtype, device, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, length, heads, dim, generator=g) / dim**0.5 for _ in range(3))
    tensors = {
        "q": q.to(dtype),
        "k": k.to(dtype),
        "v": v.to(dtype),
        "eta": 0.1 + 0.5 * torch.rand(batch, length, heads, generator=g),
        "ln_weight": 1 + 0.2 * torch.randn(heads, dim, generator=g),
        "ln_bias": 0.1 * torch.randn(heads, dim, generator=g),
        "W0": 0.1 * torch.randn(batch, heads, dim, dim, generator=g),
        "b0": 0.1 * torch.randn(batch, heads, dim, generator=g),
        "position_scale": 1 / torch.arange(1, mini_batch + 1) + 0.05 * torch.randn(mini_batch),
    }
    return {n: t.to(device).requires_grad_(True) for n, t in tensors.items()}


def _run(tensors: dict, mini_batch: int, backend: str, upcast: bool = False) -> dict:
    """Outputs, final state and the gradient of every input under a random linear loss."""
    for t in tensors.values():
        t.grad = None
    args = {n: (t.float() if upcast else t) for n, t in tensors.items()}
    o, (final_w, final_b) = ttt_linear(
        args["q"],
        args["k"],
        args["v"],
        args["eta"],
        args["ln_weight"],
        args["ln_bias"],
        initial_state=(args["W0"], args["b0"]),
        position_scale=args["position_scale"],
        mini_batch_size=mini_batch,
        output_final_state=True,
        backend=backend,
    )
    g = torch.Generator().manual_seed(99)
    weights = [torch.randn(t.shape, generator=g).to(o.device) for t in (o, final_w, final_b)]
    loss = sum((t.float() * w).sum() for t, w in zip((o, final_w, final_b), weights, strict=True))
    loss.backward()
    results = {"o": o.detach(), "final_W": final_w.detach(), "final_b": final_b.detach()}
    results.update({f"d{n}": t.grad.clone() for n, t in tensors.items()})
    return results


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_the_reference(shape, dtype, device) -> None:
    mini_batch = shape[-1]
    tensors = _inputs(*shape, dtype, device)
    expected = _run(tensors, mini_batch, "torch", upcast=True)
    actual = _run(tensors, mini_batch, "triton")
    assert actual["o"].dtype == dtype and actual["dq"].dtype == dtype
    assert actual["final_W"].dtype == torch.float32
    errors = {name: relative_rms(actual[name], expected[name]) for name in expected}
    assert all(torch.isfinite(t).all() for t in actual.values())
    assert max(errors.values()) < TOLERANCE[dtype], errors


def _nan_empty(shape, like, dtype=None):
    return torch.full(shape, float("nan"), device=like.device, dtype=dtype or like.dtype)


def test_every_buffer_the_kernels_read_is_written_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs, saved states and every gradient buffer start as NaN: a read of memory the
    kernels did not write, or a value they forgot to write, leaves NaN behind."""
    shape = (2, 63, 2, 24, 16)
    tensors = _inputs(*shape, torch.float32, "cpu", seed=1)
    expected = _run(tensors, 16, "torch")
    monkeypatch.setattr(kernel_module, "_empty", _nan_empty)
    actual = _run(tensors, 16, "triton")
    for name, value in actual.items():
        assert relative_rms(value, expected[name]) < TOLERANCE[torch.float32], name


@pytest.mark.parametrize("device", DEVICES)
def test_continuing_from_the_final_state_equals_one_call(device) -> None:
    """Two calls chained through the state (the first ends on a mini-batch boundary) give the
    outputs, final state and gradients of one call on the whole sequence."""
    tensors = _inputs(1, 63, 2, 24, 16, torch.float32, device, seed=2)
    whole = _run(tensors, 16, "triton")
    for t in tensors.values():
        t.grad = None
    cut = 32
    common = {"position_scale": tensors["position_scale"], "mini_batch_size": 16}
    rest = ("ln_weight", "ln_bias")
    first, state = ttt_linear(
        *(tensors[n][:, :cut] for n in ("q", "k", "v", "eta")),
        *(tensors[n] for n in rest),
        initial_state=(tensors["W0"], tensors["b0"]),
        output_final_state=True,
        backend="triton",
        **common,
    )
    second, final = ttt_linear(
        *(tensors[n][:, cut:] for n in ("q", "k", "v", "eta")),
        *(tensors[n] for n in rest),
        initial_state=state,
        output_final_state=True,
        backend="triton",
        **common,
    )
    o = torch.cat((first, second), dim=1)
    assert relative_rms(o.detach(), whole["o"]) < 1e-5
    assert relative_rms(final[0].detach(), whole["final_W"]) < 1e-5
    assert relative_rms(final[1].detach(), whole["final_b"]) < 1e-5
    g = torch.Generator().manual_seed(99)
    weights = [torch.randn(t.shape, generator=g).to(device) for t in (o, *final)]
    sum((t * w).sum() for t, w in zip((o, *final), weights, strict=True)).backward()
    for name, t in tensors.items():
        assert relative_rms(t.grad, whole[f"d{name}"]) < 1e-5, name


def test_the_reference_is_mini_batch_gradient_descent_on_the_inner_loss() -> None:
    """The reference restated token by token with autograd for the inner gradients:
    token i of a mini-batch reads the state W - s_i * sum_{j<=i} eta_j grad loss_j(W)."""
    batch, length, heads, dim, mini_batch = 1, 21, 2, 8, 8
    t = _inputs(batch, length, heads, dim, mini_batch, torch.float32, "cpu", seed=3)
    t = {n: x.detach() for n, x in t.items()}
    expected, (final_w, final_b) = ttt_linear_naive(
        t["q"],
        t["k"],
        t["v"],
        t["eta"],
        t["ln_weight"],
        t["ln_bias"],
        initial_state=(t["W0"], t["b0"]),
        position_scale=t["position_scale"],
        mini_batch_size=mini_batch,
    )

    def inner_model(x, w, b, head):  # f(x) = x + LN(x W + b)
        return x + F.layer_norm(x @ w + b, (dim,), t["ln_weight"][head], t["ln_bias"][head], 1e-6)

    for head in range(heads):
        w, b = t["W0"][0, head], t["b0"][0, head]
        for start in range(0, length, mini_batch):
            w0 = w.detach().requires_grad_(True)
            b0 = b.detach().requires_grad_(True)
            sum_w, sum_b = torch.zeros_like(w), torch.zeros_like(b)
            for i, token in enumerate(range(start, min(start + mini_batch, length))):
                k, v, q = (t[n][0, token, head] for n in ("k", "v", "q"))
                loss = 0.5 * (inner_model(k, w0, b0, head) - v).pow(2).sum()
                grad_w, grad_b = torch.autograd.grad(loss, (w0, b0))
                sum_w += t["eta"][0, token, head] * grad_w
                sum_b += t["eta"][0, token, head] * grad_b
                w = w0.detach() - t["position_scale"][i] * sum_w
                b = b0.detach() - t["position_scale"][i] * sum_b
                out = inner_model(q, w, b, head)
                assert torch.allclose(out, expected[0, token, head], atol=1e-5)
        assert torch.allclose(w, final_w[0, head], atol=1e-5)
        assert torch.allclose(b, final_b[0, head], atol=1e-5)


def test_the_inner_gradient_is_the_gradient_of_the_inner_loss() -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 3, 5, 12, generator=g).requires_grad_(True)
    target = torch.randn(2, 3, 5, 12, generator=g)
    weight, bias = torch.randn(3, 12, generator=g), torch.randn(3, 12, generator=g)
    mean, var = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True)
    normed = (z - mean) / torch.sqrt(var + 1e-6) * weight[:, None] + bias[:, None]
    (expected,) = torch.autograd.grad(0.5 * (normed - target).pow(2).sum(), z)
    assert torch.allclose(inner_gradient(z, target, weight, bias, 1e-6), expected, atol=1e-5)


def test_auto_runs_the_reference_on_cpu_and_defaults_are_documented() -> None:
    t = _inputs(1, 20, 2, 16, 16, torch.float32, "cpu", seed=5)
    t = {n: x.detach() for n, x in t.items()}
    args = [t[n] for n in ("q", "k", "v", "eta", "ln_weight", "ln_bias")]
    o, final = ttt_linear(*args)
    assert final is None and o.shape == t["q"].shape
    expected, _ = ttt_linear_naive(*args)  # zero initial state, unit position scale
    assert torch.equal(o, expected)
    triton_o, _ = ttt_linear(*args, backend="triton")
    assert relative_rms(triton_o, expected) < 1e-5


def test_errors_name_the_problem() -> None:
    t = _inputs(1, 8, 2, 16, 16, torch.float32, "cpu")
    t = {n: x.detach() for n, x in t.items()}
    q, k, v, eta, lnw, lnb = (t[n] for n in ("q", "k", "v", "eta", "ln_weight", "ln_bias"))
    with pytest.raises(ValueError, match=r"q must have shape \(batch, length, heads, head_dim\)"):
        ttt_linear(q[0], k, v, eta, lnw, lnb)
    with pytest.raises(ValueError, match="q, k and v must have one shape"):
        ttt_linear(q, k[:, :4], v, eta, lnw, lnb)
    with pytest.raises(ValueError, match="q, k and v must share one dtype"):
        ttt_linear(q, k.double(), v, eta, lnw, lnb)
    with pytest.raises(ValueError, match=r"eta must have shape \(batch, length, heads\)"):
        ttt_linear(q, k, v, eta[..., None], lnw, lnb)
    with pytest.raises(ValueError, match=r"ln_weight and ln_bias must have shape \(heads, "):
        ttt_linear(q, k, v, eta, lnw[0], lnb)
    with pytest.raises(ValueError, match=r"initial_state must be W of shape \(1, 2, 16, 16\)"):
        ttt_linear(q, k, v, eta, lnw, lnb, initial_state=(t["W0"][0], t["b0"]))
    with pytest.raises(ValueError, match=r"position_scale must have shape \(mini_batch_size,\)"):
        ttt_linear(q, k, v, eta, lnw, lnb, position_scale=torch.ones(8))
    with pytest.raises(ValueError, match="mini_batch_size must be between 1 and 64, got 0"):
        ttt_linear(q, k, v, eta, lnw, lnb, mini_batch_size=0)
    with pytest.raises(ValueError, match="head_dim must be between 1 and 128, got 129"):
        wide = torch.zeros(1, 8, 2, 129)
        ttt_linear(wide, wide, wide, eta, torch.ones(2, 129), torch.zeros(2, 129))
    with pytest.raises(ValueError, match="backend must be one of"):
        ttt_linear(q, k, v, eta, lnw, lnb, backend="cuda")
    with pytest.raises(TypeError, match="eta must be a torch tensor, got float"):
        ttt_linear(q, k, v, 0.1, lnw, lnb)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    t = _inputs(1, 8, 2, 16, 16, torch.float32, "cpu")
    args = [t[n].detach() for n in ("q", "k", "v", "eta", "ln_weight", "ln_bias")]
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        ttt_linear(*args, backend="triton")
