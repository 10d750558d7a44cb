"""``memsdk serve`` as a real uvicorn process on 127.0.0.1, reached over real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from memsdk.memory import HybridMemory
from memsdk.scope import Scope
from memsdk.server.local import LocalServer
from memsdk.stores.keys import KeyStore


class Server(LocalServer):
    """``memsdk serve`` with keys of two tenants (one read-only, one revoked) and an allowed
    docs directory beside the memory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        store = KeyStore(f"sqlite:///{directory / 'memory.db'}")
        try:
            self.keys = {
                "acme": store.create(("acme", "", "", ""))[0],
                "beta": store.create(("beta", "", "", ""))[0],
                "reader": store.create(("acme", "", "", ""), read_only=True)[0],
            }
            revoked, record = store.create(("acme", "", "", ""))
            store.revoke(record.key_id)
            self.keys["revoked"] = revoked
        finally:
            store.close()
        self.docs = directory.parent / "docs"
        self.docs.mkdir(exist_ok=True)
        (self.docs / "runbook.txt").write_text("restart the ingest worker with systemctl\n")
        super().__init__(
            directory,
            "--max-body-bytes",
            "65536",
            "--allow-path",
            str(self.docs),
            log=directory / "server.log",
        )

    def client(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.keys[who]}"}, timeout=60
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    directory = tmp_path_factory.mktemp("served") / "memory"
    HybridMemory.open(directory).close()
    with Server(directory) as running:
        yield running


def test_rest_round_trip(server):
    with server.client("acme") as c:
        added = c.post(
            "/v1/memories",
            json={
                "text": "invoice INV-4471 paid by ACME on Nov 3",
                "metadata": {"kind": "invoice"},
            },
        )
        assert added.status_code == 201, added.text
        memory_id = added.json()["ids"][0]
        hits = c.post("/v1/search", json={"query": "INV-4471", "k": 3}).json()
        assert hits[0]["id"] == memory_id and hits[0]["exact_match"]
        filtered = c.post(
            "/v1/search", json={"query": "INV-4471", "filters": {"kind": "other"}}
        ).json()
        assert filtered == []
        got = c.get(f"/v1/memories/{memory_id}").json()
        assert got["text"] == "invoice INV-4471 paid by ACME on Nov 3"
        assert got["scope"]["tenant"] == "acme"
        assert [i["id"] for i in c.get("/v1/memories").json()] == [memory_id]
        answer = c.post("/v1/query", json={"prompt": "invoice INV-4471"}).json()
        assert answer["branch"] in ("notepad", "weights", "both") and answer["reason"]
        lines = c.post("/v1/surprise", json={"text": "a line\nanother line\n"}).json()["lines"]
        assert len(lines) == 2
        assert c.get("/v1/stats").json()["chunks"] == 1
        assert c.delete(f"/v1/memories/{memory_id}").json() == {"deleted": memory_id}
        assert c.get(f"/v1/memories/{memory_id}").status_code == 404
    assert "paths" in httpx.get(f"{server.url}/openapi.json").json()


def test_ingest_only_under_allowed_paths(server):
    with server.client("acme") as c, server.client("reader") as reader:
        report = c.post("/v1/ingest", json={"path": str(server.docs)})
        assert report.status_code == 200 and report.json()["documents"] == 1, report.text
        for outside in ("/etc", str(server.docs / ".." / "memory"), str(server.directory)):
            refused = c.post("/v1/ingest", json={"path": outside})
            assert refused.status_code == 403 and "outside" in refused.json()["detail"]
        assert reader.post("/v1/ingest", json={"path": str(server.docs)}).status_code == 403


def test_two_tenants_never_see_each_other(server):
    with server.client("acme") as acme, server.client("beta") as beta:
        mine = acme.post("/v1/memories", json={"text": "acme secret token ZX-9981"}).json()
        memory_id = mine["ids"][0]
        missing = 10**9
        # Every route, with beta's key: another tenant's memory is exactly a missing one.
        for method, path in (
            ("GET", f"/v1/memories/{memory_id}"),
            ("DELETE", f"/v1/memories/{memory_id}"),
        ):
            theirs = beta.request(method, path)
            absent = beta.request(method, path.replace(str(memory_id), str(missing)))
            assert theirs.status_code == absent.status_code == 404
            assert theirs.json()["detail"].replace(str(memory_id), "N") == absent.json()[
                "detail"
            ].replace(str(missing), "N")
            assert "acme" not in theirs.text
        assert beta.post("/v1/search", json={"query": "ZX-9981"}).json() == []
        assert beta.get("/v1/memories").json() == []
        assert "ZX-9981" not in beta.post("/v1/query", json={"prompt": "acme secret token"}).text
        assert beta.get("/v1/stats").json()["chunks"] == 0
        assert "acme" not in beta.get("/v1/stats").text
        # A body cannot name another scope.
        sneaky = beta.post("/v1/memories", json={"text": "x", "scope": {"tenant": "acme"}})
        assert sneaky.status_code == 422
        assert acme.get(f"/v1/memories/{memory_id}").status_code == 200


def test_revoked_unknown_and_read_only_keys(server):
    with server.client("revoked") as c:
        for method, path in (("GET", "/v1/memories"), ("POST", "/v1/search")):
            r = c.request(method, path, json={"query": "x"})
            assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert httpx.get(f"{server.url}/v1/stats").status_code == 401
    bad = httpx.get(f"{server.url}/v1/stats", headers={"Authorization": "Bearer msk_nope"})
    assert bad.status_code == 401
    with server.client("reader") as reader, server.client("acme") as acme:
        r = reader.post("/v1/memories", json={"text": "should not land"})
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        memory_id = acme.post("/v1/memories", json={"text": "kept by acme"}).json()["ids"][0]
        assert reader.delete(f"/v1/memories/{memory_id}").status_code == 403
        assert reader.get(f"/v1/memories/{memory_id}").status_code == 200
        assert "should not land" not in json.dumps(acme.get("/v1/memories").json())


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {"content-type": "application/json"}, 422, "JSON"),
        (b'{"text": "\xff\xfe"}', {"content-type": "application/json"}, 400, "UTF-8"),
        (b'{"text": "ok", "extra": 1}', {"content-type": "application/json"}, 422, "extra"),
        (b"[" * 60000 + b"]" * 60000, {"content-type": "application/json"}, 413, "larger than"),
        (b"[" * 20000 + b"]" * 20000, {"content-type": "application/json"}, 4, ""),
        (b'{"text": 5}', {"content-type": "application/json"}, 422, "string"),
    ],
)
def test_bad_input_is_a_4xx_and_changes_nothing(server, body, headers, status, message):
    with server.client("acme") as c:
        before = c.get("/v1/stats").json()["chunks"]
        r = c.post("/v1/memories", content=body, headers=headers)
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        if status > 10:
            assert r.status_code == status, r.text
        assert message in r.json()["detail"] if message else r.json()["detail"]
        assert c.get("/v1/stats").json()["chunks"] == before


@pytest.mark.parametrize(
    "filters",
    [
        {"kind": {"$where": "1=1"}},
        {"a" * 5000: 1},
        {"kind": {"in": list(range(5000))}},
        {"or": [{"or": [{"kind": 1}]}] * 50},
        {"kind": {"gte": {"nested": 1}}},
    ],
)
def test_hostile_filters_are_refused_cleanly(server, filters):
    with server.client("acme") as c:
        r = c.post("/v1/search", json={"query": "invoice", "filters": filters})
        assert r.status_code < 500, r.text


def test_concurrent_clients(server):
    def work(i: int) -> int:
        with server.client("acme" if i % 2 else "beta") as c:
            ids = c.post("/v1/memories", json={"text": f"parallel note {i} code PN-{i:04d}"})
            assert ids.status_code == 201, ids.text
            hits = c.post("/v1/search", json={"query": f"PN-{i:04d}", "k": 1}).json()
            assert hits[0]["text"] == f"parallel note {i} code PN-{i:04d}"
            return hits[0]["id"]

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(work, range(32)))
    assert len(set(ids)) == 32


def test_mcp_over_http_with_the_sdk_client(server):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def session(who: str) -> tuple[list[str], object, object]:
        import httpx2

        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {server.keys[who]}"})
        async with http, Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as c:
            names = [t.name for t in (await c.list_tools()).tools]
            added = await c.call_tool("add_memory", {"text": f"mcp note from {who} MX-{who}"})
            hits = await c.call_tool("search_memory", {"query": "MX-acme"})
            return names, added, hits

    names, added, hits = asyncio.run(asyncio.wait_for(session("acme"), 120))
    assert "search_memory" in names and not added.is_error
    assert hits.structured_content["result"][0]["text"] == "mcp note from acme MX-acme"
    _, _, theirs = asyncio.run(asyncio.wait_for(session("beta"), 120))
    assert all("MX-acme" not in h["text"] for h in theirs.structured_content["result"])
    refused = httpx.post(f"{server.url}/mcp", json={}, headers={"Authorization": "Bearer x"})
    assert refused.status_code == 401


def test_graceful_shutdown_flushes(tmp_path):
    directory = tmp_path / "memory"
    HybridMemory.open(directory).close()
    with Server(directory) as running:
        with running.client("acme") as c:
            assert c.post("/v1/memories", json={"text": "kept across a restart"}).status_code == 201
        # uvicorn drains, runs the shutdown (flush, close), then re-raises the signal.
        assert running.stop() in (0, -signal.SIGTERM), running.output()
        assert "Application shutdown complete" in running.output()
        assert "msk_" not in running.output()  # keys are never logged
    with HybridMemory.open(directory) as mem:
        hits = mem.search("kept across a restart", scope=Scope(tenant="acme"))
        assert hits and hits[0].text == "kept across a restart"
        assert (
            not (directory / "notepad.faiss").exists()
            or os.path.getsize(directory / "notepad.faiss") > 0
        )


def test_schemathesis_fuzz_no_500_no_cross_tenant_data(server):
    """Property-based requests generated from the live OpenAPI document, with beta's key
    while acme holds a marked memory: no 5xx, and acme's text never comes back."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    with server.client("acme") as acme:
        marker = "ACME-ONLY-7f3a91"
        assert acme.post("/v1/memories", json={"text": f"{marker} belongs to acme"}).is_success
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    headers = {"Authorization": f"Bearer {server.keys['beta']}"}
    examples = int(os.environ.get("MEMSDK_FUZZ_EXAMPLES", "12"))
    for operation in operations:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:
            response = case.call(base_url=server.url, headers=headers, timeout=60)
            assert response.status_code < 500, (case.method, case.path, response.text)
            assert marker not in response.text

        fuzz()
    with server.client("acme") as acme:
        assert acme.post("/v1/search", json={"query": marker}).json()[0]["text"].startswith(marker)
