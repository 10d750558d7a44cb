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
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

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
    split_slot_name,
)
from memsdk.errors import FormatError, InputError
from memsdk.kernels.delta import PackedDelta, merge_delta_, pack_delta

__all__ = [
    "DELTA_FORMAT",
    "WeightDelta",
    "header_int",
    "make_delta",
    "merge_delta",
    "read_delta",
    "restore_state",
]

DELTA_FORMAT = "memsdk.weight_delta/1"
# Bounds of what a header may claim, checked before anything is allocated: a forged header
# must be a FormatError, never a terabyte allocation or an integer SQL cannot bind.
MAX_HEADER_INT = 2**63 - 1  # counters and chunk ids are SQL bigints
MAX_TENSORS = 4096  # every slot's fast weights (engine.ttt.MAX_SLOTS)
MAX_TENSOR_ENTRIES = 2**24  # entries of one fast weight
MAX_GROUP_SIZE = 4096
MAX_CHUNK_BYTES = 2**20
_DECIMAL = re.compile(r"-?[0-9]{1,20}")


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
    # A slot added since ``base`` was taken is relative to the initial weights it began as.
    initial = state.initial_weights()
    base = dict(base)
    for key in set(state.fast_weights) - set(base):
        slot, name = split_slot_name(key)
        if slot:
            base[key] = initial[name]
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


def header_int(value: Any, what: str, *, low: int = 0, high: int = MAX_HEADER_INT) -> int:
    """A decimal integer header field in ``[low, high]``.

    Raises:
        FormatError: not a decimal string of at most 20 digits, or out of range.
    """
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise FormatError(f"{what} must be a decimal integer, got {str(value)[:40]!r}")
    number = int(value)
    if not low <= number <= high:
        raise FormatError(f"{what} must be in {low}..{high}, got {number}")
    return number


def _json_dict(header: Mapping[str, str], key: str) -> dict[str, Any]:
    value = json.loads(header[key])
    if not isinstance(value, dict):
        raise FormatError(f"header field {key} must be a JSON object, got {type(value).__name__}")
    return value


def _json_int(value: Any, what: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FormatError(f"{what} must be an integer in {low}..{high}, got {str(value)[:40]!r}")
    return value


def _header_shapes(
    header: Mapping[str, str], expected: Mapping[str, tuple[int, ...]] | None
) -> dict[str, tuple[int, ...]]:
    """The header's tensor shapes, bounded, and each the shape ``expected`` gives its name."""
    raw = _json_dict(header, "shapes")
    if len(raw) > MAX_TENSORS:
        raise FormatError(f"the header names {len(raw)} tensors, at most {MAX_TENSORS}")
    shapes = {}
    for name, dims in raw.items():
        if not isinstance(dims, list) or len(dims) > 8:
            raise FormatError(f"the shape of {name[:80]!r} must be a list of at most 8 sizes")
        shape = tuple(
            _json_int(d, f"a size of {name[:80]!r}", low=1, high=MAX_TENSOR_ENTRIES) for d in dims
        )
        if math.prod(shape) > MAX_TENSOR_ENTRIES:
            raise FormatError(
                f"{name[:80]!r} has {math.prod(shape)} entries, at most {MAX_TENSOR_ENTRIES}"
            )
        shapes[name] = shape
    if expected is not None:
        for name, shape in shapes.items():
            if name not in expected or tuple(expected[name]) != shape:
                want = tuple(expected[name]) if name in expected else None
                raise FormatError(
                    f"the header holds {name[:80]!r} of shape {shape}, the model's fast "
                    f"weight of that name has shape {want}"
                )
    return shapes


def _header_ttt_config(header: Mapping[str, str]) -> TTTConfig:
    """The inner-loop settings, each of its field's type, finite and bounded."""
    raw = _json_dict(header, "ttt_config")
    defaults = {f.name: f.default for f in fields(TTTConfig)}
    if not set(raw) <= set(defaults):
        raise FormatError(f"ttt_config has unknown fields {sorted(set(raw) - set(defaults))}")
    for name, value in raw.items():
        kind = type(defaults[name])
        if kind is int:
            _json_int(value, f"ttt_config.{name}", low=1, high=MAX_CHUNK_BYTES)
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FormatError(f"ttt_config.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or abs(value) > 1e6:
                raise FormatError(f"ttt_config.{name} must be finite and at most 1e6")
        elif not isinstance(value, kind):
            raise FormatError(f"ttt_config.{name} must be a {kind.__name__}, got {value!r}")
    return TTTConfig(**raw)


def _byte_tensor(tensors: Mapping[str, Tensor], name: str) -> bytes:
    tensor = tensors[name]
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise FormatError(f"{name} must be a 1-D uint8 tensor, got {tensor.dtype} {tensor.shape}")
    return bytes(tensor.tolist())


def read_delta(
    data: bytes,
    *,
    source: str = "delta",
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> WeightDelta:
    """Parse a delta file written by :func:`make_delta`. Every header field is checked and
    bounded before it is used, so a damaged or forged file is a FormatError (never another
    exception, nor a huge allocation).

    Args:
        shapes: the names and shapes of the fast weights the delta may hold (the model's);
            checked before its tensors are read.

    Raises:
        FormatError: not a delta file, truncated, forged or inconsistent.
    """
    try:
        tensors = load_safetensors(bytes(data))
        header = _safetensors_metadata(data)
    except (SafetensorError, ValueError, RuntimeError, RecursionError) as exc:
        raise FormatError(f"{source} is not a readable safetensors file: {exc}") from exc
    if header.get("format") != DELTA_FORMAT:
        raise FormatError(
            f"{source} has format {header.get('format')!r}, expected {DELTA_FORMAT!r}"
        )
    try:
        group_size = header_int(header["group_size"], "group_size", low=2, high=MAX_GROUP_SIZE)
        if group_size & (group_size - 1):
            raise FormatError(f"group_size must be a power of two, got {group_size}")
        shape_of = _header_shapes(header, shapes)
        kept_raw = _json_dict(header, "kept")
        if set(kept_raw) != set(shape_of):
            raise FormatError("the header's kept counts and shapes name different tensors")
        packed = {}
        for name, shape in shape_of.items():
            numel = math.prod(shape)
            kept = _json_int(kept_raw[name], f"kept of {name[:80]!r}", low=0, high=numel)
            if f"{name}.bitmap" in tensors:
                bitmap = tensors[f"{name}.bitmap"]
                if bitmap.dtype != torch.uint8 or bitmap.shape != (-(-numel // 8),):
                    raise FormatError(f"the bitmap of {name} does not match its shape")
                mask = _from_bitmap(bitmap, numel)
                indices = torch.nonzero(mask).reshape(-1)
            elif f"{name}.indices" in tensors:
                indices = tensors[f"{name}.indices"].long()
                if indices.dim() != 1 or (
                    indices.numel()
                    and (
                        int(indices.min()) < 0
                        or int(indices.max()) >= numel
                        or bool((indices[1:] <= indices[:-1]).any())
                    )
                ):
                    raise ValueError(f"indices of {name} are out of range or not increasing")
            else:
                indices = torch.arange(numel)
            if indices.numel() != kept:
                raise ValueError(f"{name} keeps {indices.numel()} entries, header says {kept}")
            codes, scales = tensors[f"{name}.codes"], tensors[f"{name}.scales"].float()
            if codes.dtype != torch.uint8 or not bool(torch.isfinite(scales).all()):
                raise ValueError(f"codes or scales of {name} are damaged")
            groups = -(-kept // group_size)
            if scales.shape != (groups,) or codes.shape != (groups * group_size // 2,):
                raise ValueError(f"codes or scales of {name} do not match its {kept} entries")
            packed[name] = PackedDelta(indices, codes, scales, shape, group_size)
        model = header["model"]
        extra = _json_dict(header, "extra")
        labels = _json_dict(header, "labels")
        delta = WeightDelta(
            model=model if isinstance(model, str) else "",
            packed=packed,
            ttt_config=_header_ttt_config(header),
            position=header_int(header["position"], "position"),
            steps=header_int(header["steps"], "steps"),
            rejected_steps=header_int(header["rejected_steps"], "rejected_steps"),
            last_byte=header_int(header["last_byte"], "last_byte", high=255),
            pending=_byte_tensor(tensors, "pending"),
            recent_inputs=_byte_tensor(tensors, "recent_inputs"),
            extra={str(k): str(v) for k, v in extra.items()},
            labels={str(k): str(v) for k, v in labels.items()},
        )
    except FormatError as exc:
        raise FormatError(f"{source} is damaged: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, RecursionError) as exc:
        raise FormatError(f"{source} is damaged: {exc}") from exc
    if len(delta.pending) >= delta.ttt_config.chunk_bytes:
        raise FormatError(f"{source} is damaged: bad partial-chunk buffer")
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
    slots = {split_slot_name(name)[0] for delta in deltas for name in delta.packed}
    while max(slots, default=0) > max(state.slots()):
        state.add_slot()  # slots with no change saved stay at the initial weights
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
