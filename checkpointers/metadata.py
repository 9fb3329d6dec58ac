"""Typed metadata of sessions and messages, and the filters that select by it.

Values are `str`, `int`, `float`, `bool` or `bytes`. They are stored as one
JSON object per session (`threads.metadata`) or message
(`message_metadata.metadata`); bytes, which JSON lacks, are stored as
`{"$bytes": "<hex>"}`, so they come back as bytes and compare in byte order.
Keys are 1 to 128 characters, without `"`, `\\` or control characters, and
do not start with `$` (that prefix is the filter syntax's).

A filter is a dict, in the shape Chroma, PGVector and MongoDB users know:

    {"topic": "billing"}                          topic equals "billing"
    {"score": {"$gte": 3, "$lt": 10}}             each operator must hold
    {"lang": {"$in": ["en", "fr"]}}               equals one of these
    {"topic": "billing", "open": True}            several keys: all must hold
    {"$or": [{"lang": "en"}, {"score": {"$gt": 9}}]}
    {"$and": [...]}, {"$not": {"archived": True}}

Operators: `$eq $ne $gt $gte $lt $lte $in` on a key, `$and $or $not` around
filters. What a comparison means:

* It holds only when the key is present with a value of the same kind as the
  operand: numbers (int and float together), booleans, strings, bytes. So
  `{"n": {"$gt": 3}}` never matches `n = "7"`, and `True` is not `1`.
* `$ne` holds when the key is present and its value is not equal (a value of
  another kind counts as not equal); use `$not` to also match sessions
  without the key: `{"$not": {"topic": "billing"}}`.
* Strings compare by code point, bytes by byte, `False < True`.
* `{"$and": []}` is true, `{"$or": []}` is false, `{"$in": []}` matches nothing.

Filters compile to SQL and run inside the database: `json_type` /
`json_extract` on SQLite, `jsonb` operators on PostgreSQL
(`checkpointers.engines.postgres.sessions`). Every comparison yields true or
false, never NULL, so `$not` is plain negation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from checkpointers.storable import check_text, storable_text

MetadataValue = str | int | float | bool | bytes
MetadataFilter = Mapping[str, Any]

MAX_KEY_LENGTH = 128
BYTES_TAG = "$bytes"
COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = set(COMPARISONS) | {"$in"}
COMBINATORS = {"$and", "$or", "$not"}
_INT64 = 1 << 63

# The kind of a value, as json_type() reports it for the stored form.
_KIND_TYPES = {
    "number": "('integer', 'real')",
    "bool": "('true', 'false')",
    "str": "('text')",
}


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"metadata keys must be non-empty strings, not {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"metadata key {key[:40]!r}... is longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("$"):
        raise ValueError(f"metadata key {key!r} cannot start with '$' (that is the filter syntax)")
    if '"' in key or "\\" in key or any(ord(c) < 32 for c in key):
        raise ValueError(f"metadata key {key!r} cannot contain quotes, backslashes or control characters")
    if not storable_text(key):
        raise ValueError(f"metadata key {key!r} is not valid Unicode (a lone surrogate)")
    return key


def _kind(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise ValueError(f"{where}: integer {value} does not fit in 64 bits")
        return "number"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a finite number")
        return "number"
    if isinstance(value, str):
        # Neither engine's JSON keeps these exactly: PostgreSQL's jsonb has no NUL, and
        # a lone surrogate has no UTF-8 form. Refused alike on both, so a store can move.
        if "\x00" in value:
            raise ValueError(f"{where}: text cannot contain the NUL character")
        if not storable_text(value):
            raise ValueError(f"{where}: text is not valid Unicode (a lone surrogate)")
        return "str"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    raise ValueError(
        f"{where}: {type(value).__name__} is not a metadata type (use str, int, float, bool or bytes)"
    )


def encode(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The JSON-ready form of typed metadata; raises ValueError naming a bad key or value."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict, not {type(metadata).__name__}")
    stored: dict[str, Any] = {}
    for key, value in metadata.items():
        check_key(key)
        if _kind(value, f"metadata {key!r}") == "bytes":
            value = {BYTES_TAG: bytes(value).hex()}
        stored[key] = value
    return stored


def dumps(metadata: Mapping[str, Any] | None) -> str:
    # Non-ASCII is written as is: SQLite before 3.45 matches JSON path labels
    # against the text as written, escapes included.
    return check_text(json.dumps(encode(metadata), ensure_ascii=False, separators=(",", ":")), "metadata")


def decode_value(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BYTES_TAG), str):
        return bytes.fromhex(value[BYTES_TAG])
    return value


def loads(text: str | None) -> dict[str, Any]:
    """Typed metadata from its stored JSON (values other writers stored pass through)."""
    if not text:
        return {}
    raw = json.loads(text)
    return {key: decode_value(value) for key, value in raw.items()} if isinstance(raw, dict) else {}


def _path(key: str) -> str:
    return '$."' + key + '"'


class FilterCompiler:
    """Walks a filter, checking its syntax, and asks the engine's dialect for each comparison.

    The walk (what `$and`, `$or`, `$not`, `$in` and several keys mean, and every
    error message) is the same on every engine; a subclass says how one typed
    comparison is written in its SQL. Keys and operands are always parameters."""

    TRUE, FALSE = "1", "0"

    def __init__(self, column: str) -> None:
        self.column = column
        self.params: list[Any] = []

    def filter(self, expr: Any) -> str:
        if not isinstance(expr, Mapping):
            raise ValueError(f"a metadata filter must be a dict, not {type(expr).__name__}")
        parts = [self.entry(key, value) for key, value in expr.items()]
        if not parts:
            return self.TRUE
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def entry(self, key: Any, value: Any) -> str:
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{key} takes a list of filters, not {type(value).__name__}")
            if not value:
                return self.TRUE if key == "$and" else self.FALSE
            joiner = " AND " if key == "$and" else " OR "
            return "(" + joiner.join(self.filter(item) for item in value) + ")"
        if key == "$not":
            return f"(NOT {self.filter(value)})"
        if isinstance(key, str) and key.startswith("$"):
            raise ValueError(
                f"unknown filter operator {key!r}: use $and, $or, $not around filters, "
                f"or {', '.join(sorted(OPERATORS))} on a key"
            )
        check_key(key)
        if not isinstance(value, Mapping):
            return self.comparison(key, "$eq", value)
        if not value:
            raise ValueError(f"the filter on {key!r} has no operator")
        parts = []
        for op, operand in value.items():
            if op == "$in":
                parts.append(self.membership(key, operand))
            elif op in COMPARISONS:
                parts.append(self.comparison(key, op, operand))
            else:
                raise ValueError(f"unknown operator {op!r} on {key!r}: use {', '.join(sorted(OPERATORS))}")
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def comparison(self, key: str, op: str, value: Any) -> str:
        kind = _kind(value, f"filter on {key!r}")
        if op == "$ne":
            return f"({self.present(key)} AND NOT {self.comparison(key, '$eq', value)})"
        return self.compare(key, kind, COMPARISONS[op], value)

    def membership(self, key: str, values: Any) -> str:
        if not isinstance(values, (list, tuple, set, frozenset)):
            raise ValueError(f"$in on {key!r} takes a list of values, not {type(values).__name__}")
        by_kind: dict[str, list[Any]] = {}
        for value in values:
            by_kind.setdefault(_kind(value, f"$in on {key!r}"), []).append(value)
        if not by_kind:
            return self.FALSE
        parts = [self.member(key, kind, operands) for kind, operands in by_kind.items()]
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    # -- the dialect: SQLite's JSON1 functions --------------------------------

    def present(self, key: str) -> str:
        """A never-NULL test that the key is in the object (with any value, null included)."""
        self.params.append(_path(key))
        return f"json_type({self.column}, ?) IS NOT NULL"

    def compare(self, key: str, kind: str, sql_op: str, value: Any) -> str:
        """A never-NULL test that the key holds a value of `kind` standing in `sql_op` to `value`."""
        guard, extract = self._typed(key, kind)
        # The guard's params come first, then the extract's, then the operand.
        self.params.append(self._operand(value, kind))
        return f"({guard} AND {extract} {sql_op} ?)"

    def member(self, key: str, kind: str, values: list[Any]) -> str:
        """A never-NULL test that the key holds one of `values` (all of `kind`)."""
        guard, extract = self._typed(key, kind)
        self.params += [self._operand(v, kind) for v in values]
        return f"({guard} AND {extract} IN ({', '.join('?' * len(values))}))"

    def _typed(self, key: str, kind: str) -> tuple[str, str]:
        """(a never-NULL test that the key holds a value of this kind, the value's SQL)."""
        col = self.column
        if kind == "bytes":
            path = _path(key) + '."' + BYTES_TAG + '"'
            self.params += [path, path]
            return f"ifnull(json_type({col}, ?), '') = 'text'", f"json_extract({col}, ?)"
        self.params += [_path(key), _path(key)]
        return f"ifnull(json_type({col}, ?), '') IN {_KIND_TYPES[kind]}", f"json_extract({col}, ?)"

    @staticmethod
    def _operand(value: Any, kind: str) -> Any:
        if kind == "bytes":
            return bytes(value).hex()
        if kind == "bool":
            return int(value)
        return value


def compile_filter(
    expr: MetadataFilter | None, column: str, compiler: type[FilterCompiler] = FilterCompiler
) -> tuple[str, list[Any]]:
    """SQL that is true exactly when the JSON in `column` matches `expr`, and its params
    (`compiler`: the engine's dialect; SQLite's by default).

    Raises ValueError with one sentence for a filter that breaks the syntax above.
    """
    if expr is None:
        return compiler.TRUE, []
    compiler = compiler(column)
    sql = compiler.filter(expr)
    return sql, compiler.params
