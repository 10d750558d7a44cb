"""The byte-level language model of the weight memory (TTT-E2E at small scale).

Bytes in, bytes out (vocab 256). Every block has sliding-window causal attention, the working
memory whose cost per byte does not grow with the stream, and a static MLP. The last quarter of
the blocks (at least one) also carry a *dynamic* MLP with its own norm, in parallel with the
static one. Only the dynamic MLPs are fast weights: they are passed into :meth:`ByteLM.suffix`
explicitly, so the same code serves plain training, meta-learning (differentiating through inner
steps) and streaming, where the frozen prefix runs once per chunk without autograd.

``ModelConfig(mixer="ttt_linear")`` replaces the attention of every block by a TTT-Linear layer
(Sun et al., ICML 2024), whose state is a per-head linear model trained on the stream itself.

Reference: Tandon et al., "End-to-End Test-Time Training for Long Context" (TTT-E2E,
arXiv 2512.23675); Krause et al., "Dynamic Evaluation of Transformer Language Models" (2019).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memsdk.errors import ConfigError
from memsdk.kernels.fast_mlp import fast_mlp
from memsdk.kernels.swa_attention import swa_attention
from memsdk.kernels.ttt_linear import MAX_HEAD_DIM, MAX_MINI_BATCH, ttt_linear

__all__ = ["ByteLM", "FastWeights", "KVCache", "ModelConfig", "Overrides"]

VOCAB_SIZE = 256
START_BYTE = 0  # the context before the first byte of a stream: NUL never occurs in text

# Fast weights by name, e.g. "blocks.3.up" (d_model, dynamic_hidden) and "blocks.3.down"
# (dynamic_hidden, d_model); during meta-learning each carries a leading batch dimension. Any
# other suffix parameter may be overridden too, under its parameter name (e.g.
# "blocks.3.mlp.up.weight", "head.weight"): the Fisher-masked mode trains those.
FastWeights = dict[str, Tensor]
Overrides = Mapping[str, Tensor]
NO_OVERRIDES: Overrides = {}
# Per block: keys (before the rotary embedding) and values of the last `window` positions.
KVCache = tuple[Tensor, Tensor]
# Per block of a TTT-Linear model: the inner state [W; b] (B, H, head_dim + 1, head_dim) at the
# start of the unfinished mini-batch, and the mixer inputs (B, r, d) of its r tokens so far.
TTTLinearCache = tuple[Tensor, Tensor]
MIXERS = ("swa", "ttt_linear")
LATER_FIELDS = ("mixer", "ttt_mini_batch")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a :class:`ByteLM`. Use the presets: ``tiny`` (tests), ``small`` (the CPU
    default), ``base`` (trained on a GPU), ``tiny_ttt_linear`` (tests of the TTT-Linear mixer)."""

    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    window: int = 256
    mlp_ratio: int = 4
    dynamic_ratio: int = 4
    rope_base: float = 10_000.0
    # The sequence mixer of every block: "swa" (sliding-window attention) or "ttt_linear"
    # (TTT-Linear, Sun et al. 2024, with ``ttt_mini_batch`` tokens per inner mini-batch).
    mixer: str = "swa"
    ttt_mini_batch: int = 16

    def __post_init__(self) -> None:
        if self.n_layer < 1 or self.d_model < 1 or self.window < 1:
            raise ConfigError(
                f"n_layer, d_model and window must be positive, got {self.n_layer}, "
                f"{self.d_model}, {self.window}"
            )
        if self.mixer not in MIXERS:
            raise ConfigError(f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.mixer == "ttt_linear":
            if self.d_model % self.n_head or self.head_dim > MAX_HEAD_DIM:
                raise ConfigError(
                    f"d_model={self.d_model} must split into n_head={self.n_head} heads of at "
                    f"most {MAX_HEAD_DIM} channels (the TTT-Linear state is head_dim^2 per head)"
                )
            if not 1 <= self.ttt_mini_batch <= MAX_MINI_BATCH:
                raise ConfigError(
                    f"ttt_mini_batch must be between 1 and {MAX_MINI_BATCH}, "
                    f"got {self.ttt_mini_batch}"
                )
        elif self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ConfigError(
                f"d_model={self.d_model} must split into n_head={self.n_head} heads of an even "
                "width (rotary embeddings rotate pairs of channels)"
            )

    @classmethod
    def tiny(cls) -> ModelConfig:
        return cls(n_layer=4, d_model=64, n_head=2, window=64)

    @classmethod
    def tiny_ttt_linear(cls) -> ModelConfig:
        """``tiny`` with TTT-Linear instead of attention in every block."""
        return dataclasses.replace(cls.tiny(), mixer="ttt_linear")

    @classmethod
    def small(cls) -> ModelConfig:
        # Sized to stream at 20 kB/s or more on a 2-core laptop CPU (benchmarks/weights.py).
        return cls(n_layer=4, d_model=128, n_head=4, window=256, mlp_ratio=3, dynamic_ratio=2)

    @classmethod
    def base(cls) -> ModelConfig:
        return cls(n_layer=8, d_model=384, n_head=6, window=1024)

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        presets = {
            "tiny": cls.tiny,
            "tiny_ttt_linear": cls.tiny_ttt_linear,
            "small": cls.small,
            "base": cls.base,
        }
        if name not in presets:
            raise ConfigError(f"unknown model preset {name!r}: choose one of {sorted(presets)}")
        return presets[name]()

    @property
    def n_dynamic(self) -> int:
        """How many of the last blocks carry a dynamic MLP: a quarter, at least one."""
        return max(1, self.n_layer // 4)

    @property
    def first_dynamic(self) -> int:
        return self.n_layer - self.n_dynamic

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_json(self) -> str:
        """The config as JSON, without the fields added after models shipped while they hold
        their defaults: a shipped config (and with it every model fingerprint, which hashes
        this text) reads and writes exactly as before those fields existed."""
        fields = dataclasses.asdict(self)
        for name in LATER_FIELDS:
            if fields[name] == _DEFAULTS[name]:
                del fields[name]
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"not a model config: {exc}") from exc


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def _linear(x: Tensor, layer: nn.Linear, overrides: Overrides, name: str) -> Tensor:
    return F.linear(x, overrides.get(f"{name}.weight", layer.weight))


def _norm(x: Tensor, layer: nn.LayerNorm, overrides: Overrides, name: str) -> Tensor:
    weight = overrides.get(f"{name}.weight", layer.weight)
    bias = overrides.get(f"{name}.bias", layer.bias)
    return F.layer_norm(x, layer.normalized_shape, weight, bias, layer.eps)


@functools.lru_cache(maxsize=64)
def _rotary_table(
    length: int, dim: int, base: float, device: torch.device
) -> tuple[Tensor, Tensor]:
    inv_freq = base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()  # (T, D/2) each


def _rotary(x: Tensor, start: int, base: float) -> Tensor:
    """Rotate channel pairs of ``x`` (B, H, T, D) by angles of positions start..start+T-1.

    Positions are relative to the oldest cached key, so angles stay small however long the
    stream; attention scores depend only on the distance between positions.
    """
    _, _, length, dim = x.shape
    cos, sin = _rotary_table(start + length, dim, base, x.device)
    cos, sin = cos[start:].to(x.dtype), sin[start:].to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


@functools.lru_cache(maxsize=64)
def _window_mask(length: int, total: int, window: int, device: torch.device) -> Tensor:
    """Additive mask (C, L): query i, at absolute position total-length+i, sees keys j with
    i_abs - window < j <= i_abs."""
    qpos = torch.arange(total - length, total, device=device)[:, None]
    kpos = torch.arange(total, device=device)[None, :]
    allowed = (kpos <= qpos) & (kpos > qpos - window)
    return torch.zeros(length, total, device=device).masked_fill(~allowed, float("-inf"))


@functools.lru_cache(maxsize=64)
def _band_mask(blocks: int, past: int, window: int, device: torch.device) -> Tensor:
    """Additive mask (blocks, W, 2W) of :func:`_blocked_attention`: query r of a block sees
    local keys t with r < t <= W + r; in the first block, the W - past left-padding keys are
    hidden too."""
    r = torch.arange(window, device=device)[:, None]
    t = torch.arange(2 * window, device=device)[None, :]
    allowed = ((t > r) & (t <= window + r)).expand(blocks, -1, -1).clone()
    allowed[0, :, : window - past] = False
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))


def _blocked_attention(q: Tensor, k: Tensor, v: Tensor, past: int, window: int) -> Tensor:
    """Sliding-window attention by blocks of W = window queries, each against the 2W keys that
    can reach it, instead of every query against every key: O(T * W) work.

    q (B, H, C, D) for the chunk; k, v (B, H, past + C, D) with past <= W cached positions
    first; returns (B, H, C, D). Keys are padded to W + blocks * W: W - past on the left
    (hidden by the mask) and enough on the right to fill the last block.
    """
    batch, heads, length, dim = q.shape
    blocks = -(-length // window)
    pad_right = blocks * window - length
    q = F.pad(q, (0, 0, 0, pad_right)).view(batch * heads, blocks, window, dim)

    def windows(x: Tensor) -> Tensor:  # (B, H, past + C, D) -> (B * H, blocks, 2W, D)
        x = F.pad(x, (0, 0, window - past, pad_right)).unfold(2, 2 * window, window)
        return x.transpose(-1, -2).reshape(batch * heads, blocks, 2 * window, dim)

    # A 4-D mask (1, blocks, W, 2W), broadcast over batch and heads: the CPU kernel takes a
    # fast path for it.
    mask = _band_mask(blocks, past, window, q.device).to(q.dtype)[None]
    y = F.scaled_dot_product_attention(q, windows(k), windows(v), attn_mask=mask)
    return y.view(batch, heads, blocks * window, dim)[:, :, :length]


class SlidingWindowAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(
        self, x: Tensor, past: KVCache | None, overrides: Overrides = NO_OVERRIDES
    ) -> tuple[Tensor, KVCache]:
        cfg = self.config
        batch, length, _ = x.shape  # (B, C, d)
        qkv = _linear(x, self.qkv, overrides, "qkv")
        q, k, v = qkv.view(batch, length, 3, cfg.n_head, cfg.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, C, hd)
        if past is not None:
            k = torch.cat((past[0].expand(batch, -1, -1, -1), k), dim=2)
            v = torch.cat((past[1].expand(batch, -1, -1, -1), v), dim=2)
        total = k.shape[2]
        offset = total - length  # cached positions before this chunk
        q, k_rotated = _rotary(q, offset, cfg.rope_base), _rotary(k, 0, cfg.rope_base)
        if x.is_cuda:
            # The same function in one flash-style Triton kernel (memsdk.kernels.swa_attention).
            y = swa_attention(q, k_rotated, v, window=cfg.window)
        elif length >= cfg.window:
            y = _blocked_attention(q, k_rotated, v, offset, cfg.window)
        else:
            mask = _window_mask(length, total, cfg.window, x.device).to(q.dtype)
            y = F.scaled_dot_product_attention(q, k_rotated, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(batch, length, cfg.d_model)
        keep = min(total, cfg.window)
        cache = (k[:, :, total - keep :], v[:, :, total - keep :])
        return _linear(y, self.proj, overrides, "proj"), cache


class TTTLinear(nn.Module):
    """TTT-Linear (Sun et al., "Learning to (Learn at Test Time)", ICML 2024) as the sequence
    mixer: per head, a linear inner model ``(W, b)`` trained token by token on reconstructing
    ``v`` from ``k`` and read out at ``q`` (the math is in :mod:`memsdk.kernels.ttt_linear`).

    As in the paper's implementation: the per-token inner learning rate is
    ``base / head_dim * sigmoid(x . theta_h + bias_h)``, the running gradient sum of a
    mini-batch is scaled by ``1 / (i + 1)`` plus a learned offset, the initial state ``W0, b0``
    and the inner LayerNorm are learned per head, and a LayerNorm precedes the output
    projection. No rotary embedding: the recurrence itself carries the order.

    The cache holds the state at the start of the unfinished mini-batch and that mini-batch's
    inputs so far: the next chunk runs them again first, so a stream cut anywhere computes what
    one pass over the whole stream computes.
    """

    base_lr = 1.0  # the paper's eta_base

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        heads, dim = config.n_head, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.eta = nn.Linear(config.d_model, heads)
        nn.init.zeros_(self.eta.bias)
        self.W0 = nn.Parameter(torch.randn(heads, dim, dim) * 0.02)
        self.b0 = nn.Parameter(torch.zeros(heads, dim))
        self.ln_weight = nn.Parameter(torch.ones(heads, dim))
        self.ln_bias = nn.Parameter(torch.zeros(heads, dim))
        self.position_offset = nn.Parameter(torch.zeros(config.ttt_mini_batch))
        self.post_norm = nn.LayerNorm(config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(
        self, x: Tensor, past: TTTLinearCache | None, overrides: Overrides = NO_OVERRIDES
    ) -> tuple[Tensor, TTTLinearCache]:
        cfg = self.config
        heads, dim, size = cfg.n_head, cfg.head_dim, cfg.ttt_mini_batch
        batch, length, _ = x.shape  # (B, C, d)

        def param(name: str) -> Tensor:
            return overrides.get(name, self.get_parameter(name))

        if past is None:
            state = torch.cat((param("W0"), param("b0")[:, None]), dim=1)  # (H, D + 1, D)
            state, pending = state.expand(batch, -1, -1, -1), x[:, :0]
        else:
            state, pending = (t.expand(batch, *t.shape[1:]) for t in past)
        x = torch.cat((pending, x), dim=1)  # (B, r + C, d)
        total = x.shape[1]
        q, k, v = _linear(x, self.qkv, overrides, "qkv").view(batch, total, 3, heads, dim).unbind(2)
        gate = F.linear(x, param("eta.weight"), param("eta.bias"))  # (B, r + C, H)
        eta = self.base_lr / dim * torch.sigmoid(gate)
        steps = torch.arange(1, size + 1, device=x.device, dtype=torch.float32)
        scale = (1.0 / steps + param("position_offset")).clamp_min(0.0)
        norm = (param("ln_weight"), param("ln_bias"))
        weight, bias = state[:, :, :dim], state[:, :, dim]
        done = total - total % size  # tokens of finished mini-batches
        outputs = []
        for part, final in ((slice(0, done), True), (slice(done, total), False)):
            if part.start == part.stop:
                continue
            out, carried = ttt_linear(
                q[:, part],
                k[:, part],
                v[:, part],
                eta[:, part],
                *norm,
                initial_state=(weight, bias),
                position_scale=scale,
                mini_batch_size=size,
                output_final_state=final,
            )
            outputs.append(out)
            if final:
                weight, bias = carried
        y = torch.cat(outputs, dim=1)[:, pending.shape[1] :].reshape(batch, length, cfg.d_model)
        y = _norm(y, self.post_norm, overrides, "post_norm")
        cache = (torch.cat((weight, bias[:, :, None]), dim=2), x[:, done:])
        return _linear(y, self.proj, overrides, "proj"), cache


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor, overrides: Overrides = NO_OVERRIDES) -> Tensor:
        hidden = F.gelu(_linear(x, self.up, overrides, "up"))
        return _linear(hidden, self.down, overrides, "down")


def dynamic_mlp(x: Tensor, up: Tensor, down: Tensor) -> Tensor:
    """The dynamic MLP with its weights passed in: x (B, C, d), up (d, h) or (B, d, h),
    down (h, d) or (B, h, d)."""
    if x.is_cuda and up.dim() == 2 and x.dtype == up.dtype == down.dtype:
        # Triton GEMMs with the GELU fused in (memsdk.kernels.fast_mlp); batched fast weights
        # (meta-learning) stay on the torch path.
        return fast_mlp(x, up, down)
    return F.gelu(x @ up) @ down


class Block(nn.Module):
    def __init__(self, config: ModelConfig, dynamic: bool) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        # The sequence mixer is "attn" whatever its kind, so parameter names stay as shipped.
        self.attn = (
            TTTLinear(config) if config.mixer == "ttt_linear" else SlidingWindowAttention(config)
        )
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config.d_model, config.mlp_ratio * config.d_model)
        self.dynamic = dynamic
        if dynamic:
            hidden = config.dynamic_ratio * config.d_model
            self.ln_dynamic = nn.LayerNorm(config.d_model)
            # The initial fast weights: slow parameters the outer loop meta-learns; the down
            # projection starts at zero so an untrained dynamic branch adds nothing.
            self.up0 = nn.Parameter(torch.randn(config.d_model, hidden) / math.sqrt(config.d_model))
            self.down0 = nn.Parameter(torch.zeros(hidden, config.d_model))

    def forward(
        self,
        x: Tensor,
        past: KVCache | None,
        up: Tensor | None = None,
        down: Tensor | None = None,
        overrides: Overrides = NO_OVERRIDES,
    ) -> tuple[Tensor, KVCache]:
        """``overrides`` replaces parameters by name within the block (e.g. "mlp.up.weight"),
        without touching the module: threads may share it."""
        sub = {
            part: {k[len(part) + 1 :]: v for k, v in overrides.items() if k.startswith(part + ".")}
            for part in ("attn", "mlp")
        }
        attended, cache = self.attn(_norm(x, self.ln_attn, overrides, "ln_attn"), past, sub["attn"])
        x = x + attended
        out = x + self.mlp(_norm(x, self.ln_mlp, overrides, "ln_mlp"), sub["mlp"])
        if self.dynamic:
            out = out + dynamic_mlp(_norm(x, self.ln_dynamic, overrides, "ln_dynamic"), up, down)
        return out, cache


class ByteLM(nn.Module):
    """The weight-memory model. Call :meth:`embed`, :meth:`prefix`, :meth:`suffix` in turn;
    :meth:`forward` chains them for plain training with the initial fast weights."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(VOCAB_SIZE, config.d_model)
        self.blocks = nn.ModuleList(
            Block(config, dynamic=i >= config.first_dynamic) for i in range(config.n_layer)
        )
        self.ln_out = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB_SIZE, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    @classmethod
    def from_config(cls, config: ModelConfig) -> ByteLM:
        return cls(config)

    def fast_weight_names(self) -> list[str]:
        return [
            f"blocks.{i}.{part}"
            for i in range(self.config.first_dynamic, self.config.n_layer)
            for part in ("up", "down")
        ]

    def suffix_parameters(self) -> dict[str, Tensor]:
        """Every parameter :meth:`suffix` uses besides the initial fast weights, by name: the
        candidates of the Fisher-masked fast-weight mode (live parameters, not copies)."""
        first = self.config.first_dynamic
        names = tuple(f"blocks.{i}." for i in range(first, self.config.n_layer))
        return {
            name: p
            for name, p in self.named_parameters()
            if name.startswith((*names, "ln_out.", "head."))
            and not name.endswith((".up0", ".down0"))
        }

    def initial_fast_weights(self) -> FastWeights:
        """The meta-learned starting point of every stream (live parameters, not copies)."""
        weights = {}
        for i in range(self.config.first_dynamic, self.config.n_layer):
            weights[f"blocks.{i}.up"] = self.blocks[i].up0
            weights[f"blocks.{i}.down"] = self.blocks[i].down0
        return weights

    def embed(self, inputs: Tensor) -> Tensor:
        return self.embedding(inputs)  # (B, C) -> (B, C, d)

    def prefix(self, x: Tensor, caches: list[KVCache | None]) -> tuple[Tensor, list[KVCache]]:
        """The frozen first blocks: x (B, C, d), one cache per prefix block."""
        new = []
        for block, past in zip(self.blocks[: self.config.first_dynamic], caches, strict=True):
            x, cache = block(x, past)
            new.append(cache)
        return x, new

    def suffix(
        self, x: Tensor, caches: list[KVCache | None], fast_weights: FastWeights
    ) -> tuple[Tensor, list[KVCache]]:
        """The blocks with dynamic MLPs and the head: x (B, C, d) -> logits (B, C, 256).

        ``fast_weights`` holds each dynamic block's "up" and "down", and optionally overrides
        of other suffix parameters by name (see :meth:`suffix_parameters`)."""
        new = []
        first = self.config.first_dynamic
        for i, (block, past) in enumerate(zip(self.blocks[first:], caches, strict=True)):
            name = f"blocks.{first + i}"
            up, down = fast_weights[f"{name}.up"], fast_weights[f"{name}.down"]
            inner = {
                k[len(name) + 1 :]: v
                for k, v in fast_weights.items()
                if k.startswith(name + ".") and k not in (f"{name}.up", f"{name}.down")
            }
            x, cache = block(x, past, up, down, inner)
            new.append(cache)
        x = _norm(x, self.ln_out, fast_weights, "ln_out")
        return _linear(x, self.head, fast_weights, "head"), new

    def forward(self, inputs: Tensor) -> Tensor:
        """Plain next-byte logits (B, T, 256) for inputs (B, T), initial fast weights."""
        x = self.embed(inputs)
        x, _ = self.prefix(x, [None] * self.config.first_dynamic)
        logits, _ = self.suffix(x, [None] * self.config.n_dynamic, self.initial_fast_weights())
        return logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
