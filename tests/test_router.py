"""Routed queries: the router's features and policy, `query`, `surprise`, `calibrate_router`."""

from __future__ import annotations

import asyncio
import random
import re
import string

import pytest
import torch

from memsdk import (
    AsyncHybridMemory,
    FormatError,
    HybridMemory,
    InputError,
    MemoryConfig,
    MemsdkError,
    NotFoundError,
    RouteFeatures,
    Scope,
)
from memsdk.cli import main as cli_main
from memsdk.engine import TTTState, generate, load_model, score_bytes
from memsdk.results import SearchHit
from memsdk.router import (
    BRANCHES,
    Policy,
    default_policy,
    explain,
    fit_policy,
    line_shape,
    make_probes,
    passage_context,
    score_branches,
)

SCOPE = Scope(tenant="ops", user="hdfs")


def _features(**values: float) -> RouteFeatures:
    base = dict.fromkeys(RouteFeatures.model_fields, 0.0)
    base.update(identifiers=0, exact_hits=0)
    base.update(values)
    return RouteFeatures(**base)


@pytest.fixture(scope="module")
def hdfs_lines() -> list[str]:
    from conftest import shared_path

    text = shared_path("data", "loghub", "HDFS", "HDFS_2k.log").read_text()
    return text.splitlines(keepends=True)


@pytest.fixture(scope="module")
def routed(tmp_path_factory, hdfs_lines, database) -> HybridMemory:
    """A memory whose scope absorbed the first 300 lines of held-out HDFS."""
    memory = HybridMemory.open(tmp_path_factory.mktemp("routed"))
    memory.ingest(hdfs_lines[:300], scope=SCOPE, name="hdfs")
    memory.flush()
    yield memory
    memory.close()


# ---- the policy, without a memory ---------------------------------------------------------------


def test_the_shipped_default_policy_loads_and_round_trips():
    policy = default_policy()
    assert policy.kind == "default" and policy.probes > 0
    again = Policy.from_json(policy.to_json(), source="test")
    assert again == policy
    assert policy.choose(_features()) in BRANCHES


@pytest.mark.parametrize(
    "damage",
    [
        b"not json",
        b'{"format": "other/1"}',
        b'{"format": "memsdk.router_policy/1", "features": ["x"], "branches": []}',
    ],
)
def test_a_damaged_policy_is_refused_with_the_fix(damage):
    with pytest.raises(FormatError, match="calibrate the scope again"):
        Policy.from_json(damage, source="router/scope-1.json")


def test_fit_policy_learns_which_branch_is_cheaper():
    # The notepad is cheap exactly when a passage holds the query's identifier; else the
    # weights are: a fitted policy must pick that up from the features.
    gen = torch.Generator().manual_seed(0)
    features, bits = [], []
    for i in range(80):
        exact = i % 2
        sim = float(torch.rand(1, generator=gen))
        features.append(_features(identifiers=1, exact_hits=exact, top_similarity=sim))
        bits.append([1.0, 3.0, 2.5] if exact else [5.0, 2.0, 2.6])  # notepad, weights, both
    policy = fit_policy(features, torch.tensor(bits))
    assert policy.choose(_features(identifiers=1, exact_hits=1, top_similarity=0.5)) == "notepad"
    assert policy.choose(_features(identifiers=1, exact_hits=0, top_similarity=0.5)) == "weights"


def test_fit_policy_keeps_the_best_branch_when_features_do_not_pay():
    # Costs unrelated to the features: on held-out folds routing cannot beat the branch that
    # is best on average, so the policy is that branch whatever the features say.
    gen = torch.Generator().manual_seed(1)
    features = [_features(top_similarity=float(v)) for v in torch.rand(60, generator=gen)]
    bits = torch.rand(60, 3, generator=gen) + torch.tensor([1.0, 1.0, 0.8])
    policy = fit_policy(features, bits)
    assert all(w == 0.0 for row in policy.weights for w in row)
    assert {policy.choose(f) for f in features} == {BRANCHES[int(bits.mean(0).argmin())]}


def test_fit_policy_weighs_a_rare_costly_mistake():
    # Rare expensive mistakes: the notepad costs 0.1 unless the query has no exact hit, and
    # then 8 (one query in ten); both costs 0.5 throughout. The cheapest policy takes the
    # notepad exactly when a passage holds the id, though both is cheaper on average.
    features, bits = [], []
    for i in range(100):
        exact = int(i % 10 != 0)
        features.append(_features(identifiers=1, exact_hits=exact))
        bits.append([0.1 if exact else 8.0, 3.0, 0.5])
    policy = fit_policy(features, torch.tensor(bits))
    assert policy.choose(_features(identifiers=1, exact_hits=1)) == "notepad"
    assert policy.choose(_features(identifiers=1, exact_hits=0)) == "both"


def test_fit_policy_with_groups_keeps_routing_that_carries_across_groups_only():
    # In each stream the cheap branch depends on the similarity, but the way round flips
    # between streams: routing fitted on one stream is wrong on the other, so with a fold per
    # stream the policy is the constant branch; fitted within streams it routes.
    gen = torch.Generator().manual_seed(2)
    features, bits, groups = [], [], []
    for stream, flip in (("a", False), ("b", True)):
        for v in torch.rand(60, generator=gen).tolist():
            features.append(_features(top_similarity=v))
            cheap = (v > 0.5) != flip
            bits.append([0.5 if cheap else 3.0, 2.0, 1.0])
            groups.append(stream)
    pooled = fit_policy(features, torch.tensor(bits), groups=groups)
    assert all(w == 0.0 for row in pooled.weights for w in row)
    within = fit_policy(features[:60], torch.tensor(bits[:60]))
    assert within.choose(_features(top_similarity=0.9)) == "notepad"
    assert within.choose(_features(top_similarity=0.1)) == "both"


def _hit(text: str, rank: int) -> SearchHit:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return SearchHit(
        id=rank,
        text=text,
        raw=None,
        scope=SCOPE,
        document_id=1,
        source="s",
        seq=rank,
        start_byte=0,
        end_byte=len(text),
        metadata={},
        created_at=now,
        updated_at=now,
        score=1.0 / rank,
        similarity=0.5,
        vector_rank=rank,
        keyword_rank=None,
        exact_match=False,
    )


def test_passage_context_puts_the_line_with_the_identifier_last_within_the_budget():
    hits = [
        _hit("INFO block blk_17 received\nINFO block blk_99 served to 10.0.0.1\n", 1),
        _hit("WARN disk almost full on node 3\nINFO block blk_5 deleted\n", 2),
    ]
    context = passage_context("INFO block blk_99 served", hits, budget=80)
    lines = context.splitlines()
    assert lines[-1] == "INFO block blk_99 served to 10.0.0.1"
    assert len(context.encode()) <= 80 and context.endswith("\n")
    assert passage_context("anything", hits, budget=0) == ""


def test_probes_cut_lines_after_rare_ids_and_frequent_shapes_early():
    chunks = [
        (1, "job 4411 finished on node-7 after 12 s\njob 4412 finished on node-2 after 9 s\n"),
        (2, "job 4413 finished on node-5 after 3 s\nuser alice logged in from lab\n"),
    ]
    probes = make_probes(chunks, is_rare=lambda span: span == "4412", needles=1, patterns=2)
    needles = [p for p in probes if p.kind == "needle"]
    patterns = [p for p in probes if p.kind == "pattern"]
    assert [(p.query, p.answer, p.chunk_id) for p in needles] == [
        ("job 4412", " finished on node-2 after 9 s", 1)
    ]
    assert len(patterns) == 2
    for p in patterns:
        assert line_shape(p.query + p.answer) == "job # finished on # after # s"
        assert p.answer.startswith(" ") and len(p.query) < len(p.answer)


def test_greedy_flags_match_what_generation_reproduces():
    model, _, _ = load_model()
    state = TTTState(model)
    prompt = b"081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for "
    produced = generate(state, prompt, 12)
    _, greedy = score_bytes(state, produced, context=prompt)
    assert bool(greedy.all())
    changed = bytes([produced[0] ^ 1]) + produced[1:]
    _, greedy = score_bytes(state, changed, context=prompt)
    assert not bool(greedy[0])


# ---- query on a real memory ---------------------------------------------------------------------


def test_a_constant_policy_says_so_instead_of_citing_features():
    # Features that say nothing about which branch is cheaper: the fit keeps one branch.
    constant = fit_policy(
        [_features(exact_hits=i % 2, top_similarity=i / 40) for i in range(40)],
        torch.tensor([[2.0, 3.0, 1.0 + (i % 3) / 10] for i in range(40)]),
        kind="default",
    )
    assert constant.constant == "both"
    features = _features(identifiers=1, exact_hits=1, top_similarity=0.9)
    reason = explain("both", features, policy=constant)
    assert "default policy: always both" in reason and "similarity" not in reason
    routing = fit_policy(
        [_features(exact_hits=1), _features(exact_hits=0)] * 20,
        torch.tensor([[0.1, 2.0, 1.0], [3.0, 0.5, 1.0]] * 20),
    )
    assert routing.constant is None
    reason = explain(routing.choose(features), features, policy=routing)
    assert reason.startswith("notepad:") and "a passage holds" not in reason
    assert "best passage similarity 0.90" in reason


def test_a_needle_query_retrieves_the_exact_line_and_explains_the_route(routed, hdfs_lines):
    line = hdfs_lines[120].rstrip("\n")
    block = re.search(r"blk_-?\d+", line).group()
    query = line[: line.index(block) + len(block)]
    ans = routed.query(query, scope=SCOPE, k=5)
    assert ans.route.branch in BRANCHES and not ans.route.forced
    assert ans.route.policy in ("default", "calibrated")
    assert ans.route.reason.startswith(ans.route.branch + ":")
    assert ans.route.features.identifiers >= 1 and ans.route.features.exact_hits >= 1
    assert any(line in p.text for p in ans.passages)
    assert len(ans.passages) <= 5
    assert {"search", "features", "route", "complete", "total"} <= set(ans.timings)
    if ans.route.branch != "weights":
        assert line in ans.context.splitlines()  # the exact line sits in the window
    assert "\n" not in ans.completion


@pytest.mark.parametrize("route", BRANCHES)
def test_a_forced_route_is_followed(routed, hdfs_lines, route):
    query = hdfs_lines[1500][:40]
    ans = routed.query(query, scope=SCOPE, route=route, max_bytes=20)
    assert ans.route.branch == route and ans.route.forced
    assert len(ans.completion.encode()) <= 20
    if route == "weights":
        assert ans.passages == [] and ans.context == "" and "search" not in ans.timings
    else:
        assert ans.passages and ans.context


def test_query_errors_name_the_problem(routed):
    with pytest.raises(InputError, match="non-empty string"):
        routed.query("  ", scope=SCOPE)
    with pytest.raises(InputError, match="route must be one of auto, notepad, weights, both"):
        routed.query("blk_1", scope=SCOPE, route="fastest")
    with pytest.raises(InputError, match="at most 8192"):
        routed.query("x" * 9000, scope=SCOPE)
    with pytest.raises(InputError, match=r"max_bytes must be in 1\.\.4096"):
        routed.query("blk_1", scope=SCOPE, max_bytes=0)
    with pytest.raises(InputError, match="k must be an int"):
        routed.query("blk_1", scope=SCOPE, k=0)


def test_a_scope_without_data_gets_a_documented_empty_answer(routed):
    ans = routed.query("blk_123 was", scope=Scope(tenant="nobody"))
    assert ans.passages == [] and ans.completion == ""
    assert "holds no memories yet" in ans.route.reason


def test_the_notepad_answers_alone_without_the_weight_memory(tmp_path, hdfs_lines):
    with HybridMemory.open(tmp_path / "m", config=MemoryConfig(weight_memory=False)) as mem:
        mem.ingest(hdfs_lines[:20], scope=SCOPE, name="hdfs")
        ans = mem.query(hdfs_lines[5][:30], scope=SCOPE)
        assert ans.route.branch == "notepad" and "weight memory is off" in ans.route.reason
        assert ans.passages and ans.completion == ""
        with pytest.raises(MemsdkError, match="weight_memory=False"):
            mem.query(hdfs_lines[5][:30], scope=SCOPE, route="weights")


def test_surprise_scores_each_line_and_the_weights_learned_the_stream(routed, hdfs_lines):
    later = "".join(hdfs_lines[1000:1040])  # never ingested
    adapted = routed.surprise(later, scope=SCOPE)
    initial = routed.surprise(later, scope=SCOPE, weights="initial")
    assert len(adapted.lines) == 40 and adapted.lines[3].text == hdfs_lines[1003].rstrip("\n")
    assert adapted.weights == "adapted" and initial.weights == "initial"
    assert adapted.bits_per_byte < initial.bits_per_byte - 0.5
    with pytest.raises(InputError, match="weights must be 'adapted' or 'initial'"):
        routed.surprise(later, scope=SCOPE, weights="frozen")
    with pytest.raises(InputError, match="text is empty"):
        routed.surprise("", scope=SCOPE)


def test_novelty_ranks_new_words_above_new_numbers(routed, hdfs_lines):
    # Unseen HDFS lines, each changed two ways: a long new number appended (more bits per
    # byte, but digits are a log's variable fields), or one word replaced by a new word.
    rng = random.Random(0)
    later = [line.rstrip("\n") for line in hdfs_lines[1000:1040]]
    numbers = [f"{line} {''.join(rng.choice('0123456789') for _ in range(60))}\n" for line in later]
    words = [
        line.replace("INFO", "".join(rng.sample(string.ascii_lowercase, 6)), 1) + "\n"
        for line in later
    ]

    def mean(text: list[str], field: str) -> float:
        lines = routed.surprise("".join(text), scope=SCOPE).lines
        return sum(getattr(line, field) for line in lines) / len(lines)

    assert mean(numbers, "bits_per_byte") > mean(words, "bits_per_byte")
    assert mean(words, "novelty") > mean(numbers, "novelty") + 0.5
    # A line without letters has no words to judge: its novelty is its mean over every byte.
    (digits_only,) = routed.surprise("0812 3345 9921\n", scope=SCOPE).lines
    assert digits_only.novelty == pytest.approx(digits_only.bits_per_byte)


def test_calibration_fits_stores_and_isolates_the_scope_policy(tmp_path, hdfs_lines):
    path = tmp_path / "m"
    other = Scope(tenant="other")
    with HybridMemory.open(path) as mem:
        mem.ingest(hdfs_lines[:400], scope=SCOPE, name="hdfs")
        mem.ingest(hdfs_lines[400:440], scope=other, name="hdfs")
        with pytest.raises(NotFoundError, match="no data to calibrate"):
            mem.calibrate_router(scope=Scope(tenant="empty"))
        with pytest.raises(InputError, match=r"probes must be an int in 20\.\.10000"):
            mem.calibrate_router(scope=SCOPE, probes=5)
        cal = mem.calibrate_router(scope=SCOPE, probes=40)
        assert cal.probes >= 20 and cal.needle_probes and cal.pattern_probes
        assert sum(cal.chosen.values()) == cal.probes
        # In-sample, the fitted policy is no worse than the best single branch (it falls back
        # to that branch when routing does not pay), and a constant one routes every probe there.
        assert cal.mean_bits["router"] <= min(cal.mean_bits[b] for b in BRANCHES) + 1e-9
        policy = mem._recall.policy(mem._scope_id(SCOPE, create=False))
        if policy.constant is not None:
            assert cal.chosen[policy.constant] == cal.probes
        query = hdfs_lines[500][:40]
        assert mem.query(query, scope=SCOPE, max_bytes=1).route.policy == "calibrated"
        assert mem.query(query, scope=other, max_bytes=1).route.policy == "default"
    with HybridMemory.open(path) as mem:  # stored with the memory
        assert mem.query(query, scope=SCOPE, max_bytes=1).route.policy == "calibrated"
        mem._recall.policies.path(1).write_bytes(b"torn")
        mem._recall._policy_cache.clear()
        assert mem.query(query, scope=SCOPE, max_bytes=1).route.policy == "default"
        mem.delete_all(scope=SCOPE)
        assert not mem._recall.policies.path(1).exists()


def test_calibration_scores_probes_before_the_weights_learn_them(tmp_path, hdfs_lines, monkeypatch):
    import memsdk.recall as recall_module

    with HybridMemory.open(tmp_path / "m") as mem:
        mem.ingest(hdfs_lines[:600], scope=SCOPE, name="hdfs")
        mem.flush()
        scope_id = mem._scope_id(SCOPE, create=False)
        steps = mem.weights.state(scope_id).steps
        ids = sorted(mem.notepad.sql.chunk_ids(scope_id).tolist())
        # Replay the newest ~16 KiB only: the probes come from those chunks alone.
        monkeypatch.setattr(recall_module, "CALIBRATION_REPLAY_BYTES", 16 * 1024)
        window = mem._recall._replay_window(scope_id)
        assert list(window) == ids[-len(window) :] and len(window) < len(ids)
        assert sum(r.end_byte - r.start_byte for r in window.values()) <= 16 * 1024
        made, features, bits = mem._recall._probe_scores(SCOPE, scope_id, 60, 0, False)
        needles = [p.chunk_id for p in made if p.kind == "needle"]
        patterns = [p.chunk_id for p in made if p.kind == "pattern"]
        assert needles and patterns and set(needles + patterns) <= set(window)
        # Needles from what the replayed state absorbed, patterns from what it never saw.
        assert max(needles) < min(patterns)
        assert bits.shape == (len(made), len(BRANCHES)) and torch.isfinite(bits).all()
        assert all(f.unconsolidated_share == 0.0 for f in features)
        # A pattern never retrieves its own line: the notepad branch has to predict it.
        pattern_bits = bits[[p.kind == "pattern" for p in made]]
        assert float(pattern_bits[:, BRANCHES.index("notepad")].mean()) > 0.5
        assert mem.weights.state(scope_id).steps == steps  # the scope's own state is untouched
        # The scope's own weights absorbed every pattern's line: scored by them, a pattern's
        # answer costs less than under the replayed state, which never saw it.
        own = mem.weights.state(scope_id)
        initial = mem.weights.initial_state()
        seen = [
            score_branches(initial, own, context="", query=p.query, answer=p.answer)
            for p in made
            if p.kind == "pattern"
        ]
        own_bits = torch.tensor([s["weights"].bits_per_byte for s in seen], dtype=torch.float64)
        unseen_bits = pattern_bits[:, BRANCHES.index("weights")]
        assert float((unseen_bits - own_bits).mean()) > 0.1  # 0.22 measured


def test_async_query_returns_what_sync_returns(routed, hdfs_lines):
    query = hdfs_lines[700][:45]
    sync = routed.query(query, scope=SCOPE, max_bytes=30)

    async def run():
        return await AsyncHybridMemory(routed).query(query, scope=SCOPE, max_bytes=30)

    ans = asyncio.run(run())
    assert ans.model_dump(exclude={"timings"}) == sync.model_dump(exclude={"timings"})


def test_cli_query_prints_the_route_and_its_reason(tmp_path, capsys, hdfs_lines):
    log = tmp_path / "hdfs.log"
    log.write_text("".join(hdfs_lines[:60]))
    memory = str(tmp_path / "m")
    assert cli_main(["ingest", "--memory", memory, "--tenant", "t", "--quiet", str(log)]) == 0
    capsys.readouterr()
    code = cli_main(["query", hdfs_lines[80][:30], "--memory", memory, "--tenant", "t"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^branch\s+(notepad|weights|both) \(default policy\)", out, re.M)
    assert re.search(r"^reason\s+\w+: ", out, re.M) and "timings ms" in out
    code = cli_main(["query", "x", "--memory", memory, "--tenant", "t", "--max-bytes", "0"])
    assert code == 2 and "max_bytes must be in" in capsys.readouterr().err
