"""Micro-TTT deltas: what a stream's fast weights learned, as a small file that merges back.

A delta is the change of the fast weights from a base (the initial weights, or the weights an
earlier delta left), kept only where it matters, quantised to 4 bits in groups with a float16
scale each (:mod:`memsdk.kernels.delta`), and written as safetensors whose header names the
base model's fingerprint: merging into another model is refused. Loading is merging: each
delta is dequantised and added in place, in order.

Which entries are kept: every changed entry when ``keep=1``; otherwise the ``keep`` fraction
of each tensor with the largest ``F * delta**2``, the second-order estimate of how much the
loss would rise if that entry's change were dropped (F: the running Fisher diagonal of the
session's inner steps, :mod:`memsdk.engine.fisher`; without one, F is taken as uniform).

Besides the weights, a delta carries the stream's position so a session resumes where the last
one stopped: the partial-chunk buffer, the last byte, the counters, the caller's ``extra``
strings and the input bytes of the attention window, from which the window cache is recomputed
(under the merged weights, so the first chunk after a reload sees its context again).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from memsdk.engine.fisher import top_fraction
from memsdk.engine.model import ByteLM, FastWeights
from memsdk.engine.ttt import (
    TTTConfig,
    TTTState,
    _empty_caches,
    _forward,
    _safetensors_metadata,
)
from memsdk.errors import FormatError, InputError
from memsdk.kernels.delta import PackedDelta, merge_delta_, pack_delta

__all__ = [
    "DELTA_FORMAT",
    "WeightDelta",
    "make_delta",
    "merge_delta",
    "read_delta",
    "restore_state",
]

DELTA_FORMAT = "memsdk.weight_delta/1"


@dataclass(frozen=True)
class WeightDelta:
    """A parsed delta file: the packed change of each fast weight and the stream position."""

    model: str  # fingerprint of the base model
    packed: dict[str, PackedDelta]
    ttt_config: TTTConfig
    position: int
    steps: int
    rejected_steps: int
    last_byte: int
    pending: bytes
    recent_inputs: bytes
    extra: dict[str, str]
    labels: dict[str, str]  # the caller's own header fields (e.g. a version)

    @property
    def kept(self) -> int:
        return sum(p.indices.numel() for p in self.packed.values())


def _bitmap(mask: Tensor) -> Tensor:
    """bool (N,) -> uint8 (ceil(N/8),), entry i in bit i % 8 of byte i // 8."""
    bits = torch.zeros(-(-mask.numel() // 8) * 8, dtype=torch.uint8)
    bits[: mask.numel()] = mask.reshape(-1)
    return (bits.view(-1, 8) << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def _from_bitmap(bitmap: Tensor, numel: int) -> Tensor:
    bits = (bitmap[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(-1)[:numel].bool()


def make_delta(
    state: TTTState,
    base: FastWeights,
    *,
    keep: float = 1.0,
    group_size: int = 64,
    labels: Mapping[str, str] | None = None,
) -> bytes:
    """The change of ``state``'s fast weights from ``base`` as a delta file (bytes).

    Args:
        state: the stream whose fast weights and position are saved.
        base: the weights the delta is relative to (same names and shapes).
        keep: fraction of each tensor's entries kept, by ``F * delta**2`` (1 keeps every change).
        labels: extra header strings the caller reads back in :attr:`WeightDelta.labels`.

    Raises:
        InputError: ``keep`` outside (0, 1] or ``base`` not matching the fast weights.
    """
    if not 0.0 < keep <= 1.0:
        raise InputError(f"keep must be in (0, 1], got {keep}")
    if set(base) != set(state.fast_weights):
        raise InputError(
            f"base has tensors {sorted(base)}, the state's fast weights are "
            f"{sorted(state.fast_weights)}: give the weights the delta is relative to"
        )
    fisher = state.fisher.mean()
    changes = {
        n: (w.detach().float() - base[n].detach().float()) for n, w in state.fast_weights.items()
    }
    masks = {n: change != 0 for n, change in changes.items()}
    if keep < 1.0:
        saliency = {
            n: change.pow(2) * fisher.get(n, torch.ones_like(change))
            for n, change in changes.items()
        }
        top = top_fraction(saliency, keep)
        masks = {n: masks[n] & top[n] for n in masks}
    tensors: dict[str, Tensor] = {}
    for name, change in changes.items():
        packed = pack_delta(change, masks[name], group_size=group_size)
        tensors[f"{name}.codes"] = packed.codes
        tensors[f"{name}.scales"] = packed.scales.half()
        count, numel = packed.indices.numel(), change.numel()
        if count < numel:  # the smaller of a bitmap and a list of 32-bit indices
            if numel / 8 <= 4 * count:
                tensors[f"{name}.bitmap"] = _bitmap(masks[name])
            else:
                tensors[f"{name}.indices"] = packed.indices.to(torch.int32)
    tensors["pending"] = torch.tensor(list(state.pending), dtype=torch.uint8)
    tensors["recent_inputs"] = torch.tensor(list(state.recent_inputs), dtype=torch.uint8)
    header = {
        "format": DELTA_FORMAT,
        "model": state.model_fingerprint,
        "group_size": str(group_size),
        "shapes": json.dumps({n: list(w.shape) for n, w in state.fast_weights.items()}),
        "kept": json.dumps({n: int(m.sum()) for n, m in masks.items()}),
        "ttt_config": json.dumps(asdict(state.config), sort_keys=True),
        "position": str(state.position),
        "steps": str(state.steps),
        "rejected_steps": str(state.rejected_steps),
        "last_byte": str(state.last_byte),
        "extra": json.dumps(state.extra, sort_keys=True),
        "labels": json.dumps(dict(labels or {}), sort_keys=True),
    }
    return save_safetensors(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=header
    )


def read_delta(data: bytes, *, source: str = "delta") -> WeightDelta:
    """Parse a delta file written by :func:`make_delta`.

    Raises:
        FormatError: not a delta file, truncated, forged or inconsistent.
    """
    try:
        tensors = load_safetensors(bytes(data))
        header = _safetensors_metadata(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FormatError(f"{source} is not a readable safetensors file: {exc}") from exc
    if header.get("format") != DELTA_FORMAT:
        raise FormatError(
            f"{source} has format {header.get('format')!r}, expected {DELTA_FORMAT!r}"
        )
    try:
        group_size = int(header["group_size"])
        shapes = {n: tuple(int(d) for d in s) for n, s in json.loads(header["shapes"]).items()}
        kept = {n: int(k) for n, k in json.loads(header["kept"]).items()}
        packed = {}
        for name, shape in shapes.items():
            numel = int(torch.Size(shape).numel())
            if f"{name}.bitmap" in tensors:
                mask = _from_bitmap(tensors[f"{name}.bitmap"], numel)
                indices = torch.nonzero(mask).reshape(-1)
            elif f"{name}.indices" in tensors:
                indices = tensors[f"{name}.indices"].long()
                if indices.numel() and (
                    int(indices.min()) < 0
                    or int(indices.max()) >= numel
                    or bool((indices[1:] <= indices[:-1]).any())
                ):
                    raise ValueError(f"indices of {name} are out of range or not increasing")
            else:
                indices = torch.arange(numel)
            if indices.numel() != kept[name]:
                raise ValueError(
                    f"{name} keeps {indices.numel()} entries, header says {kept[name]}"
                )
            codes, scales = tensors[f"{name}.codes"], tensors[f"{name}.scales"].float()
            if codes.dtype != torch.uint8 or not bool(torch.isfinite(scales).all()):
                raise ValueError(f"codes or scales of {name} are damaged")
            packed[name] = PackedDelta(indices, codes, scales, shape, group_size)
        delta = WeightDelta(
            model=header["model"],
            packed=packed,
            ttt_config=TTTConfig(**json.loads(header["ttt_config"])),
            position=int(header["position"]),
            steps=int(header["steps"]),
            rejected_steps=int(header["rejected_steps"]),
            last_byte=int(header["last_byte"]),
            pending=bytes(tensors["pending"].tolist()),
            recent_inputs=bytes(tensors["recent_inputs"].tolist()),
            extra={str(k): str(v) for k, v in json.loads(header["extra"]).items()},
            labels={str(k): str(v) for k, v in json.loads(header["labels"]).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(f"{source} is damaged: {exc}") from exc
    if not 0 <= delta.last_byte < 256 or len(delta.pending) >= delta.ttt_config.chunk_bytes:
        raise FormatError(f"{source} is damaged: bad last byte or partial-chunk buffer")
    return delta


def merge_delta(
    fast_weights: FastWeights, delta: WeightDelta, *, model: str, source: str = "delta"
) -> None:
    """Add ``delta`` to ``fast_weights`` in place (dequantise and add).

    Args:
        model: the fingerprint of the model the fast weights belong to.

    Raises:
        FormatError: the delta was made for another base model, or for other tensors.
    """
    if delta.model != model:
        raise FormatError(
            f"{source} was made for base model {delta.model}, these weights belong to model "
            f"{model}: merge it into the model it was made from, or drop it"
        )
    for name, packed in delta.packed.items():
        weight = fast_weights.get(name)
        if weight is None or tuple(weight.shape) != tuple(packed.shape):
            raise FormatError(
                f"{source} holds {name} of shape {tuple(packed.shape)}, the fast weights have "
                f"{None if weight is None else tuple(weight.shape)}"
            )
        if packed.indices.device != weight.device:  # deltas are read on CPU
            packed = type(packed)(
                packed.indices.to(weight.device),
                packed.codes.to(weight.device),
                packed.scales.to(weight.device),
                packed.shape,
                packed.group_size,
            )
        try:
            merge_delta_(weight, packed)
        except ValueError as exc:
            raise FormatError(f"{source} is damaged: {exc}") from exc


def restore_state(
    model: ByteLM, deltas: Sequence[WeightDelta], *, source: str = "deltas"
) -> TTTState:
    """A stream's state rebuilt from the initial weights and ``deltas`` merged in order; the
    stream position is the last delta's. The window cache is recomputed from its input bytes.

    Raises:
        InputError: no delta given.
        FormatError: a delta belongs to another model or other tensors.
    """
    if not deltas:
        raise InputError("give at least one delta to restore a state from")
    last = deltas[-1]
    state = TTTState(model, last.ttt_config)
    for delta in deltas:
        merge_delta(state.fast_weights, delta, model=state.model_fingerprint, source=source)
    state.position, state.steps, state.rejected_steps = (
        last.position,
        last.steps,
        last.rejected_steps,
    )
    state.last_byte, state.pending, state.extra = last.last_byte, last.pending, dict(last.extra)
    state.recent_inputs = last.recent_inputs[-model.config.window :]
    if state.recent_inputs:
        with torch.no_grad():
            _, caches = _forward(
                model, state.recent_inputs, _empty_caches(model), state.fast_weights
            )
        state.caches = [(k.detach(), v.detach()) for k, v in caches]
    return state
