"""Test-time training: the fast-weight state of one stream and its prequential inner loop.

The streaming contract (DESIGN.md, "The weight memory"), per chunk of ``chunk_bytes``:

1. score the chunk with the current fast weights (the honest, prequential loss);
2. then take one inner SGD step on the same chunk's next-byte loss, with gradient-norm clipping
   and an optional decay toward the initial fast weights; a non-finite loss or gradient rejects
   the step and keeps the previous fast weights;
3. carry the sliding-window cache forward.

The frozen prefix runs once per chunk without autograd; only the suffix blocks and the head run
backward, and only toward the fast weights. A byte is never scored by weights that trained on it.
Reading a state without changing it (scoring, generation) is :mod:`memsdk.engine.scoring`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from memsdk.engine.fisher import FisherDiagonal, top_fraction
from memsdk.engine.model import START_BYTE, ByteLM, FastWeights, KVCache
from memsdk.errors import ConfigError, FormatError, InputError
from memsdk.files import atomic_write_bytes
from memsdk.kernels.fast_mlp import clipped_sgd_, squared_norm

__all__ = [
    "FISHER_MASKED_INNER_LR",
    "MAX_SLOTS",
    "StreamReport",
    "TTTConfig",
    "TTTState",
    "initial_weights",
    "inner_update",
    "slot_name",
    "split_slot_name",
    "stream",
    "stream_many",
]

STATE_FORMAT = "memsdk.ttt_state/1"
FAST_PARAMS = ("dynamic_mlp", "fisher_masked")
# The inner learning rate of the fisher_masked mode (1% masks) for the shipped model, tuned on
# development streams by benchmarks/deltas.py: the meta-learned rate of the dynamic MLPs is
# far too large for the static weights, which were not trained to be moved.
FISHER_MASKED_INNER_LR = 0.03
LN2 = math.log(2.0)
# Fast-weight slots (the "slots" retention of memsdk.retention): slot 0 holds the model's
# names, slot k > 0 the same names after "slot{k}/", all in one dict, so states, deltas and
# their checks carry every slot without a format of their own.
MAX_SLOTS = 64


@dataclass(frozen=True)
class TTTConfig:
    """Inner-loop settings. ``inner_lr=0`` freezes the fast weights (the frozen baseline).

    ``fast_params`` picks what the inner steps move: ``"dynamic_mlp"`` (the default: the
    dynamic MLPs, all of their entries) or ``"fisher_masked"`` (micro-TTT: among every suffix
    parameter, dynamic MLPs included, only the ``mask_fraction`` of each tensor with the largest
    running Fisher diagonal; the mask is chosen again every ``mask_refresh`` steps).
    """

    chunk_bytes: int = 512
    inner_lr: float = 3.0  # with max_grad_norm=1: each step moves the fast weights by at most 3
    max_grad_norm: float = 1.0
    decay: float = 0.0  # fraction of (fast - initial) removed per step; 0 keeps all changes
    fast_params: str = "dynamic_mlp"
    mask_fraction: float = 0.01
    mask_refresh: int = 16

    def __post_init__(self) -> None:
        if self.chunk_bytes < 1:
            raise ConfigError(f"chunk_bytes must be at least 1, got {self.chunk_bytes}")
        if self.inner_lr < 0 or not math.isfinite(self.inner_lr):
            raise ConfigError(f"inner_lr must be a finite number >= 0, got {self.inner_lr}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be positive, got {self.max_grad_norm}")
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"decay must be in [0, 1), got {self.decay}")
        if self.fast_params not in FAST_PARAMS:
            raise ConfigError(f"fast_params must be one of {FAST_PARAMS}, got {self.fast_params!r}")
        if not 0.0 < self.mask_fraction <= 1.0:
            raise ConfigError(f"mask_fraction must be in (0, 1], got {self.mask_fraction}")
        if self.mask_refresh < 1:
            raise ConfigError(f"mask_refresh must be at least 1, got {self.mask_refresh}")


@dataclass(frozen=True)
class StreamReport:
    """What one :func:`stream` call did. ``bits_per_byte`` is prequential: each chunk was
    scored before the inner step that trained on it (nan when no byte was scored)."""

    bytes_scored: int
    chunks: int
    steps: int
    rejected_steps: int
    pending_bytes: int
    bits: float
    seconds: float
    chunk_bits_per_byte: tuple[float, ...]
    byte_bits: Tensor | None = None  # (bytes_scored,) bits of each byte, when asked for

    @property
    def bits_per_byte(self) -> float:
        return self.bits / self.bytes_scored if self.bytes_scored else math.nan


def fingerprint(model: ByteLM) -> str:
    """A short hash of a model's config and weights: states and deltas name their base."""
    digest = hashlib.sha256(model.config.to_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def initial_weights(model: ByteLM, config: TTTConfig) -> FastWeights:
    """The starting point of every stream's fast weights under ``config.fast_params`` (live
    parameters, not copies): the dynamic MLPs' meta-learned initial weights, and in the
    Fisher-masked mode every other suffix parameter as well."""
    weights = dict(model.initial_fast_weights())
    if config.fast_params == "fisher_masked":
        weights.update(model.suffix_parameters())
    return weights


def slot_name(slot: int, name: str) -> str:
    """The key of fast weight ``name`` of ``slot`` in a state's fast-weight dict."""
    return name if slot == 0 else f"slot{slot}/{name}"


def split_slot_name(name: str) -> tuple[int, str]:
    """(slot, the model's name) of a key of a state's fast-weight dict."""
    head, sep, rest = name.partition("/")
    if sep and head.startswith("slot") and head[4:].isdecimal():
        return int(head[4:]), rest
    return 0, name


def _empty_caches(model: ByteLM) -> list[KVCache | None]:
    cfg = model.config
    if cfg.mixer == "ttt_linear":
        return [None] * cfg.n_layer  # each block starts from its learned inner state W0, b0
    empty = torch.zeros(1, cfg.n_head, 0, cfg.head_dim, device=model_device(model))
    return [(empty, empty) for _ in range(cfg.n_layer)]


def model_device(model: ByteLM) -> torch.device:
    """Where the model's weights live: states, caches and inputs are made there (the engine
    runs on CPU, or on CUDA after ``model.cuda()``)."""
    return model.embedding.weight.device


def _cache_names(model: ByteLM) -> tuple[str, str]:
    """The names of a block cache's two tensors in a state file."""
    return ("state", "pending") if model.config.mixer == "ttt_linear" else ("k", "v")


def _read_cache(tensors: dict[str, Tensor], i: int, model: ByteLM) -> KVCache | None:
    """Block ``i``'s cache from a state file's tensors, its shape checked.

    Raises:
        KeyError: a tensor is missing.
        ValueError: a shape does not fit the model.
    """
    cfg = model.config
    if cfg.mixer == "ttt_linear":
        if f"cache.{i}.state" not in tensors:
            return None  # saved before the block saw a byte
        state, pending = tensors[f"cache.{i}.state"], tensors[f"cache.{i}.pending"]
        expected = (1, cfg.n_head, cfg.head_dim + 1, cfg.head_dim)
        if state.shape != expected or pending.dim() != 3:
            raise ValueError(f"cache {i} has shape {tuple(state.shape)}, expected {expected}")
        if pending.shape[::2] != (1, cfg.d_model) or pending.shape[1] >= cfg.ttt_mini_batch:
            raise ValueError(f"cache {i} holds pending inputs of shape {tuple(pending.shape)}")
        return state, pending
    k, v = tensors[f"cache.{i}.k"], tensors[f"cache.{i}.v"]
    if k.shape != v.shape or k.shape[:2] != (1, cfg.n_head) or k.shape[2] > cfg.window:
        raise ValueError(f"cache {i} has shape {tuple(k.shape)}")
    return k, v


class TTTState:
    """The weight memory of one stream: fast weights, the partial-chunk buffer, the window cache,
    the position and the step count. One per scope; states never share tensors.

    Args:
        model: the (frozen) model whose fast weights this state adapts.
        config: inner-loop settings; defaults to the model's tuned defaults.
    """

    def __init__(self, model: ByteLM, config: TTTConfig | None = None) -> None:
        self.model = model
        self.config = config or getattr(model, "default_ttt", None) or TTTConfig()
        self.model_fingerprint = fingerprint(model)
        self.extra: dict[str, str] = {}  # caller's bookkeeping, saved with the state
        self.reset()

    def reset(self) -> None:
        """Forget everything: initial fast weights, empty cache, position 0."""
        self.fast_weights: FastWeights = {
            name: weight.detach().clone() for name, weight in self.initial_weights().items()
        }
        self.pending = b""
        self.caches = _empty_caches(self.model)
        self.recent_inputs = b""  # the input bytes whose keys and values the caches hold
        self.fisher = FisherDiagonal()
        self.mask: dict[str, Tensor] | None = None
        self.last_byte = START_BYTE
        self.position = 0
        self.steps = 0
        self.rejected_steps = 0

    def initial_weights(self) -> FastWeights:
        return initial_weights(self.model, self.config)

    def slots(self) -> list[int]:
        """The fast-weight slots this state holds (``[0]`` unless slots were added)."""
        return sorted({split_slot_name(name)[0] for name in self.fast_weights})

    def slot_weights(self, slot: int) -> FastWeights:
        """The fast weights of ``slot``, under the model's names (the tensors, not copies).

        Raises:
            InputError: the state holds no such slot.
        """
        weights = {}
        for key, weight in self.fast_weights.items():
            k, name = split_slot_name(key)
            if k == slot:
                weights[name] = weight
        if not weights:
            raise InputError(f"the state holds no fast-weight slot {slot}: it has {self.slots()}")
        return weights

    def set_slot_weights(self, slot: int, weights: FastWeights) -> None:
        """Replace ``slot``'s fast weights. The dict is replaced, never edited, so a reader
        holding the previous one keeps a consistent set."""
        new = dict(self.fast_weights)
        new.update({slot_name(slot, name): w for name, w in weights.items()})
        self.fast_weights = new

    def add_slot(self) -> int:
        """A new slot holding the initial fast weights; returns its number.

        Raises:
            InputError: the state already holds ``MAX_SLOTS`` slots.
        """
        used = set(self.slots())
        slot = next(k for k in range(MAX_SLOTS + 1) if k not in used)
        if slot >= MAX_SLOTS:
            raise InputError(f"a state holds at most {MAX_SLOTS} fast-weight slots")
        initial = self.initial_weights()
        self.set_slot_weights(slot, {n: w.detach().clone() for n, w in initial.items()})
        return slot

    def clear_window(self) -> None:
        """Empty the sliding-window cache (the working memory), as at the start of a stream:
        text of another slot's source is no context for the next chunk."""
        self.caches = _empty_caches(self.model)
        self.recent_inputs = b""
        self.last_byte = START_BYTE

    def drift(self) -> float:
        """Relative distance of the fast weights from the initial ones (0 after a reset),
        over every slot."""
        initial = self.initial_weights()
        num = sum(
            float((w - initial[split_slot_name(n)[1]]).pow(2).sum())
            for n, w in self.fast_weights.items()
        )
        den = len(self.slots()) * sum(float(w.pow(2).sum()) for w in initial.values())
        return math.sqrt(num / den) if den else math.sqrt(num)

    def to_bytes(self) -> bytes:
        """The state as a safetensors file (bytes); :meth:`from_bytes` reads it back exactly,
        with :attr:`extra` (string metadata the caller keeps beside the state)."""
        tensors = {f"fast.{name}": w for name, w in self.fast_weights.items()}
        names = _cache_names(self.model)
        for i, cache in enumerate(self.caches):
            if cache is not None:
                for name, tensor in zip(names, cache, strict=True):
                    tensors[f"cache.{i}.{name}"] = tensor
        tensors["pending"] = torch.tensor(list(self.pending), dtype=torch.uint8)
        metadata = {
            "format": STATE_FORMAT,
            "model": self.model_fingerprint,
            "model_config": self.model.config.to_json(),
            "ttt_config": json.dumps(asdict(self.config), sort_keys=True),
            "last_byte": str(self.last_byte),
            "position": str(self.position),
            "steps": str(self.steps),
            "rejected_steps": str(self.rejected_steps),
        }
        metadata.update({f"extra.{k}": str(v) for k, v in self.extra.items()})
        cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        return save_safetensors(cpu, metadata=metadata)

    def save(self, path: str) -> None:
        """Write the state atomically (temp file, fsync, rename) as safetensors."""
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, model: ByteLM, *, source: str = "state") -> TTTState:
        """Read a state written by :meth:`to_bytes` for the same model.

        Raises:
            FormatError: not a state file, truncated or forged, or saved for another model.
        """
        try:
            tensors = load_safetensors(bytes(data))
            metadata = _safetensors_metadata(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise FormatError(f"{source} is not a readable safetensors file: {exc}") from exc
        if metadata.get("format") != STATE_FORMAT:
            raise FormatError(
                f"{source} has format {metadata.get('format')!r}, expected {STATE_FORMAT!r}"
            )
        state = cls.__new__(cls)
        state.model = model
        state.extra = {k[6:]: v for k, v in metadata.items() if k.startswith("extra.")}
        state.model_fingerprint = fingerprint(model)
        if metadata.get("model") != state.model_fingerprint:
            raise FormatError(
                f"{source} was saved for model {metadata.get('model')}, this engine runs model "
                f"{state.model_fingerprint}: open it with the model it was saved with, or reset it"
            )
        try:
            state.config = TTTConfig(**json.loads(metadata["ttt_config"]))
            state.last_byte = int(metadata["last_byte"])
            state.position = int(metadata["position"])
            state.steps = int(metadata["steps"])
            state.rejected_steps = int(metadata["rejected_steps"])
            state.pending = bytes(tensors["pending"].tolist())
            state.fast_weights = {}
            state.recent_inputs = b""
            state.fisher, state.mask = FisherDiagonal(), None
            initial_of = state.initial_weights()
            keys = [k[5:] for k in tensors if k.startswith("fast.")]
            slots = {split_slot_name(key)[0] for key in keys} | {0}
            if max(slots) >= MAX_SLOTS:
                raise ValueError(f"it holds slot {max(slots)}, at most {MAX_SLOTS - 1}")
            for slot in sorted(slots):
                for name, initial in initial_of.items():
                    weight = tensors[f"fast.{slot_name(slot, name)}"]
                    if weight.shape != initial.shape or weight.dtype != initial.dtype:
                        raise ValueError(f"fast weight {name} has shape {tuple(weight.shape)}")
                    state.fast_weights[slot_name(slot, name)] = weight.to(initial.device)
            device = model_device(model)
            state.caches = [
                None if cache is None else (cache[0].to(device), cache[1].to(device))
                for cache in (_read_cache(tensors, i, model) for i in range(model.config.n_layer))
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{source} is damaged: {exc}") from exc
        if not 0 <= state.last_byte < 256 or len(state.pending) >= state.config.chunk_bytes:
            raise FormatError(f"{source} is damaged: bad last byte or partial-chunk buffer")
        return state

    @classmethod
    def load(cls, path: str, model: ByteLM) -> TTTState:
        """Read a state file written by :meth:`save` (see :meth:`from_bytes` for errors)."""
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), model, source=str(path))


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in memory."""
    if len(data) < 8:
        raise ValueError("file is shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("header is longer than the file")
    header = json.loads(bytes(data[8 : 8 + size]))
    return dict(header.get("__metadata__") or {})


def _as_bytes(data: bytes | bytearray | memoryview | str, what: str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise InputError(f"{what} must be bytes or str, got {type(data).__name__}")


def _tokens(data: bytes, device: torch.device | None = None) -> Tensor:
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()[None]  # (1, C)
    return tokens if device is None else tokens.to(device)


def clip_factor(grads: list[Tensor], max_norm: float, batched: bool) -> tuple[Tensor, Tensor]:
    """Global gradient norm (per example when ``batched``) and the factor that clips it."""
    if batched:
        squares = sum(g.pow(2).flatten(1).sum(1) for g in grads)  # (B,)
    else:
        squares = sum(g.pow(2).sum() for g in grads)
    norm = squares.sqrt()
    return norm, (max_norm / (norm + 1e-6)).clamp(max=1.0)


def inner_update(
    fast_weights: FastWeights,
    grads: list[Tensor],
    initial: FastWeights,
    config: TTTConfig,
    *,
    batched: bool = False,
) -> tuple[FastWeights, Tensor]:
    """One clipped SGD step with decay toward ``initial``; differentiable (used by the outer
    loop with ``create_graph=True``). Returns the new fast weights and the gradient norm."""
    norm, factor = clip_factor(grads, config.max_grad_norm, batched)
    new = {}
    for (name, weight), grad in zip(fast_weights.items(), grads, strict=True):
        scale = factor.view(-1, *([1] * (grad.dim() - 1))) if batched else factor
        step = weight - config.inner_lr * scale * grad
        if config.decay:
            step = step - config.decay * (weight - initial[name])
        new[name] = step
    return new, norm


def _forward(
    model: ByteLM, inputs: bytes, caches: list[KVCache], fast_weights: FastWeights
) -> tuple[Tensor, list[KVCache]]:
    """Logits (C, 256) for one chunk of input bytes and the caches after it."""
    logits, caches = _forward_tokens(
        model, _tokens(inputs, model_device(model)), caches, fast_weights
    )
    return logits[0], caches


def _forward_tokens(
    model: ByteLM, tokens: Tensor, caches: list[KVCache], fast_weights: FastWeights
) -> tuple[Tensor, list[KVCache]]:
    """Logits (B, C, 256) for input tokens (B, C) and the caches after them: B streams of one
    batch, their caches (B, ...) and fast weights (B, ...) stacked, or one. The frozen prefix
    runs without autograd; the suffix runs in the caller's grad mode."""
    first = model.config.first_dynamic
    with torch.no_grad():
        hidden, prefix_caches = model.prefix(model.embed(tokens), caches[:first])
    logits, suffix_caches = model.suffix(hidden, caches[first:], fast_weights)
    return logits, prefix_caches + suffix_caches


def _stream_chunk(state: TTTState, chunk: bytes, slot: int) -> Tensor:
    """Score one chunk, then one inner step of ``slot`` on it. Returns the bits of each byte
    (C,)."""
    model, config = state.model, state.config
    learn = config.inner_lr > 0
    fast = {n: w.detach().requires_grad_(learn) for n, w in state.slot_weights(slot).items()}
    with torch.enable_grad() if learn else torch.no_grad():
        inputs = bytes([state.last_byte]) + chunk[:-1]
        logits, caches = _forward(model, inputs, state.caches, fast)
        targets = _tokens(chunk, logits.device)[0]
        losses = F.cross_entropy(logits, targets, reduction="none")  # (C,) nats
        loss = losses.mean()
        accepted = False
        if learn and torch.isfinite(loss):
            grads = torch.autograd.grad(loss, list(fast.values()))
            state.fisher.update(list(fast), grads)
            if config.fast_params == "fisher_masked":
                grads = _masked(state, list(fast), grads)
            if grads[0].is_cuda:
                accepted = _fused_inner_update(state, slot, fast, list(grads))
            else:
                new, norm = inner_update(fast, grads, state.initial_weights(), config)
                if torch.isfinite(norm):
                    state.set_slot_weights(slot, {n: w.detach() for n, w in new.items()})
                    accepted = True
    caches = [(k.detach(), v.detach()) for k, v in caches]
    _advance(state, inputs, chunk, caches, accepted if learn else None)
    return losses.detach().cpu() / LN2


def _advance(
    state: TTTState, inputs: bytes, chunk: bytes, caches: list[KVCache], accepted: bool | None
) -> None:
    """After one chunk of a stream: count its inner step (``accepted`` is None when the inner
    loop is frozen), keep the window's caches and inputs, and move past the chunk."""
    if accepted is not None:
        state.steps += accepted
        state.rejected_steps += not accepted
    state.caches = caches
    state.recent_inputs = (state.recent_inputs + inputs)[-state.model.config.window :]
    state.last_byte = chunk[-1]
    state.position += len(chunk)


def _fused_inner_update(state: TTTState, slot: int, fast: FastWeights, grads: list[Tensor]) -> bool:
    """:func:`inner_update` on CUDA in Triton (memsdk.kernels.fast_mlp): the same arithmetic in
    two kernels, norm then update, into copies of the fast weights, which replace the state's
    only when the norm is finite. Returns whether the step was accepted."""
    config = state.config
    new = {n: w.detach().clone() for n, w in fast.items()}
    initial = state.initial_weights()
    step = clipped_sgd_(
        list(new.values()),
        grads,
        squared_norm(grads),
        lr=config.inner_lr,
        max_norm=config.max_grad_norm,
        initial=[initial[n] for n in new] if config.decay else None,
        decay=config.decay,
    )
    accepted = bool(step.accepted)
    if accepted:
        state.set_slot_weights(slot, new)
    return accepted


def _masked(state: TTTState, names: list[str], grads: tuple[Tensor, ...]) -> list[Tensor]:
    """Keep each gradient only where the state's Fisher mask is set, choosing the mask again
    from the running Fisher diagonal every ``mask_refresh`` steps."""
    if not state.fisher.count:
        return list(grads)  # non-finite gradients: the step is rejected anyway
    if state.mask is None or state.steps % state.config.mask_refresh == 0:
        state.mask = top_fraction(state.fisher.mean(), state.config.mask_fraction)
    return [g * state.mask[name] for name, g in zip(names, grads, strict=True)]


def stream(
    state: TTTState,
    data: bytes | str,
    *,
    final: bool = False,
    record_bytes: bool = False,
    slot: int = 0,
) -> StreamReport:
    """Absorb ``data`` into ``state`` prequentially, whole chunks at a time, each scored and
    then learned by the fast weights of ``slot``.

    Bytes that do not fill a chunk wait in the partial-chunk buffer for the next call; with
    ``final=True`` they are streamed now as a short chunk. ``record_bytes`` keeps the bits of
    every scored byte in the report.

    Raises:
        InputError: ``data`` is neither bytes nor str, or the state holds no such slot.
    """
    return stream_many([state], [data], final=final, record_bytes=record_bytes, slots=[slot])[0]


def stream_many(
    states: Sequence[TTTState],
    data: Sequence[bytes | str],
    *,
    final: bool = False,
    record_bytes: bool = False,
    slots: Sequence[int] | None = None,
) -> list[StreamReport]:
    """:func:`stream` of many independent streams at once, one state each (a scope's, say):
    ``data[i]`` into ``states[i]`` by the fast weights of ``slots[i]`` (default slot 0). Each
    state ends where ``stream(states[i], data[i], ...)`` would leave it, up to floating-point
    rounding; each report's ``seconds`` is the whole call's.

    The streams advance together, one chunk each per round. In a round, the streams whose
    model, inner-loop settings, chunk length and window-cache shapes agree run as one batch:
    one forward and backward over their chunks (B, C), with their fast weights stacked
    (B, d, h) and their caches (B, ...), then each stream's own clipped step (its own gradient
    norm; a non-finite loss or gradient rejects that stream's step alone). A stream alone in
    its group, or in the ``fisher_masked`` mode (whose masks are per stream), runs by itself.
    Batching pays where one stream's chunk leaves the hardware idle: on two CPU cores, 16
    streams of the shipped model ran 1.19 times as fast as one after another in the main
    thread and 1.62 times in another thread, where each small operation costs more
    (``benchmarks/batched_streams.py``); a GPU, where one chunk of it is a few small kernels,
    should gain more (not measured yet).

    Raises:
        InputError: ``states``, ``data`` and ``slots`` differ in length, a state appears twice,
            an item of ``data`` is neither bytes nor str, or a state holds no such slot.
    """
    slots = [0] * len(states) if slots is None else list(slots)
    if not len(states) == len(data) == len(slots):
        raise InputError(
            f"stream_many takes one data item and one slot per state: got {len(states)} states, "
            f"{len(data)} data items and {len(slots)} slots"
        )
    if len({id(state) for state in states}) != len(states):
        raise InputError("a state appears twice in stream_many: give each stream's state once")
    data = [_as_bytes(item, "data") for item in data]
    for state, slot in zip(states, slots, strict=True):
        state.slot_weights(slot)  # the slot exists (raises before anything changes)
    started = time.perf_counter()
    buffers, chunks = [], []
    for state, item in zip(states, data, strict=True):
        size = state.config.chunk_bytes
        buffer = state.pending + item
        cut = len(buffer) if final else len(buffer) - len(buffer) % size
        buffers.append((buffer, cut))
        chunks.append([buffer[i : min(i + size, cut)] for i in range(0, cut, size)])
    counts_before = [(state.steps, state.rejected_steps) for state in states]
    chunk_bits: list[list[Tensor]] = [[] for _ in states]
    for step in range(max(map(len, chunks), default=0)):
        groups: dict[tuple, list[int]] = {}
        for i, stream_chunks in enumerate(chunks):
            if step < len(stream_chunks):
                key = _batch_key(states[i], len(stream_chunks[step]))
                groups.setdefault(key if key is not None else ("alone", i), []).append(i)
        for members in groups.values():
            if len(members) == 1:
                i = members[0]
                results = [_stream_chunk(states[i], chunks[i][step], slots[i])]
            else:
                results = _stream_batch(
                    [states[i] for i in members],
                    [chunks[i][step] for i in members],
                    [slots[i] for i in members],
                )
            for i, bits in zip(members, results, strict=True):
                chunk_bits[i].append(bits)
    seconds = time.perf_counter() - started
    reports = []
    for i, state in enumerate(states):
        buffer, cut = buffers[i]
        state.pending = buffer[cut:]
        steps, rejected = counts_before[i]
        recorded = chunk_bits[i]
        reports.append(
            StreamReport(
                bytes_scored=cut,
                chunks=len(recorded),
                steps=state.steps - steps,
                rejected_steps=state.rejected_steps - rejected,
                pending_bytes=len(state.pending),
                bits=float(sum(float(bits.sum()) for bits in recorded)),
                seconds=seconds,
                chunk_bits_per_byte=tuple(float(bits.mean()) for bits in recorded),
                byte_bits=(torch.cat(recorded) if recorded else torch.zeros(0))
                if record_bytes
                else None,
            )
        )
    return reports


def _batch_key(state: TTTState, length: int) -> tuple | None:
    """What streams must share to run one chunk as a batch (None: this one runs alone)."""
    if state.config.fast_params != "dynamic_mlp":
        return None
    shapes = tuple(
        None if cache is None else tuple(t.shape for t in cache) for cache in state.caches
    )
    return id(state.model), state.config, length, shapes


def _stream_batch(states: list[TTTState], chunks: list[bytes], slots: list[int]) -> list[Tensor]:
    """:func:`_stream_chunk` for B streams of one batch key (:func:`_batch_key`): score each
    chunk, then each stream's inner step on its own chunk. Returns each chunk's bits (C,)."""
    model, config = states[0].model, states[0].config
    learn = config.inner_lr > 0
    device = model_device(model)
    weights = [state.slot_weights(slot) for state, slot in zip(states, slots, strict=True)]
    fast = {
        name: torch.stack([w[name] for w in weights]).requires_grad_(learn)  # (B, ...)
        for name in weights[0]
    }
    caches = [
        None if cache is None else tuple(torch.cat(parts) for parts in zip(*group, strict=True))
        for cache, group in zip(
            states[0].caches, zip(*(state.caches for state in states), strict=True), strict=True
        )
    ]
    inputs = [
        bytes([state.last_byte]) + chunk[:-1] for state, chunk in zip(states, chunks, strict=True)
    ]
    tokens = _tokens(b"".join(inputs), device).view(len(states), -1)  # (B, C)
    targets = _tokens(b"".join(chunks), device).view(len(states), -1)  # (B, C)
    with torch.enable_grad() if learn else torch.no_grad():
        logits, caches = _forward_tokens(model, tokens, caches, fast)  # (B, C, 256)
        losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        losses = losses.view(targets.shape)  # (B, C) nats
        if learn:
            loss = losses.mean(1)  # (B,): each stream's gradient is its own mean's
            grads = torch.autograd.grad(loss.sum(), list(fast.values()))
            new, norm = inner_update(
                fast, list(grads), states[0].initial_weights(), config, batched=True
            )
            finite = torch.stack([torch.isfinite(g).flatten(1).all(1) for g in grads]).all(0)
            loss_finite = torch.isfinite(loss)
            accepted = (loss_finite & torch.isfinite(norm)).tolist()
            fisher = (loss_finite & finite).tolist()
    names = list(fast)
    for b, (state, slot) in enumerate(zip(states, slots, strict=True)):
        if learn:
            if fisher[b]:
                state.fisher.add(names, [g[b] for g in grads])
            if accepted[b]:
                # Copies, so that states never share storage (each saves and drops its own).
                state.set_slot_weights(slot, {n: w[b].detach().clone() for n, w in new.items()})
        own = [tuple(t[b : b + 1].detach().clone() for t in cache) for cache in caches]
        _advance(state, inputs[b], chunks[b], own, accepted[b] if learn else None)
    return list((losses.detach() / LN2).cpu().unbind(0))
