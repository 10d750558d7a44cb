"""The router: per query, is the answer in the notepad, in the weights, or does it need both?

Three branches condition the weight-memory model differently (DESIGN.md, "How memory quality
is measured"):

- ``notepad``: the initial weights, with retrieved passage lines in the window before the query;
- ``weights``: the scope's fast weights (what test-time training absorbed), the query alone;
- ``both``: the scope's fast weights, with the retrieved lines before the query.

Every branch reads with the match model of :mod:`memsdk.engine.copy` mixed in, so a passage
line that the query repeats is continued as it was written.

A :class:`Policy` maps the query's :class:`~memsdk.results.RouteFeatures` to a branch: linear
logits over standardised features, the largest wins. Fitting minimises the probes' expected
bits per byte under a softmax over those logits, so a mistake weighs what it costs. The shipped
default policy (``router_default.json``) was fitted on probes from development streams; a
scope can fit its own on probes from its own data (:func:`make_probes`,
``HybridMemory.calibrate_router``).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from memsdk.engine import TTTState, score_bytes
from memsdk.errors import FormatError
from memsdk.results import RouteFeatures, SearchHit

__all__ = [
    "BRANCHES",
    "DEFAULT_POLICY_PATH",
    "MAX_IDENTIFIER_CHARS",
    "ROUTES",
    "BranchScore",
    "Policy",
    "Probe",
    "default_policy",
    "explain",
    "feature_vector",
    "fit_policy",
    "identifier_spans",
    "line_shape",
    "make_probes",
    "passage_context",
    "score_branches",
    "whole_word",
]

BRANCHES = ("notepad", "weights", "both")
ROUTES = ("auto", *BRANCHES)
FEATURES = tuple(RouteFeatures.model_fields)
POLICY_FORMAT = "memsdk.router_policy/1"
DEFAULT_POLICY_PATH = Path(__file__).with_name("router_default.json")
CLIP = 5.0  # standardised features are clipped to [-CLIP, CLIP]
# Fitting: the L2 penalties cross-validation chooses from, and the optimiser's settings.
PENALTIES = (0.001, 0.003, 0.01)
FIT_STEPS = 400
FIT_LR = 0.05

_WORD = re.compile(r"\w+")
# Every pattern below runs on text a caller or an LLM supplies, or on stored lines, so each is
# linear in its input: a greedy run that could split one string in many ways (``\w+`` next to
# a class that also holds ``_``) is exponential, and ``[...]*\d`` retried at every position of
# a long run without digits is quadratic. Possessive quantifiers (``*+``, ``++``) never give
# back what they took; tests/test_hangs.py times the worst inputs.
#
# Tokens holding a digit: ids, numbers, times, addresses. Masking them gives a line's shape.
# A token is a maximal run of [\w.:/-]: the lookbehind starts a match only where a run starts,
# the lazy part stops at the run's first digit, and the possessive rest takes the run's end.
_VARIABLE = re.compile(r"(?<![\w.:/\-])[\w.:/\-]*?\d[\w.:/\-]*+")


# Query pieces that look like identifiers: ids, numbers, hex, paths, host:port, UUIDs. Either
# a piece of at least 3 id characters holding a digit, or an optional [/~.] and then word runs
# joined by single separators [-:/.] (``R02-M1``, ``/var/log/syslog``), with at least one
# separator, where an ``_`` inside a word run (``blk_x``) counts as one. ``_`` is a word
# character, so that rule is a lookahead, not a second way to split the piece.
_IDENTIFIER = re.compile(
    r"(?=.*?\d)[\w.:/\\@#\-+]{3,}+\Z"
    r"|[/~.]?(?=\w*?(?:[-:/.]|\w_\w))(?:\w++[-:/.])*+\w++\Z"
)
# A longer piece is not an identifier (ids, hashes, paths and URLs are shorter); the bound also
# caps what each identifier costs later, when whole_word() looks for it in stored text.
MAX_IDENTIFIER_CHARS = 256
_TRIM = "\"'`()[]{}<>,;!?"


def whole_word(span: str) -> re.Pattern[str]:
    """Matches ``span`` standing alone: ``heaptrack:amd64`` is not in ``libheaptrack:amd64``."""
    return re.compile(r"(?<!\w)" + re.escape(span) + r"(?!\w)")


def identifier_spans(query: str) -> list[str]:
    """Identifier-like pieces of a query: ``blk_-160...``, ``R02-M1-N0-C:J12-U11``, ``4812``.

    Pieces are split at white space; one longer than ``MAX_IDENTIFIER_CHARS`` is never an
    identifier. Linear in the length of ``query``, whatever it holds.
    """
    spans = []
    for piece in query.split():
        piece = piece.strip(_TRIM).rstrip(".:")  # sentence punctuation is not part of an id
        if len(piece) <= MAX_IDENTIFIER_CHARS and _IDENTIFIER.match(piece):
            spans.append(piece)
    return spans


# ---- the policy ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """A linear policy over standardised features: branch = argmax(W x' + b), with
    x' = (x - mean) / scale clipped to [-CLIP, CLIP]; softmax(W x' + b) is the fit's
    probability of each branch."""

    kind: str  # "default" or "calibrated"
    mean: tuple[float, ...]  # (F,)
    scale: tuple[float, ...]  # (F,)
    weights: tuple[tuple[float, ...], ...]  # (3, F), rows in BRANCHES order
    bias: tuple[float, ...]  # (3,)
    probes: int  # how many probes it was fitted on

    def logits(self, features: RouteFeatures) -> list[float]:
        return self._logits(feature_vector(features))

    @property
    def constant(self) -> str | None:
        """The branch this policy always takes whatever the features (every feature weight
        zero: the fit found that routing did not pay on held-out folds), or None when it
        routes."""
        if any(w != 0.0 for row in self.weights for w in row):
            return None
        return BRANCHES[max(range(len(BRANCHES)), key=self.bias.__getitem__)]

    def choose(self, features: RouteFeatures) -> str:
        return self.choose_vector(feature_vector(features))

    def choose_vector(self, values: Sequence[float]) -> str:
        """The branch for features already in FEATURES order (see :func:`feature_vector`)."""
        logits = self._logits(values)
        return BRANCHES[max(range(len(BRANCHES)), key=logits.__getitem__)]

    def _logits(self, values: Sequence[float]) -> list[float]:
        # Clipped: a feature that barely varied in the fit (the unabsorbed share, 0 after a
        # flush) must not swing the decision when a query meets an unusual value of it.
        x = [
            max(-CLIP, min(CLIP, (v - m) / s))
            for v, m, s in zip(values, self.mean, self.scale, strict=True)
        ]
        return [
            b + sum(w * v for w, v in zip(row, x, strict=True))
            for row, b in zip(self.weights, self.bias, strict=True)
        ]

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": POLICY_FORMAT,
                "kind": self.kind,
                "features": list(FEATURES),
                "branches": list(BRANCHES),
                "mean": self.mean,
                "scale": self.scale,
                "weights": self.weights,
                "bias": self.bias,
                "probes": self.probes,
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, *, source: str) -> Policy:
        """Raises FormatError when ``data`` is not a policy for these features and branches."""
        try:
            raw = json.loads(data)
            if raw.get("format") != POLICY_FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, expected {POLICY_FORMAT!r}")
            if tuple(raw["features"]) != FEATURES or tuple(raw["branches"]) != BRANCHES:
                raise ValueError(
                    f"it routes features {raw['features']} to {raw['branches']}, this memsdk "
                    f"uses {list(FEATURES)} and {list(BRANCHES)}"
                )
            n = len(FEATURES)
            mean, scale = _floats(raw["mean"], n), _floats(raw["scale"], n)
            weights = tuple(_floats(row, n) for row in raw["weights"])
            bias = _floats(raw["bias"], len(BRANCHES))
            if len(weights) != len(BRANCHES) or min(scale) <= 0:
                raise ValueError("weights must have one row per branch and scales must be > 0")
            return cls(str(raw["kind"]), mean, scale, weights, bias, int(raw["probes"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(
                f"router policy {source} is unreadable ({e}): calibrate the scope again with "
                "calibrate_router(), or delete the file to use the default policy"
            ) from None


def _floats(values: Any, n: int) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != n or not all(abs(v) < float("inf") for v in out):
        raise ValueError(f"expected {n} finite numbers, got {values!r}"[:200])
    return out


_default: Policy | None = None


def default_policy() -> Policy:
    """The shipped policy (fitted on development streams; see benchmarks/memory_bench.py)."""
    global _default
    if _default is None:
        _default = Policy.from_json(DEFAULT_POLICY_PATH.read_bytes(), source="router_default.json")
    return _default


def feature_vector(features: RouteFeatures) -> list[float]:
    """The features as numbers in FEATURES order; counts are capped so that one query with
    many identifiers does not dominate a linear policy."""
    values = features.model_dump()
    values["identifiers"] = min(values["identifiers"], 3)
    values["exact_hits"] = min(values["exact_hits"], 3)
    return [float(values[name]) for name in FEATURES]


def fit_policy(
    features: Sequence[RouteFeatures],
    bits: torch.Tensor,
    *,
    kind: str = "calibrated",
    groups: Sequence[Any] | None = None,
    penalties: Sequence[float] = PENALTIES,
    folds: int = 5,
) -> Policy:
    """Fit a policy that sends each query to the branch that costs least, in expectation.

    A softmax over the policy's logits (linear in the standardised features) gives each
    branch a probability; the fit minimises the mean expected bits per byte of the probes
    under it, plus an L2 penalty on the feature weights. Minimising the cost itself, not a
    regression of each branch's cost, spends the fit on the queries where the choice matters
    and weighs each mistake by what it costs.

    The penalty is chosen by cross-validation (``folds`` folds of the probes, or one fold per
    group when ``groups`` is given): the penalty whose policy spends least on the held-out
    folds wins. When no penalty's policy beats always taking the branch that is best on
    average there, the policy is that constant branch, so the router is never worse than the
    best single branch on the data it was fitted to.

    Args:
        features: one per probe (N).
        bits: (N, 3) mean bits per byte of each probe's answer under each branch, in
            BRANCHES order.
        groups: one label per probe (e.g. its stream): folds keep each group whole, so the
            check asks whether routing carries over to data like none it was fitted on.
        penalties: the L2 penalties to choose from.
        folds: cross-validation folds without ``groups`` (at least 2, at most N).
    """
    x = torch.tensor([feature_vector(f) for f in features], dtype=torch.float64)  # (N, F)
    costs = bits.to(torch.float64)  # (N, 3)
    n = len(x)
    if groups is None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        count = max(2, min(folds, n))
        held_out = [order[fold::count] for fold in range(count)]
    else:
        labels = list(groups)
        held_out = [
            torch.tensor([i for i, g in enumerate(labels) if g == group])
            for group in dict.fromkeys(labels)
        ]
    routed = dict.fromkeys(penalties, 0.0)
    constant = 0.0
    for held in held_out:
        kept = torch.ones(n, dtype=torch.bool)
        kept[held] = False
        if not kept.any():
            continue  # one group only: nothing to fit on
        constant += float(costs[held, int(costs[kept].mean(0).argmin())].sum())
        for penalty in penalties:
            policy = _softmax_policy(x[kept], costs[kept], kind, penalty)
            chosen = [BRANCHES.index(policy.choose_vector(v)) for v in x[held].tolist()]
            routed[penalty] += float(costs[held, chosen].sum())
    best = min(penalties, key=routed.__getitem__)
    if routed[best] < constant:
        return _softmax_policy(x, costs, kind, best)
    mean, scale = _standardisation(x)
    zero = tuple(0.0 for _ in FEATURES)  # the logits are the negated mean costs
    return Policy(kind, mean, scale, (zero,) * len(BRANCHES), tuple((-costs.mean(0)).tolist()), n)


def _standardisation(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(x.mean(0).tolist()), tuple(x.std(0, unbiased=False).clamp_min(1e-3).tolist())


def _softmax_policy(x: torch.Tensor, costs: torch.Tensor, kind: str, penalty: float) -> Policy:
    """The linear softmax policy with the least mean expected cost (full-batch Adam from a
    fixed start, so the same probes always give the same policy)."""
    mean, scale = _standardisation(x)
    z = ((x - torch.tensor(mean)) / torch.tensor(scale)).clamp(-CLIP, CLIP)
    weights = torch.zeros(x.shape[1], len(BRANCHES), dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(len(BRANCHES), dtype=x.dtype, requires_grad=True)
    optimiser = torch.optim.Adam([weights, bias], lr=FIT_LR)
    with torch.enable_grad():
        for _ in range(FIT_STEPS):
            expected = ((z @ weights + bias).softmax(1) * costs).sum(1).mean()
            loss = expected + penalty * weights.square().sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return Policy(
        kind,
        mean,
        scale,
        tuple(tuple(row) for row in weights.detach().T.tolist()),
        tuple(bias.detach().tolist()),
        len(x),
    )


def explain(
    branch: str,
    features: RouteFeatures,
    *,
    exact_span: str | None = None,
    policy: Policy | None = None,
) -> str:
    """One line a person understands: the branch and the evidence behind it. When ``policy``
    is constant the features did not decide, and the line says so instead of listing them."""
    f = features
    head = {
        "notepad": "notepad: exact passages, read by the initial weights",
        "weights": "weights: the scope's fast weights alone",
        "both": "both: passages in the window, read by the scope's fast weights",
    }[branch]
    if policy is not None and policy.constant == branch:
        return (
            f"{head}: {policy.kind} policy: always {branch}; routing on the query's features "
            f"did not pay on held-out folds of its {policy.probes} probes"
        )
    evidence = []
    if exact_span is not None:
        evidence.append(f"a passage holds {exact_span!r} verbatim")
    elif f.identifiers:
        evidence.append(f"no passage holds the query's {f.identifiers} identifier(s) verbatim")
    evidence.append(f"best passage similarity {f.top_similarity:.2f}")
    familiar = "know" if f.query_bits_gain > 0.05 else "barely know"
    evidence.append(
        f"the weights {familiar} this kind of text ({f.query_bits:.2f} bits/byte, "
        f"{f.query_bits_gain:+.2f} against the initial weights)"
    )
    if f.unconsolidated_share >= 0.05:
        evidence.append(f"{f.unconsolidated_share:.0%} of the scope is not absorbed yet")
    return f"{head}: " + "; ".join(evidence)


# ---- conditioning and scoring -------------------------------------------------------------------


def passage_context(query: str, hits: Sequence[SearchHit], *, budget: int) -> str:
    """The passage lines most relevant to ``query``, at most ``budget`` bytes, the most
    relevant last (nearest the query in the window), each ending with a newline.

    A line scores by the query's identifiers it holds whole (they dominate), then by the share
    of the query's words it holds, then by its passage's rank.
    """
    spans = [whole_word(span) for span in identifier_spans(query)]
    words = {w.lower() for w in _WORD.findall(query)}
    scored = []
    seen = set()
    for rank, hit in enumerate(hits):
        for line in hit.text.splitlines():
            line = line.rstrip()
            if not line.strip() or line in seen:
                continue
            seen.add(line)
            exact = sum(p.search(line) is not None for p in spans)
            overlap = len(words & {w.lower() for w in _WORD.findall(line)}) / max(len(words), 1)
            scored.append((exact, overlap, -rank, line))
    scored.sort(reverse=True)
    chosen, used = [], 0
    for *_, line in scored:
        size = len(line.encode("utf-8", "surrogateescape")) + 1
        if used + size > budget:
            continue
        chosen.append(line)
        used += size
    return "".join(line + "\n" for line in reversed(chosen))


@dataclass(frozen=True)
class BranchScore:
    """How well a branch predicts a known answer."""

    bits_per_byte: float
    exact: bool  # greedy decoding after the prompt reproduces the answer


def score_branches(
    initial: TTTState,
    adapted: TTTState,
    *,
    context: str,
    query: str,
    answer: str,
    branches: Sequence[str] = ("frozen", *BRANCHES),
    slots: Sequence[int] | None = None,
) -> dict[str, BranchScore]:
    """Score ``answer`` as the continuation of ``query`` under each branch's conditioning
    (``frozen``: the initial weights, the query alone, the baseline with no memory), reading as
    ``HybridMemory.query`` reads: with the match model that copies from the window, and the
    ``adapted`` weights' ``slots`` only (those of the hits' sources,
    :func:`memsdk.retention.read_slots`; default: every slot)."""
    conditioning = {
        "frozen": (initial, ""),
        "notepad": (initial, context),
        "weights": (adapted, ""),
        "both": (adapted, context),
    }
    out = {}
    for branch in branches:
        state, prefix = conditioning[branch]
        read = slots if state is adapted else None
        bits, greedy = score_bytes(state, answer, context=prefix + query, copy=True, slots=read)
        out[branch] = BranchScore(float(bits.mean()), bool(greedy.all()))
    return out


# ---- probes for calibration ---------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A query made from a scope's own data, with its known answer."""

    kind: Literal["needle", "pattern"]
    query: str
    answer: str
    chunk_id: int  # where it came from; pattern probes do not retrieve it


def line_shape(line: str) -> str:
    """A line with every token that holds a digit masked: lines of one log template share it.
    Linear in the length of ``line``."""
    return _VARIABLE.sub("#", line)


def make_probes(
    chunks: Sequence[tuple[int, str]],
    *,
    is_rare: Callable[[str], bool],
    needles: int,
    patterns: int,
    seed: int = 0,
    min_answer: int = 6,
    max_answer: int = 120,
) -> list[Probe]:
    """Probes from a scope's chunks ``(id, text)``.

    Needles: a line holding an identifier that ``is_rare`` (found in one chunk of the scope);
    the query runs through the identifier, the answer is the rest of the line. Patterns: a line
    whose shape is frequent (at least 3 lines of the sample share it); the query is its first
    ~40% cut at a space, the answer the rest. Both answers hold ``min_answer`` to
    ``max_answer`` characters.
    """
    rng = random.Random(seed)
    lines = [
        (cid, line.rstrip())
        for cid, text in chunks
        for line in text.splitlines()
        if len(line.strip()) >= 2 * min_answer
    ]
    rng.shuffle(lines)
    shapes = Counter(line_shape(line) for _, line in lines)
    found: list[Probe] = []
    n_needles = n_patterns = 0
    for cid, line in lines:
        if n_needles < needles:
            probe = _needle(cid, line, is_rare, min_answer, max_answer)
            if probe is not None:
                found.append(probe)
                n_needles += 1
                continue
        if n_patterns < patterns and shapes[line_shape(line)] >= 3:
            probe = _pattern(cid, line, min_answer, max_answer)
            if probe is not None:
                found.append(probe)
                n_patterns += 1
        if n_needles >= needles and n_patterns >= patterns:
            break
    return found


def _needle(
    cid: int, line: str, is_rare: Callable[[str], bool], min_answer: int, max_answer: int
) -> Probe | None:
    for span in identifier_spans(line):
        end = line.find(span) + len(span)
        answer = line[end:][:max_answer]
        if len(answer.strip()) >= min_answer and is_rare(span):
            return Probe("needle", line[:end], answer, cid)
    return None


def _pattern(cid: int, line: str, min_answer: int, max_answer: int) -> Probe | None:
    cut = line.rfind(" ", 0, max(int(len(line) * 0.4), 1))
    if cut <= 0:
        return None
    answer = line[cut:][:max_answer]
    if len(answer.strip()) < min_answer:
        return None
    return Probe("pattern", line[:cut], answer, cid)
