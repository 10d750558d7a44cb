"""A fork server for the crash tests: it loads memsdk and its models once, then forks one child
per run; the child writes to a memory until the test kills it with SIGKILL.

Forking a loaded process makes a child ready in milliseconds, so the test can kill many of
them at random points (while SQL commits, while the index file or a weight delta is written).
The server never runs a torch op on more than one thread before forking (intra-op thread pools
do not survive a fork).

Protocol, one line each way:

    -> run <memory dir> <ack file> <seed>      <- pid <pid>
    -> reap <pid>                              <- exit <pid> <status>

The child appends a line to the ack file after each call returns (what the caller was told):
``add <name> <id>``, ``ingest <name> <chunks>``, ``deleting <id>`` (before the call),
``deleted <id>``, ``flushed``.
"""

from __future__ import annotations

import os
import random
import signal
import sys

import torch

torch.set_num_threads(1)

from memsdk import HybridMemory, MemoryConfig, Scope  # noqa: E402
from memsdk.shared_parts import shared_embedder, shared_model  # noqa: E402

SCOPE = Scope(tenant="crash", user="u1")
# Save the index and the weight deltas at every chance, so kills land inside those writes.
CONFIG = MemoryConfig(
    index_save_interval_s=0.0,
    weights_save_interval_s=0.0,
    embed_batch_chunks=4,
    vector_batch_chunks=4,
    weights_batch_chunks=2,
)
MAX_SECONDS = 60


def work(memory: str, ack_path: str, seed: int) -> None:
    rng = random.Random(seed)
    ack = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def tell(line: str) -> None:
        os.write(ack, (line + "\n").encode())

    added: list[int] = []
    with HybridMemory.open(memory, config=CONFIG) as mem:
        for i in range(10_000):
            name = f"s{seed}-d{i}"
            roll = rng.random()
            if roll < 0.55:
                text = f"{name} ticket {rng.randrange(10**9)}: VPN drops after sleep on host-{i}"
                (memory_id,) = mem.add(text, scope=SCOPE, metadata={"doc": name}).ids
                added.append(memory_id)
                tell(f"add {name} {memory_id}")
            elif roll < 0.85:
                lines = [
                    f"{name} line {j} kernel: tun{j} state {rng.randrange(10**6)}\n"
                    for j in range(rng.randint(5, 60))
                ]
                report = mem.ingest(lines, scope=SCOPE, name=name, metadata={"doc": name})
                tell(f"ingest {name} {report.chunks}")
            elif roll < 0.95 and added:
                memory_id = added.pop(rng.randrange(len(added)))
                tell(f"deleting {memory_id}")
                mem.delete(memory_id, scope=SCOPE)
                tell(f"deleted {memory_id}")
            else:
                mem.flush()
                tell("flushed")


def serve() -> None:
    shared_embedder()
    shared_model(CONFIG.weights_model)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "run":
            memory, ack_path, seed = args
            pid = os.fork()
            if pid == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1):
                    os.dup2(devnull, fd)
                os.dup2(os.open(ack_path + ".log", os.O_WRONLY | os.O_CREAT, 0o644), 2)
                signal.alarm(MAX_SECONDS)  # a child the test forgot ends on its own
                try:
                    work(memory, ack_path, int(seed))
                finally:
                    os._exit(0)
            print(f"pid {pid}", flush=True)
        elif command == "reap":
            pid = int(args[0])
            _, status = os.waitpid(pid, 0)
            print(f"exit {pid} {status}", flush=True)


if __name__ == "__main__":
    serve()
