"""The one place that picks how a kernel runs: ``backend="auto" | "triton" | "torch"``.

``auto`` runs the Triton kernel when every tensor is on a CUDA device and the readable torch
reference otherwise (the CPU path of the engine). ``triton`` on CPU tensors needs the Triton
interpreter (``TRITON_INTERPRET=1``), which is how CI checks kernel logic without a GPU.
"""

from __future__ import annotations

import os

import torch

__all__ = ["BACKENDS", "FLOAT_DTYPES", "interpreting", "relative_rms", "resolve_backend"]

BACKENDS = ("auto", "triton", "torch")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what every kernel takes


def interpreting() -> bool:
    """Whether Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """``"triton"`` or ``"torch"`` for a call on ``tensors``.

    Raises:
        ValueError: an unknown backend, or ``"triton"`` asked for CPU tensors outside the
            Triton interpreter.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if on_cuda else "torch"
    if not on_cuda and not interpreting():
        raise ValueError(
            "backend='triton' needs CUDA tensors: move them with .cuda(), set "
            "TRITON_INTERPRET=1 to run the kernel in the interpreter on CPU, or use "
            "backend='auto'"
        )
    return "triton"


def relative_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """RMS of ``actual - expected`` over the RMS of ``expected``, in fp32: the error measure of
    the kernel tests and of the correctness gate in ``benchmarks/kernels.py``."""
    actual, expected = actual.float(), expected.float()
    scale = expected.pow(2).mean().sqrt().clamp_min(1e-12)
    return float((actual - expected).pow(2).mean().sqrt() / scale)
