"""The README's usage example, as a file (tests/test_packaging.py checks they stay identical)."""

from memsdk import HybridMemory, Scope

with HybridMemory.open("./agent-memory") as mem:
    scope = Scope(tenant="acme", user="u1")
    mem.add("Ticket 4812: VPN drops after sleep", scope=scope, metadata={"ticket": 4812})
    mem.ingest(["vpn-gw-2 kernel: tun0 down after resume\n"], scope=scope, name="syslog")
    hits = mem.search("VPN drops after sleep", scope=scope, k=5, filters={"ticket": {"gte": 4000}})
    print(hits[0].id, hits[0].text)
    print([event.event for event in mem.history(hits[0].id, scope=scope)])
