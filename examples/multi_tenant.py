"""Several tenants in one memory: each sees only its own notepad and its own weight memory.

Two customers file near-identical tickets; each search, listing and weight-memory score is
answered from the asking tenant's data alone.

    python examples/multi_tenant.py [--memory DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from memsdk import HybridMemory, Scope

TICKETS = {
    "acme": [
        "Ticket 4812: VPN drops after sleep on laptop vpn-gw-2, user j.doe",
        "Ticket 4813: printer queue stuck on floor 3",
    ],
    "globex": [
        "Ticket 4812: VPN drops after sleep on laptop vpn-gw-7, user a.smith",
        "Ticket 9001: badge reader offline at the north entrance",
    ],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", help="memory directory (default: a temporary one)")
    args = parser.parse_args()
    path = args.memory or tempfile.mkdtemp(prefix="memsdk-tenants-")

    with HybridMemory.open(path) as mem:
        scopes = {tenant: Scope(tenant=tenant, user="support") for tenant in TICKETS}
        for tenant, tickets in TICKETS.items():
            for ticket in tickets:
                mem.add(ticket, scope=scopes[tenant], metadata={"tenant": tenant})
        mem.flush()

        for tenant, scope in scopes.items():
            hits = mem.search("VPN drops after sleep", scope=scope, k=5)
            print(f"{tenant}: {len(hits)} hits for 'VPN drops after sleep'")
            for hit in hits:
                print(f"  [{hit.id}] {hit.text}")
            assert all(hit.metadata["tenant"] == tenant for hit in hits)
            surprise = mem.bits_per_byte("Ticket 4812: VPN drops after sleep", scope=scope)
            print(
                f"  weight memory: 'Ticket 4812: VPN drops after sleep' at {surprise:.2f} bits/byte"
            )

        nobody = Scope(tenant="initech")
        print(
            f"initech (no data): {mem.search('VPN', scope=nobody)} hits, "
            f"{len(mem.get_all(scope=nobody))} memories"
        )
        for s in mem.stats().scopes:
            absorbed = s.weights.bytes_absorbed
            print(f"{s.scope.tenant}: {s.chunks} chunks, weights absorbed {absorbed} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
