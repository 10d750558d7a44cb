"""Metadata: validation on write, and filters compiled to SQL on read.

Filters use mem0's operator set::

    {"ticket": 4812}                                   # equality
    {"ticket": {"gte": 4000, "lt": 5000}}              # several operators: all must hold
    {"OR": [{"team": "vpn"}, {"team": {"in": ["net", "infra"]}}]}
    {"NOT": {"status": "closed"}}

On the key ``"time"`` (:mod:`memsdk.timeline`) values may be datetimes or ISO-8601 strings:
``{"time": {"gte": "2023-05-01", "lt": datetime(2023, 6, 1)}}`` keeps May 2023.

Operators: ``eq ne gt gte lt lte in nin contains icontains``; logic: ``AND OR NOT`` (also
lowercase, so those words are not usable as metadata keys in filters). A comparison holds only
for values of the same JSON type (``4812`` never equals ``"4812"``); ``ne`` and ``nin`` also hold
when the key is absent. ``contains`` is a substring test on string values. The compiled filter
runs inside the same SQL query as the scope condition, before any ranking.
"""

from __future__ import annotations

import json
import math
import operator
import reprlib
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    Float,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    column,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    table,
    true,
)
from sqlalchemy.sql.elements import ColumnElement

from memsdk.encoding import check_text
from memsdk.errors import FilterError, InputError
from memsdk.stores.sql_schema import CHUNK_META, ChunkRow
from memsdk.timeline import TIME_KEY, to_time_text

__all__ = ["compile_filters", "string_terms", "validate_metadata"]

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains", "icontains")
_LOGIC = {"AND": "AND", "and": "AND", "OR": "OR", "or": "OR", "NOT": "NOT", "not": "NOT"}
MAX_METADATA_BYTES = 64 * 1024
MAX_KEY_CHARS = 256
_MAX_DEPTH = 16
# A filter compiles to one SQL expression, and SQLite refuses expressions nested deeper than
# 1,000 (an OR of n conditions nests n deep); a deeper Python structure would also exhaust the
# recursion limit. These bounds keep every filter far inside both.
MAX_FILTER_DEPTH = 16
MAX_FILTER_TERMS = 512
# An in / nin list is one condition whatever its length: its values travel as one bound
# parameter (a JSON array read by SQLite's json_each, a PostgreSQL array), so neither the
# expression depth nor the bound-parameter limit grows with it. This bound, over all the lists
# of one filter, only keeps a filter's memory and parse time small.
MAX_IN_VALUES = 100_000
# Integers the databases store and compare as numbers: SQLite's and PostgreSQL's bigint.
MIN_INT, MAX_INT = -(2**63), 2**63 - 1


def _check_key(key: Any, *, what: str) -> str:
    if not isinstance(key, str) or not key:
        raise InputError(f"{what} keys must be non-empty strings, got {reprlib.repr(key)}")
    if len(key) > MAX_KEY_CHARS:
        raise InputError(f"{what} key {key[:40]!r}... is longer than {MAX_KEY_CHARS} characters")
    if any(ch in key for ch in '"\\') or any(ord(ch) < 32 for ch in key):
        raise InputError(
            f"{what} key {key!r} holds a double quote, backslash or control character: rename it"
        )
    return check_text(key, f"{what} key {key[:40]!r}")


def validate_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check that ``metadata`` is a JSON object memsdk can store and filter; returns a copy.

    The key ``"time"`` holds when the memory happened (:mod:`memsdk.timeline`): a datetime or
    an ISO-8601 string, stored as UTC text such as ``2023-05-08T13:56:00Z``.

    Raises:
        InputError: not a mapping, a bad key, a value that is not JSON (sets, bytes, NaN, ...),
            a ``"time"`` that is not a time, or more than 64 KiB once serialised.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InputError(f"metadata must be a dict, got {type(metadata).__name__}")

    def check(value: Any, path: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise InputError(f"metadata is nested deeper than {_MAX_DEPTH} levels at {path}")
        if isinstance(value, str) and "\x00" in value:
            raise InputError(
                f"metadata value at {path} holds a NUL character, which PostgreSQL cannot "
                "store: remove it (or store the bytes as text with add/ingest)"
            )
        if isinstance(value, str):
            check_text(value, f"metadata value at {path}")
        if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
            raise InputError(
                f"metadata value at {path} is {value}, outside the 64-bit integers the "
                "databases compare: store it as a string"
            )
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InputError(f"metadata value at {path} is {value}: only finite numbers")
            return value
        if isinstance(value, list | tuple):
            return [check(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            return {
                _check_key(k, what="metadata"): check(v, f"{path}.{k}", depth + 1)
                for k, v in value.items()
            }
        raise InputError(
            f"metadata value at {path} is a {type(value).__name__}: use str, int, float, bool, "
            "None, lists or dicts of those"
        )

    clean = {
        _check_key(k, what="metadata"): (
            to_time_text(v, 'metadata "time"') if k == TIME_KEY else check(v, k, 1)
        )
        for k, v in metadata.items()
    }
    size = len(json.dumps(clean, ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise InputError(
            f"metadata is {size} bytes as JSON, at most {MAX_METADATA_BYTES}: store large "
            "content as text, not metadata"
        )
    return clean


class _Field:
    """Typed access to one top-level metadata key, for SQLite and PostgreSQL."""

    def __init__(self, key: str, dialect: str, *, correlated: bool = False) -> None:
        self.key, self.dialect, self.correlated = key, dialect, correlated
        if dialect == "postgresql":
            self.type = func.json_typeof(ChunkRow.meta[key])
        else:
            self.path = '$."' + key + '"'
            self.type = func.json_type(ChunkRow.meta, self.path)

    def kinds(self, kind: str) -> tuple[str, ...]:
        if self.dialect == "postgresql":
            return {"number": ("number",), "string": ("string",), "boolean": ("boolean",)}[kind]
        return {"number": ("integer", "real"), "string": ("text",), "boolean": ("true", "false")}[
            kind
        ]

    def value(self, kind: str) -> ColumnElement[Any]:
        if self.dialect == "postgresql":
            text_value = ChunkRow.meta[self.key].as_string()
            return {
                "number": cast(text_value, Float),
                "string": cast(text_value, Text),
                "boolean": cast(text_value, Boolean),
            }[kind]
        return func.json_extract(ChunkRow.meta, self.path)

    def member(self, kind: str, values: list[Any]) -> ColumnElement[bool]:
        """The value is of JSON type ``kind`` and one of ``values`` (all of that type), as one
        bound parameter."""
        if self.dialect == "postgresql":
            element = {"number": Float, "string": Text, "boolean": Boolean}[kind]
            if kind == "number":
                values = [float(v) for v in values]  # psycopg binds no array of mixed types
            return self.test(
                kind, self.value(kind) == any_(bindparam(None, values, type_=ARRAY(element)))
            )
        if kind == "boolean":
            values = [int(v) for v in values]  # json_each gives 1 / 0 for true / false
        listed = func.json_each(bindparam(None, json.dumps(values), type_=Text)).table_valued(
            "value"
        )
        return self.holds(kind, lambda value: value.in_(select(listed.c.value)))

    def holds(
        self, kind: str, predicate: Callable[[ColumnElement[Any]], ColumnElement[bool]]
    ) -> ColumnElement[bool]:
        """The value is of JSON type ``kind`` and passes ``predicate``. On SQLite this reads
        the metadata index (``chunk_meta``, see stores/sql_schema.py) by key and value instead
        of parsing every chunk's metadata."""
        if self.dialect == "postgresql":
            return self.test(kind, predicate(self.value(kind)))
        indexed = table(
            CHUNK_META, column("key"), column("value"), column("type"), column("chunk_id")
        )
        matching = select(indexed.c.chunk_id).where(
            indexed.c.key == self.key,
            indexed.c.type.in_(self.kinds(kind)),
            predicate(indexed.c.value),
        )
        if self.correlated:
            # One index probe per row the rest of the query selects, for checking a few
            # candidates; the IN form lists every match first (610k ids for a broad filter at
            # 1M chunks), which is what a query driven by the filter itself needs.
            return exists(matching.where(indexed.c.chunk_id == ChunkRow.id))
        return ChunkRow.id.in_(matching)

    def is_null(self) -> ColumnElement[bool]:
        """The key holds JSON null: false, never SQL NULL, when the key is absent, so that
        ``ne`` / ``nin`` with None hold for a missing key as they do with other values."""
        return case((self.type.in_(("null",)), true()), else_=false())

    def test(self, kind: str, predicate: ColumnElement[bool]) -> ColumnElement[bool]:
        # CASE keeps PostgreSQL from casting values of another type (which would raise).
        return case((self.type.in_(self.kinds(kind)), predicate), else_=false())


def _kind(value: Any, key: str, op: str) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise FilterError(f"filter {key!r} {op}: {value} is not a finite number")
        if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
            raise FilterError(
                f"filter {key!r} {op}: {value} is outside the 64-bit integers stored metadata "
                "holds (metadata refuses larger ones): compare a string instead"
            )
        return "number"
    if isinstance(value, str):
        if "\x00" in value:
            raise FilterError(
                f"filter {key!r} {op}: the value holds a NUL character, which no stored "
                "metadata holds (metadata refuses it): remove it"
            )
        try:
            check_text(value, f"filter {key!r} {op}: the value")
        except InputError as e:
            raise FilterError(str(e)) from None
        return "string"
    raise FilterError(
        f"filter {key!r} {op}: expected a string, number or bool, got {type(value).__name__} "
        f"{reprlib.repr(value)}"
    )


def _compare(field: _Field, op: str, value: Any) -> ColumnElement[bool]:
    key = field.key
    if op in ("in", "nin"):
        if not isinstance(value, list | tuple) or not value:
            raise FilterError(
                f"filter {key!r} {op}: expected a non-empty list, got {reprlib.repr(value)}"
            )
        hit = _membership(field, op, value)
        return hit if op == "in" else not_(hit)
    if op == "ne":
        return not_(_compare(field, "eq", value))
    if op in ("contains", "icontains"):
        if not isinstance(value, str):
            raise FilterError(f"filter {key!r} {op}: expected a string, got {reprlib.repr(value)}")
        _kind(value, key, op)  # refuses NUL characters
        haystack, needle = field.value("string"), value
        if op == "icontains":
            haystack, needle = func.lower(haystack), value.lower()
        position = func.strpos if field.dialect == "postgresql" else func.instr
        return field.test("string", position(haystack, needle) > 0)
    if value is None:
        if op != "eq":
            raise FilterError(f"filter {key!r} {op}: None can only be tested with eq / ne")
        return field.is_null()
    kind = _kind(value, key, op)
    if kind == "boolean" and op != "eq":
        raise FilterError(f"filter {key!r} {op}: booleans can only be tested with eq / ne")
    if kind == "boolean" and field.dialect != "postgresql":
        value = int(value)  # SQLite's json_extract and json_each give 1 / 0 for true / false
    compare = {
        "eq": operator.eq,
        "gt": operator.gt,
        "gte": operator.ge,
        "lt": operator.lt,
        "lte": operator.le,
    }[op]
    return field.holds(kind, lambda stored: compare(stored, value))


def _membership(field: _Field, op: str, values: list[Any] | tuple[Any, ...]) -> ColumnElement[bool]:
    """One test per JSON type among ``values`` (a value matches only values of its own type)."""
    by_kind: dict[str, list[Any]] = {}
    has_null = False
    for v in values:
        if v is None:
            has_null = True
            continue
        by_kind.setdefault(_kind(v, field.key, op), []).append(v)
    tests = [field.member(kind, listed) for kind, listed in by_kind.items()]
    if has_null:
        tests.append(field.is_null())
    return or_(*tests)


class _Budget:
    """The conditions a filter has spent while it compiles (at most MAX_FILTER_TERMS)."""

    def __init__(self) -> None:
        self.terms = 0
        self.values = 0

    def spend_values(self, count: int, where: str) -> None:
        self.values += count
        if self.values > MAX_IN_VALUES:
            raise FilterError(
                f"filters list more than {MAX_IN_VALUES} values in their in / nin lists (at "
                f"{where}): split the call into several, or filter on a coarser metadata key"
            )

    def spend(self, count: int, where: str) -> None:
        self.terms += count
        if self.terms > MAX_FILTER_TERMS:
            raise FilterError(
                f"filters hold more than {MAX_FILTER_TERMS} conditions (at {where}; each "
                "comparison, each in/nin list and each AND/OR/NOT branch counts): "
                "split the call into several, or filter on a coarser metadata key"
            )


def _node(
    node: Any, dialect: str, where: str, depth: int, budget: _Budget, correlated: bool
) -> ColumnElement[bool]:
    if depth > MAX_FILTER_DEPTH:
        raise FilterError(
            f"filters nest deeper than {MAX_FILTER_DEPTH} levels (at {where[:200]}...): "
            "flatten them (NOT of NOT is the filter itself; an AND or OR takes a list)"
        )
    if not isinstance(node, Mapping):
        raise FilterError(
            f"filter {where} must be a dict, got {type(node).__name__} {reprlib.repr(node)}"
        )
    clauses = []
    for key, cond in node.items():
        logic = _LOGIC.get(key) if isinstance(key, str) else None
        if logic == "NOT":
            parts = cond if isinstance(cond, list | tuple) else [cond]
            budget.spend(len(parts), f"{where}.NOT")
            compiled = [
                _node(p, dialect, f"{where}.NOT", depth + 1, budget, correlated) for p in parts
            ]
            clauses.append(not_(and_(true(), *compiled)))
        elif logic is not None:
            if not isinstance(cond, list | tuple) or not cond:
                raise FilterError(
                    f"filter {where}.{key} expects a non-empty list of filters, got "
                    f"{reprlib.repr(cond)}"
                )
            budget.spend(len(cond), f"{where}.{key}")
            parts = [
                _node(p, dialect, f"{where}.{key}[{i}]", depth + 1, budget, correlated)
                for i, p in enumerate(cond)
            ]
            clauses.append(and_(*parts) if logic == "AND" else or_(*parts))
        else:
            clauses.append(_field_condition(key, cond, dialect, where, budget, correlated))
    return and_(true(), *clauses)


def _time_condition(cond: Any) -> Any:
    """A filter on ``"time"`` with its datetimes and ISO strings in the stored form."""

    def one(value: Any, op: str) -> str:
        try:
            return to_time_text(value, f"filter 'time' {op}: the value")
        except InputError as e:
            raise FilterError(str(e)) from None

    if not isinstance(cond, Mapping):
        return one(cond, "eq") if cond is not None else cond
    out: dict[Any, Any] = {}
    for op, value in cond.items():
        if op in ("in", "nin") and isinstance(value, list | tuple):
            out[op] = [one(v, op) for v in value]
        elif op in ("eq", "ne", "gt", "gte", "lt", "lte") and value is not None:
            out[op] = one(value, op)
        else:
            out[op] = value  # contains, None, unknown operators: checked as for any key
    return out


def _field_condition(
    key: Any, cond: Any, dialect: str, where: str, budget: _Budget, correlated: bool
) -> ColumnElement[bool]:
    try:
        key = _check_key(key, what="filter")
    except InputError as e:
        raise FilterError(str(e)) from None
    if key == TIME_KEY:
        cond = _time_condition(cond)
    field = _Field(key, dialect, correlated=correlated)
    if not isinstance(cond, Mapping):
        if isinstance(cond, list | tuple | set | dict):
            raise FilterError(
                f"filter {key!r}: a bare {type(cond).__name__} is ambiguous; use "
                f"{{{key!r}: {{'in': [...]}}}} for membership"
            )
        budget.spend(1, f"{where}.{key}")
        return _compare(field, "eq", cond)
    if not cond:
        raise FilterError(
            f"filter {key!r} has an empty operator dict: name at least one of "
            + ", ".join(OPERATORS)
        )
    parts = []
    for op, value in cond.items():
        if op not in OPERATORS:
            raise FilterError(
                f"unknown filter operator {op!r} on key {key!r}: expected one of "
                + ", ".join(OPERATORS)
            )
        budget.spend(1, f"{where}.{key}.{op}")
        if op in ("in", "nin") and isinstance(value, list | tuple):
            budget.spend_values(len(value), f"{where}.{key}.{op}")
        parts.append(_compare(field, op, value))
    return and_(*parts)


def compile_filters(
    filters: Mapping[str, Any] | None, *, dialect: str = "sqlite", correlated: bool = False
) -> ColumnElement[bool] | None:
    """Compile a mem0-style filter dict into a SQL condition over chunk metadata.

    On SQLite the indexed comparisons read ``chunk_meta`` in one of two forms: by default as
    ``id IN (the matching ids)``, which suits a query the filter drives (listing the ids that
    pass it); with ``correlated`` as one ``EXISTS`` probe per row, which suits checking a few
    candidate rows that something else selected (a broad filter's id list is costly to build
    for them). Both select the same rows.

    Returns:
        None for no filter (None or ``{}``).

    Raises:
        FilterError: unknown operator, a value of the wrong type, a malformed AND/OR/NOT,
            nesting deeper than ``MAX_FILTER_DEPTH`` (16) levels, or more than
            ``MAX_FILTER_TERMS`` (512) conditions, counting each comparison, each in/nin list
            and each AND/OR/NOT branch, or more than ``MAX_IN_VALUES`` (100,000) values in
            all its in/nin lists together.
    """
    if filters is None:
        return None
    if not isinstance(filters, Mapping):
        raise FilterError(
            f"filters must be a dict, got {type(filters).__name__} {reprlib.repr(filters)}"
        )
    if not filters:
        return None
    return _node(filters, dialect, "filters", 1, _Budget(), correlated)


def string_terms(filters: Mapping[str, Any] | None) -> dict[str, list[str]] | None:
    """A valid filter (one :func:`compile_filters` accepted) as ``{key: strings}``, each key
    holding one of its strings, when it is only that: equalities and ``in`` lists of strings
    on keys other than ``"time"``, all of which must hold. None for any other filter.

    The text index (memsdk/stores/text_index.py) indexes each chunk's top-level string values
    and answers such a filter inside its ranking; it hands any other to SQL.
    """
    if not filters:
        return None
    terms: dict[str, list[str]] = {}
    for key, cond in filters.items():
        if key in _LOGIC or key == TIME_KEY:
            return None
        if not isinstance(cond, Mapping):
            values = [cond]
        elif len(cond) != 1:
            return None
        else:
            ((op, value),) = cond.items()
            if op == "eq":
                values = [value]
            elif op == "in" and isinstance(value, list | tuple):
                values = list(value)
            else:
                return None
        if not values or not all(isinstance(v, str) for v in values):
            return None
        terms[key] = values
    return terms
