"""Load on ``memsdk serve``: requests per second and latency of add and search with 16
concurrent clients over loopback.

Starts ``memsdk serve`` on a fresh memory (one read-write key per client, each its own tenant),
then runs two timed phases: every client adds short notes in a loop, then every client searches
its own notes (a mix of exact ids and words). The clients are one asyncio process of httpx
clients on the same machine as the server, so on a small machine they share its cores.
Prints one JSON line and writes ``benchmarks/out/server.json``.

Usage::

    python -P benchmarks/server.py [--clients 16] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

from memsdk.memory import HybridMemory
from memsdk.server.local import LocalServer
from memsdk.stores.keys import KeyStore

OUT = Path(__file__).resolve().parent / "out"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _phase(url: str, keys: list[str], seconds: float, make) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(index: int, key: str) -> None:
        nonlocal errors
        rng = random.Random(index)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
            n = 0
            while time.perf_counter() < stop:
                method, path, body = make(index, n, rng)
                started = time.perf_counter()
                response = await http.request(method, path, json=body)
                latencies.append(time.perf_counter() - started)
                errors += response.status_code >= 400
                n += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i, k) for i, k in enumerate(keys)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 1),
        "p95_ms": round(_percentile(latencies, 0.95) * 1000, 1),
    }


def _add(index: int, n: int, rng: random.Random) -> tuple[str, str, dict]:
    depot = rng.randint(1, 40)
    text = f"client {index} note {n}: order ORD-{index:02d}-{n:05d} shipped to depot {depot}"
    return "POST", "/v1/memories", {"text": text}


def _search(index: int, n: int, rng: random.Random) -> tuple[str, str, dict]:
    query = f"ORD-{index:02d}-{rng.randint(0, 30):05d}" if n % 2 else "order shipped to depot"
    return "POST", "/v1/search", {"query": query, "k": 5}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "memory"
        HybridMemory.open(directory).close()
        store = KeyStore(f"sqlite:///{directory / 'memory.db'}")
        keys = [store.create((f"tenant-{i}", "", "", ""))[0] for i in range(args.clients)]
        store.close()
        with LocalServer(directory, stop_timeout_s=300) as server:
            print("server up; add phase ...", file=sys.stderr)
            add = asyncio.run(_phase(server.url, keys, args.seconds, _add))
            print("search phase ...", file=sys.stderr)
            search = asyncio.run(_phase(server.url, keys, args.seconds, _search))
    result = {
        "benchmark": "server",
        "clients": args.clients,
        "seconds_per_phase": args.seconds,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "add": add,
        "search": search,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "server.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
