"""The notepad on a real PostgreSQL server.

Runs when MEMSDK_TEST_POSTGRES_URL names a server the tests may create databases on, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5433/postgres``; each test gets a fresh database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from memsdk import FilterError, HybridMemory, MemoryConfig, NotFoundError, Scope

ADMIN_URL = os.environ.get("MEMSDK_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not ADMIN_URL, reason="set MEMSDK_TEST_POSTGRES_URL to run against a PostgreSQL server"
)


@pytest.fixture
def pg_config() -> Iterator[MemoryConfig]:
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'psycopg[binary]'")
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"memsdk_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield MemoryConfig(database_url=url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_lifecycle_filters_needles_and_isolation_on_postgres(tmp_path, pg_config):
    acme, globex = Scope(tenant="acme"), Scope(tenant="globex")
    lines = "".join(
        f"081109 2035{i:02d} INFO blk_{-7 * i - 1000} served to 10.0.0.{i}\n" for i in range(60)
    )
    with HybridMemory.open(tmp_path / "m", config=pg_config) as mem:
        first = mem.add("Ticket 4812: VPN drops after sleep", scope=acme, metadata={"ticket": 4812})
        mem.add("Ticket 3100: printer jams", scope=acme, metadata={"ticket": 3100, "team": "print"})
        mem.add("Ticket 4812: VPN drops after sleep", scope=globex, metadata={"ticket": 4812})
        mem.ingest([lines], scope=acme, name="hdfs")
        (memory_id,) = first.ids
        hits = mem.search("VPN drops", scope=acme, k=5, filters={"ticket": {"gte": 4000}})
        assert [h.id for h in hits] == [memory_id]
        assert {i.text for i in mem.get_all(scope=acme, filters={"team": {"contains": "rin"}})} == {
            "Ticket 3100: printer jams"
        }
        assert mem.get_all(scope=acme, filters={"ticket": {"ne": 4812}, "team": "print"})
        hit = mem.search("blk_-1147", scope=acme, k=1)[0]
        assert "blk_-1147 " in hit.text and hit.exact_match and hit.keyword_rank == 1
        with pytest.raises(FilterError):
            mem.search("x", scope=acme, filters={"ticket": {"between": [1, 2]}})
        mem.update(memory_id, scope=acme, text="Ticket 4812: VPN fixed")
        with pytest.raises(NotFoundError):
            mem.get(memory_id, scope=globex)
        assert [e.event for e in mem.history(memory_id, scope=acme)] == ["ADD", "UPDATE"]
    with HybridMemory.open(tmp_path / "m", config=pg_config) as mem:
        assert mem.get(memory_id, scope=acme).text == "Ticket 4812: VPN fixed"
        assert len(mem.get_all(scope=globex)) == 1
        assert mem.delete_all(scope=acme) > 2
        assert len(mem.notepad.index) == 1
