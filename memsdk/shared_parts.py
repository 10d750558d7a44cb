"""The parts every memory of a process shares: the weight-memory model and the embedder.

Each is loaded once per process on first use and shared by every :class:`~memsdk.HybridMemory`
(and the LangChain embeddings): their weights are read-only, fast weights live in each scope's
state, so one copy serves all. Each is loaded on a thread that ends with the load, so that the
caller's thread keeps no OpenMP pool (:mod:`memsdk.stores.background`). A forked child keeps
the loaded parts (shared copy-on-write with the parent) but gets new locks, since a lock a
parent thread held would never be released there.
"""

from __future__ import annotations

import threading

from memsdk.engine import ByteLM, load_model
from memsdk.forking import after_fork_in_child
from memsdk.stores.background import on_fresh_thread
from memsdk.stores.embedder import MiniLMEmbedder

__all__ = ["shared_embedder", "shared_model"]

_embedders: dict[str, MiniLMEmbedder] = {}  # by precision
_embedder_lock = threading.Lock()
_models: dict[str, ByteLM] = {}
_models_lock = threading.Lock()


def _reset_after_fork() -> None:
    """In a forked child: a lock a parent thread held would never be released here. The
    loaded models are kept (read-only, shared copy-on-write with the parent)."""
    global _embedder_lock, _models_lock
    _embedder_lock, _models_lock = threading.Lock(), threading.Lock()
    for embedder in _embedders.values():
        embedder.after_fork()


after_fork_in_child(_reset_after_fork)


def shared_model(name: str) -> ByteLM:
    """The weight-memory model, loaded once per process and shared (it is never trained in
    place: fast weights live in each scope's state)."""
    with _models_lock:
        if name not in _models:
            _models[name], _, _ = on_fresh_thread(load_model, name)
        return _models[name]


def shared_embedder(precision: str = "auto") -> MiniLMEmbedder:
    """One embedder per process and ``precision`` (``MiniLMEmbedder``'s), made on first use:
    its weights are read once and shared by every memory.

    Raises:
        ConfigError: ``precision`` is not one the embedder takes.
    """
    with _embedder_lock:
        if precision not in _embedders:
            _embedders[precision] = MiniLMEmbedder(precision=precision)
        return _embedders[precision]
