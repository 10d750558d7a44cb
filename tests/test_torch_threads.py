"""Torch work outside the weight memory's own thread runs on threads that end with it
(memsdk/stores/background.py): a thread that runs a torch operator keeps an OpenMP pool until
it ends, and while the process holds more pool threads than cores every pool sleeps between
operators: one scope's weight memory absorbed 1.4-1.6x slower
(benchmarks/ack_ingest.py --weights-alone).

What a caller's thread runs is seen through a torch function mode, which is thread-local: it
records the torch calls of the thread that entered it and of no other.
"""

from __future__ import annotations

import contextvars
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from memsdk import HybridMemory, Scope
from memsdk.stores.background import on_fresh_thread
from memsdk.stores.embedder import MiniLMEmbedder
from memsdk.stores.onnx_query import onnx_available


class TorchCalls(TorchFunctionMode):
    """The names of the torch functions on tensors this thread calls while the mode is
    entered (``torch.device("cpu")`` is not one)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(x, torch.Tensor) for x in (*args, *(kwargs or {}).values(), out)):
            self.names.append(getattr(func, "__name__", repr(func)))
        return out


def test_a_call_on_a_fresh_thread_returns_raises_and_leaves_no_thread() -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")
    marker.set("the caller's")
    seen: dict[str, object] = {}

    def work(a: int, *, b: int) -> int:
        seen["thread"] = threading.current_thread()
        seen["marker"] = marker.get()
        return a + b

    assert on_fresh_thread(work, 2, b=3) == 5
    thread = seen["thread"]
    assert isinstance(thread, threading.Thread)
    assert thread is not threading.current_thread() and not thread.is_alive()
    assert seen["marker"] == "the caller's"

    class Refused(Exception):
        pass

    def refuse() -> None:
        raise Refused("no room")

    with pytest.raises(Refused, match="no room"):
        on_fresh_thread(refuse)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_the_embedder_loads_and_embeds_off_the_caller_s_thread(runtime: str, shared) -> None:
    if runtime == "onnxruntime" and not onnx_available():
        pytest.skip("onnx and onnxruntime are not installed")
    log = shared("data", "loghub", "HDFS", "HDFS_2k.log").read_text()
    texts = [log[i : i + 512] for i in range(0, 4096, 512)]
    with TorchCalls() as calls:
        embedder = MiniLMEmbedder(query_runtime=runtime, precision="float32")
        batch = embedder.embed(texts)
        query = embedder.embed_query(texts[0])
    assert calls.names == []
    assert embedder.query_runtime == runtime
    assert batch.shape == (len(texts), 384)
    assert float(batch[0] @ query) >= 0.9999  # the same text, the same vector


def test_reading_the_weight_memory_runs_no_torch_on_the_caller_s_thread(
    tmp_path: Path, shared
) -> None:
    log = shared("data", "loghub", "HDFS", "HDFS_2k.log").read_bytes()[:16384]
    line = log.splitlines()[40].decode()
    scope = Scope(tenant="acme")
    with TorchCalls() as calls, HybridMemory.open(tmp_path / "memory") as mem:
        mem.ingest([log], scope=scope, name="hdfs.log")
        mem.flush()
        familiar = mem.bits_per_byte(line, scope=scope)
        surprise = mem.surprise(line + "\nzq#@!~ unlike any log line\n", scope=scope)
        completion = mem.complete(line[:30], scope=scope, max_bytes=40)
        answer = mem.query(line[:30], scope=scope)
        hits = mem.search("PacketResponder terminating", scope=scope, k=3)
        mem.reset_weights(scope=scope)
        forgotten = mem.bits_per_byte(line, scope=scope)
    assert calls.names == []
    # The calls did their work where they ran: the scope's weights learned the log.
    assert 0 < familiar < forgotten
    assert surprise.lines[1].bits_per_byte > surprise.lines[0].bits_per_byte
    assert isinstance(completion, str) and answer.route.branch in ("notepad", "weights", "both")
    assert hits and np.isfinite(hits[0].score)
