"""Model files: sharded safetensors checkpoints with an index, and the shipped default model.

A checkpoint is a folder: ``index.json`` (format, shard names with their SHA-256, metadata such
as the model card) and ``shard-00001.safetensors`` ... each at most ``max_shard_bytes`` (16 MB by
default, so a checkpoint travels as files of bounded size). Every file is written atomically and
the index last, so a reader sees the old checkpoint or the new one. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from memsdk.engine.model import ByteLM, ModelConfig
from memsdk.engine.ttt import TTTConfig
from memsdk.errors import ConfigError, FormatError, ModelNotFoundError
from memsdk.files import atomic_write_bytes

__all__ = [
    "DEFAULT_MODEL",
    "load_checkpoint",
    "load_model",
    "model_path",
    "save_checkpoint",
    "save_model",
    "update_card",
]

CHECKPOINT_FORMAT = "memsdk.checkpoint/1"
MAX_SHARD_BYTES = 16 * 1024 * 1024
DEFAULT_MODEL = "default"


def save_checkpoint(
    directory: str | os.PathLike[str],
    tensors: dict[str, Tensor],
    metadata: dict[str, Any],
    *,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """Write ``tensors`` as shards of at most ``max_shard_bytes`` plus ``index.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > max_shard_bytes:
            raise ConfigError(
                f"tensor {name} has {nbytes} bytes, more than one shard ({max_shard_bytes}); "
                "raise max_shard_bytes"
            )
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    entries = []
    for number, shard in enumerate(shards, start=1):
        data = save_safetensors(shard)
        file = f"shard-{number:05d}.safetensors"
        atomic_write_bytes(directory / file, data)
        entries.append({"file": file, "sha256": hashlib.sha256(data).hexdigest()})
    index = {"format": CHECKPOINT_FORMAT, "shards": entries, "metadata": metadata}
    atomic_write_bytes(directory / "index.json", json.dumps(index, indent=2).encode())


def load_checkpoint(directory: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`, checking every shard's hash.

    Raises:
        ModelNotFoundError: the folder or its index does not exist.
        FormatError: the index or a shard is unreadable, forged or truncated.
    """
    directory = Path(directory)
    index_path = directory / "index.json"
    if not index_path.is_file():
        raise ModelNotFoundError(f"no checkpoint at {directory} (index.json is missing)")
    try:
        index = json.loads(index_path.read_text())
        entries = index["shards"]
        fmt = index.get("format")
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{index_path} is not a checkpoint index: {exc}") from exc
    if fmt != CHECKPOINT_FORMAT:
        raise FormatError(f"{index_path} has format {fmt!r}, expected {CHECKPOINT_FORMAT!r}")
    tensors: dict[str, Tensor] = {}
    for entry in entries:
        path = directory / Path(str(entry["file"])).name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FormatError(f"checkpoint shard {path} is unreadable: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise FormatError(
                f"checkpoint shard {path} does not match its SHA-256 in index.json: the file is "
                "truncated or was changed; copy the checkpoint again"
            )
        try:
            tensors.update(load_safetensors(data))
        except SafetensorError as exc:
            raise FormatError(f"checkpoint shard {path} is not safetensors: {exc}") from exc
    return tensors, dict(index.get("metadata") or {})


def save_model(
    model: ByteLM,
    directory: str | os.PathLike[str],
    *,
    card: dict[str, Any],
    ttt: TTTConfig,
    extra: dict[str, Tensor] | None = None,
) -> None:
    """Save the model's weights (plus ``extra`` tensors, e.g. optimizer moments) and its card."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(extra or {})
    metadata = {
        "config": json.loads(model.config.to_json()),
        "ttt": {k: getattr(ttt, k) for k in TTTConfig.__dataclass_fields__},
        "card": card,
    }
    save_checkpoint(directory, tensors, metadata)


def update_card(directory: str | os.PathLike[str], card: dict[str, Any]) -> None:
    """Replace the model card of the checkpoint in ``directory``, leaving its shards as they
    are (their hashes are checked first, so a damaged checkpoint is not given a new card)."""
    load_checkpoint(directory)
    index_path = Path(directory) / "index.json"
    index = json.loads(index_path.read_text())
    index["metadata"]["card"] = card
    atomic_write_bytes(index_path, json.dumps(index, indent=2).encode())


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """The folder of a model shipped inside the package (``engine/weights/<name>``)."""
    return Path(str(resources.files("memsdk.engine").joinpath("weights", name)))


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
) -> tuple[ByteLM, dict[str, Any], dict[str, Tensor]]:
    """Load a shipped model by name or a checkpoint folder by path, offline, frozen, on CPU.

    Returns the model (with ``default_ttt`` and ``card`` attributes), the checkpoint metadata
    and any tensors stored beside the weights (optimizer moments of a training checkpoint).

    Raises:
        ModelNotFoundError: no such shipped model or folder.
        FormatError: the checkpoint is damaged or does not fit its config.
    """
    candidate = Path(name_or_path)
    directory = candidate if (candidate / "index.json").exists() else model_path(str(name_or_path))
    if not (directory / "index.json").exists():
        root = model_path("")
        shipped = sorted(p.name for p in root.glob("*") if (p / "index.json").exists())
        raise ModelNotFoundError(
            f"no model {str(name_or_path)!r}: give a checkpoint folder or one of the shipped "
            f"models {shipped}"
        )
    tensors, metadata = load_checkpoint(directory)
    try:
        config = ModelConfig(**metadata["config"])
        ttt = TTTConfig(**metadata["ttt"])
    except (KeyError, TypeError) as exc:
        raise FormatError(f"checkpoint {directory} has no valid config: {exc}") from exc
    model = ByteLM(config)
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise FormatError(f"checkpoint {directory} does not fit its config: {exc}") from exc
    model.eval().requires_grad_(False)
    model.default_ttt = ttt
    model.card = dict(metadata.get("card") or {})
    extra = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    return model, metadata, extra
