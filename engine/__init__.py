"""memsdk.engine: the weight memory (byte-level model, test-time training, recall, training).

The serving path (:mod:`~memsdk.engine.model`, :mod:`~memsdk.engine.ttt`,
:mod:`~memsdk.engine.scoring`) takes tensors and frozen dataclasses and returns tensors and
dataclasses; it never touches SQL or FAISS. Model files are sharded safetensors
(:mod:`~memsdk.engine.checkpoint`); the outer loop and the corpus builder live in
:mod:`~memsdk.engine.train` and :mod:`~memsdk.engine.corpus`; Fisher masks and 4-bit deltas in
:mod:`~memsdk.engine.fisher` and :mod:`~memsdk.engine.delta`.
"""

if __name__ != "memsdk.engine":  # the checkout's root is on sys.path (python without -P)
    raise ImportError(
        f"{__file__} is memsdk.engine and cannot be imported as {__name__!r}: start Python "
        "with `python -P` (or PYTHONSAFEPATH=1), or from outside the memsdk checkout"
    )

from memsdk.engine.checkpoint import DEFAULT_MODEL, load_checkpoint, load_model, save_checkpoint
from memsdk.engine.delta import WeightDelta, make_delta, merge_delta, read_delta, restore_state
from memsdk.engine.fisher import FisherDiagonal
from memsdk.engine.model import ByteLM, ModelConfig
from memsdk.engine.scoring import bits_per_byte, byte_losses, generate, score_bytes
from memsdk.engine.ttt import (
    StreamReport,
    TTTConfig,
    TTTState,
    stream,
    stream_many,
)

__all__ = [
    "DEFAULT_MODEL",
    "ByteLM",
    "FisherDiagonal",
    "ModelConfig",
    "StreamReport",
    "TTTConfig",
    "TTTState",
    "WeightDelta",
    "bits_per_byte",
    "byte_losses",
    "generate",
    "load_checkpoint",
    "load_model",
    "make_delta",
    "merge_delta",
    "read_delta",
    "restore_state",
    "save_checkpoint",
    "score_bytes",
    "stream",
    "stream_many",
]
