"""Conversational memory: when a memory happened, question words, fusion weights, context.

Real memories (SQLite, FAISS, the MiniLM embedder); the weight memory is off, as search never
reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from memsdk import FilterError, HybridMemory, InputError, MemoryConfig, Scope
from memsdk.search import keyword_query

SCOPE = Scope(tenant="chat", user="caroline")


def _open(path: Path, **config: float) -> HybridMemory:
    return HybridMemory.open(path, config=MemoryConfig(weight_memory=False, **config))


@pytest.fixture
def chat(tmp_path: Path) -> Iterator[HybridMemory]:
    with _open(tmp_path / "memory") as memory:
        yield memory


def test_time_is_stored_in_utc_read_back_and_filtered(chat):
    plus_two = timezone(timedelta(hours=2))
    a = chat.add("Caroline: I went to a support group", scope=SCOPE, time="2023-05-07")
    b = chat.add("Melanie: I ran a charity race", scope=SCOPE, time=datetime(2023, 5, 20, 9, 30))
    # 23:30 at UTC-2 on 31 May is 01:30 UTC on 1 June: outside May.
    c = chat.add("Caroline: I gave a talk at a school", scope=SCOPE, time="2023-05-31T23:30-02:00")
    d = chat.add(
        "Melanie: we went camping", scope=SCOPE, time=datetime(2023, 6, 20, 12, tzinfo=plus_two)
    )
    e = chat.add("Caroline: hello", scope=SCOPE)
    item = chat.get(a.ids[0], scope=SCOPE)
    assert item.metadata["time"] == "2023-05-07T00:00:00Z"
    assert item.time == datetime(2023, 5, 7, tzinfo=UTC)
    assert chat.get(c.ids[0], scope=SCOPE).time == datetime(2023, 6, 1, 1, 30, tzinfo=UTC)
    assert chat.get(d.ids[0], scope=SCOPE).metadata["time"] == "2023-06-20T10:00:00Z"
    assert chat.get(e.ids[0], scope=SCOPE).time is None

    may = {"time": {"gte": "2023-05-01", "lt": datetime(2023, 6, 1, tzinfo=UTC)}}
    assert [m.id for m in chat.get_all(scope=SCOPE, filters=may)] == [a.ids[0], b.ids[0]]
    hits = chat.search("what happened", scope=SCOPE, k=10, filters=may)
    assert {h.id for h in hits} == {a.ids[0], b.ids[0]}
    # An offset in the filter is read as the stored times are: 02:00 at UTC+2 is midnight UTC.
    after = {"time": {"gt": datetime(2023, 6, 1, 2, 0, tzinfo=plus_two)}}
    assert [m.id for m in chat.get_all(scope=SCOPE, filters=after)] == [c.ids[0], d.ids[0]]
    exact = {"time": datetime(2023, 5, 20, 9, 30, tzinfo=UTC)}
    assert [m.id for m in chat.get_all(scope=SCOPE, filters=exact)] == b.ids


def test_update_sets_the_time_and_keeps_the_other_metadata(chat):
    added = chat.add("Caroline: I moved", scope=SCOPE, metadata={"session": 3})
    item = chat.update(added.ids[0], scope=SCOPE, time="2022-08-01T10:00:00+00:00")
    assert item.metadata == {"session": 3, "time": "2022-08-01T10:00:00Z"}
    item = chat.update(added.ids[0], scope=SCOPE, time=datetime(2022, 9, 1))
    assert item.metadata == {"session": 3, "time": "2022-09-01T00:00:00Z"}
    events = chat.history(added.ids[0], scope=SCOPE)
    assert events[-1].old_metadata["time"] == "2022-08-01T10:00:00Z"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.add("x", scope=SCOPE, time="last tuesday"), InputError, "ISO-8601"),
        (lambda m: m.add("x", scope=SCOPE, time=1683500000), InputError, "got int"),
        (lambda m: m.add("x", scope=SCOPE, metadata={"time": "May"}), InputError, "ISO-8601"),
        (
            lambda m: m.add("x", scope=SCOPE, time="2023-05-08", metadata={"time": "2023-05-09"}),
            InputError,
            "pass the time once",
        ),
        (lambda m: m.add("x", scope=SCOPE, context=b"bytes"), InputError, "context must be"),
        (
            lambda m: m.get_all(scope=SCOPE, filters={"time": {"gte": "soon"}}),
            FilterError,
            "filter 'time' gte",
        ),
    ],
)
def test_bad_times_and_contexts_are_clear_errors(chat, call, error, message):
    chat.add("Caroline: first", scope=SCOPE)
    with pytest.raises(error, match=message):
        call(chat)
    assert len(chat.get_all(scope=SCOPE)) == 1


def test_the_keyword_query_drops_question_words_only():
    assert keyword_query("When did Caroline go to the LGBTQ support group?") == (
        "Caroline go LGBTQ support group?"
    )
    assert keyword_query("what is blk_-1608999687919862906 on 10.2.1.37?") == (
        "blk_-1608999687919862906 10.2.1.37?"
    )
    assert keyword_query("What is it?") == "What is it?"  # nothing else left: kept whole


def test_fusion_weights_decide_between_the_rankings(tmp_path):
    texts = [
        "Melanie: the kids loved the pottery class",
        "Caroline: pottery",
        "Melanie: we painted a sunrise by the lake",
    ]
    with _open(tmp_path / "memory", keyword_weight=0.0) as memory:
        for text in texts:
            memory.add(text, scope=SCOPE)
        hits = memory.search("pottery workshop for children", scope=SCOPE, k=3)
        # The keyword ranking counts for nothing: the fused order is the vector order, and
        # the best hit has the whole fused weight of a first rank.
        assert hits[0].keyword_rank is not None
        assert [h.vector_rank for h in hits] == [1, 2, 3]
        assert hits[0].score == pytest.approx(2 / (memory.config.rrf_k + 1))
    with pytest.raises(ValueError, match="both 0"):
        MemoryConfig(keyword_weight=0, vector_weight=0)


def test_a_query_naming_a_period_ranks_memories_of_that_period_first(chat):
    may = chat.add("Melanie: I painted a sunrise", scope=SCOPE, time="2023-05-08T13:56:00Z")
    june = chat.add("Melanie: I painted a sunset", scope=SCOPE, time="2023-06-09T10:00:00Z")
    for month, expected in (("May", may), ("June", june)):
        hits = chat.search(f"What did Melanie paint in {month} 2023?", scope=SCOPE, k=2)
        assert hits[0].id == expected.ids[0], month


def test_a_query_naming_a_time_relative_to_now_ranks_memories_of_then_first(chat):
    # Friday 4 December 2026, 18:00 UTC: the question is asked then.
    now = datetime(2026, 12, 4, 18, 0, tzinfo=UTC)
    times = {
        "yesterday": "2026-12-03T09:00:00Z",
        "last week": "2026-11-25T09:00:00Z",  # the Wednesday of the week before this one
        "last Monday": "2026-11-30T09:00:00Z",
        "last May": "2026-05-20T09:00:00Z",
        "two months ago": "2026-10-10T09:00:00Z",
        "last year": "2025-07-01T09:00:00Z",
    }
    ids = {
        phrase: chat.add(f"Melanie: I painted a picture, number {n}", scope=SCOPE, time=t).ids[0]
        for n, (phrase, t) in enumerate(times.items())
    }
    for phrase, expected in ids.items():
        hits = chat.search(f"What did Melanie paint {phrase}?", scope=SCOPE, k=3, now=now)
        assert hits[0].id == expected, phrase
        # The same question asked a year later names another period: no boost to this one.
        later = chat.search(
            f"What did Melanie paint {phrase}?", scope=SCOPE, k=6, now="2027-12-04T18:00:00Z"
        )
        assert {h.id: h.score for h in later}[expected] < hits[0].score, phrase
    with pytest.raises(InputError, match="now 'soon' is not an ISO-8601 time"):
        chat.search("What did Melanie paint yesterday?", scope=SCOPE, now="soon")


@pytest.mark.parametrize(
    ("query", "period"),
    [
        ("what happened yesterday", ("2026-12-03", "2026-12-04")),
        ("plans for this week", ("2026-11-30", "2026-12-07")),
        ("3 days ago", ("2026-12-01", "2026-12-02")),
        ("a month ago", ("2026-11-01", "2026-12-01")),
        ("13 months ago", ("2025-11-01", "2025-12-01")),
        ("last December", ("2025-12-01", "2026-01-01")),
        ("last Friday", ("2026-11-27", "2026-11-28")),
        ("in May 2023, not last week", ("2023-05-01", "2023-06-01")),  # a year named wins
        ("may I ask what happened", None),
    ],
)
def test_relative_periods_are_calendar_units_before_now(query, period):
    from memsdk.timeline import named_period

    found = named_period(query, datetime(2026, 12, 4, 18, 0, tzinfo=UTC))
    expected = None
    if period is not None:
        expected = tuple(datetime.fromisoformat(day).replace(tzinfo=UTC) for day in period)
    assert found == expected


def test_turns_of_a_session_with_a_good_candidate_rise_with_it(tmp_path):
    from memsdk.search import SESSION_SHARE

    turns = [  # (text, session): the second session's turn is added first (the lower id)
        ("Caroline: It was beautiful up there!", 2),
        ("Caroline: I went hiking in the mountains with my kids", 1),
        ("Caroline: It was beautiful up there.", 1),
    ]
    query = "Was the mountain hike beautiful?"
    scores = {}
    for grouped in (False, True):
        with _open(tmp_path / str(grouped)) as memory:
            for text, session in turns:
                meta = {"session": session} if grouped else {"session_label": session}
                memory.add(text, scope=SCOPE, metadata=meta)
            hits = memory.search(query, scope=SCOPE, k=3)
            scores[grouped] = {h.text: h.score for h in hits}
            order = [h.text for h in hits]
    plain, grouped = scores[False], scores[True]
    alone, hike, there = (text for text, _ in turns)
    # Each turn of session 1 gains SESSION_SHARE of the other's score; the lone turn nothing.
    assert grouped[there] == pytest.approx(plain[there] + SESSION_SHARE * plain[hike])
    assert grouped[hike] == pytest.approx(plain[hike] + SESSION_SHARE * plain[there])
    assert grouped[alone] == pytest.approx(plain[alone])
    assert order.index(there) < order.index(alone)


def test_context_is_embedded_with_the_turn_and_kept_out_of_its_text(tmp_path):
    with _open(tmp_path / "memory", keyword_weight=0.0) as memory:
        hiking = memory.add(
            "Caroline: Yes, last weekend!",
            scope=SCOPE,
            context="Melanie: Did you go hiking in the mountains?",
        )
        taxes = memory.add(
            "Caroline: Yes, last week!",
            scope=SCOPE,
            context="Melanie: Did you finish your tax return?",
        )
        assert memory.get(hiking.ids[0], scope=SCOPE).text == "Caroline: Yes, last weekend!"
        for query, expected in (
            ("hiking trip in the mountains", hiking),
            ("filing taxes", taxes),
        ):
            hits = memory.search(query, scope=SCOPE, k=2)
            assert hits[0].id == expected.ids[0], query


def test_keyword_search_finds_a_turn_by_its_context(chat):
    answer = chat.add(
        "Caroline: Yes, last weekend!",
        scope=SCOPE,
        context="Melanie: Did you go hiking in the mountains?\x00",
    )
    chat.add("Caroline: the weekend was long", scope=SCOPE)

    def by_keywords(query: str) -> list[tuple[int, str]]:
        hits = chat.search(query, scope=SCOPE, k=5)
        return [(h.id, h.text) for h in hits if h.keyword_rank is not None]

    assert by_keywords("mountains") == [(answer.ids[0], "Caroline: Yes, last weekend!")]
    # A new text drops the context the old one was added with.
    chat.update(answer.ids[0], scope=SCOPE, text="Caroline: No, not yet.")
    assert by_keywords("mountains") == []
    assert by_keywords("yet") == [(answer.ids[0], "Caroline: No, not yet.")]


def test_langchain_metadata_carries_and_filters_the_time(chat):
    pytest.importorskip("langchain_core", reason="the langchain extra")
    from memsdk.integrations.langchain import MemsdkVectorStore

    store = MemsdkVectorStore(chat, scope=SCOPE)
    store.add_texts(
        ["Caroline: the support group helped", "Melanie: the race was fun"],
        metadatas=[{"time": "2023-05-07T10:00:00+02:00"}, {"time": datetime(2023, 6, 2)}],
    )
    docs = store.similarity_search("what happened", k=5, filter={"time": {"lt": "2023-06-01"}})
    assert [d.page_content for d in docs] == ["Caroline: the support group helped"]
    assert docs[0].metadata["time"] == "2023-05-07T08:00:00Z"


def test_the_async_twin_takes_time_and_context(chat):
    from memsdk import AsyncHybridMemory

    async def scenario() -> None:
        twin = AsyncHybridMemory(chat)
        added = await twin.add("Caroline: yes!", scope=SCOPE, time="2023-05-07", context="Hike?")
        item = await twin.update(added.ids[0], scope=SCOPE, time="2023-05-08")
        assert item.time == datetime(2023, 5, 8, tzinfo=UTC)

    asyncio.run(scenario())
