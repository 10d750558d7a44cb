"""Arbitrary queries and scope names never crash search or leak across scopes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsdk import HybridMemory, InputError, Scope


@pytest.fixture(scope="module")
def small_memory(tmp_path_factory, database):
    with HybridMemory.open(tmp_path_factory.mktemp("hostile") / "memory") as mem:
        mem.ingest(
            [f'node-{i} said "NEAR" AND (OR) * ^ {{x}}: ok {i}\n' for i in range(40)],
            scope=Scope(tenant="t"),
            name="odd",
        )
        yield mem


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=st.text(max_size=200))
def test_any_query_answers_or_is_a_clear_error(small_memory, query):
    try:
        hits = small_memory.search(query, scope=Scope(tenant="t"), k=3)
    except InputError as e:
        assert not query.strip() or "bytes, at most" in str(e)
        return
    assert len(hits) <= 3
    assert all(h.scope == Scope(tenant="t") for h in hits)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tenant=st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and s.isprintable()))
def test_any_tenant_name_is_plain_data(small_memory, tenant):
    scope = Scope(tenant=tenant)
    assert small_memory.search("node-3", scope=scope) == [] or tenant == "t"
