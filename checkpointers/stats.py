"""Usage statistics: counters the store keeps as it writes, rolled up by day.

What the people who run threadkeeper see of how it is used, without reading
anyone's chats: how many threads and messages, how many users were active,
tokens, database size, attachments, sweeps and deletions. Nothing here holds
text, titles or thread ids; users appear by id with counts only.

Counters are kept in the transaction of the write they count, never by
scanning messages afterwards:

* a message is counted when it first appears in a thread's conversation (the
  `messages` channel of the root namespace, against the list stored before):
  `figures(message)`, a `Tally` per thread write, and one `usage_days` upsert
  plus one `usage_user_days` upsert in the same transaction as the thread's rows
  (`record_tally`);
* thread creation, deletion, sweeps and attachments call the small functions
  below (`thread_created`, `threads_deleted`, `sweep_recorded`,
  `attachment_added`) inside the transaction that does the work.

A year of use is 365 `usage_days` rows, one `usage_user_days` row per user
per day they were active, and one `usage_users` row per user (their totals
and last active day), so `read` answers from a few hundred rows plus one per
user, whatever the store holds (measured: see `bench/ops.py`).

Tokens: `tokens_in`/`tokens_out` are what the model reported for its replies
(`AIMessage.usage_metadata`), exact where it reports them. Alongside,
`estimated_tokens_in`/`estimated_tokens_out` are the approximate count
(4 characters a token) of the text of new messages: what users and tools sent
in, what the model wrote out. They estimate new text only, not the history the
model re-reads at every turn; they are what there is when the model reports
no usage (the offline mode, some local servers).

The SQL is plain SQLite and PostgreSQL alike (`INSERT ... ON CONFLICT DO
UPDATE`, `excluded.`, columns qualified by their table) except the database
size (`database_bytes`), which each engine measures its own way. The PostgreSQL saver runs the same functions
inside its write plans (`engines.postgres.connection.neutral`), and the reads
go through the engine's `saver.maintenance.reading()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

MESSAGE_KINDS = ("human", "ai", "tool", "other")
"""The message columns of `usage_days` are `<kind>_messages`."""

DAY_COLUMNS = (
    "threads_created",
    "threads_deleted",
    "threads_swept",
    "sweeps",
    "human_messages",
    "ai_messages",
    "tool_messages",
    "other_messages",
    "tokens_in",
    "tokens_out",
    "estimated_tokens_in",
    "estimated_tokens_out",
    "attachments_added",
)
"""Counters of `usage_days`: each only ever grows (see `schema.m007_usage_stats`)."""

USER_COLUMNS = ("messages", "threads_created")
"""Counters of `usage_user_days`."""

CHARS_PER_TOKEN = 4
"""The approximate count's rule, as LangChain's `count_tokens_approximately` has it."""

_KIND_OF_TYPE = {"human": 0, "ai": 1, "tool": 2}


def today() -> str:
    """The UTC day a counter falls on, `YYYY-MM-DD`."""
    return datetime.now(timezone.utc).date().isoformat()


def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part) if isinstance(part, str) else len(str(part.get("text", "")))
            for part in content
            if isinstance(part, str) or (isinstance(part, dict) and part.get("type") == "text")
        )
    return 0


def figures(message: Any) -> tuple[int, int, int, int, int] | None:
    """What one new message adds: (kind index in `MESSAGE_KINDS`, tokens in, tokens out,
    estimated tokens in, estimated tokens out); None for a `RemoveMessage` (an edit's
    instruction to drop messages, stored with the write that carries it, not a message
    of the conversation). A microsecond or so: attribute reads and one `len`."""
    type_ = getattr(message, "type", None)
    if type_ == "remove":
        return None
    kind = _KIND_OF_TYPE.get(type_, 3)
    estimate = -(-_text_length(getattr(message, "content", "")) // CHARS_PER_TOKEN)
    if kind == 1:
        usage = getattr(message, "usage_metadata", None) or {}
        return kind, int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0), 0, estimate
    return kind, 0, 0, estimate, 0


@dataclass(slots=True)
class Tally:
    """The new messages of one thread write, summed as they are stored."""

    counts: list[int] = field(default_factory=lambda: [0] * 8)
    """human, ai, tool, other messages; tokens in, out; estimated in, out."""

    def add(self, figures: tuple[int, int, int, int, int]) -> None:
        kind, tokens_in, tokens_out, estimated_in, estimated_out = figures
        c = self.counts
        c[kind] += 1
        c[4] += tokens_in
        c[5] += tokens_out
        c[6] += estimated_in
        c[7] += estimated_out


def new_messages(base_nos: Sequence[int] | None, messages: Sequence[Any], nos: Sequence[int]) -> Iterator[tuple]:
    """The `figures` of the messages of a stored list (`nos`, their numbers) that its base
    (`base_nos`) did not hold: what a write of the conversation's list adds to the counters.
    Both engines call it on the root namespace's `messages` channel. A turn's list
    usually starts with its base's: that part is passed over at C speed, so a long
    conversation does not cost a Python step per message at every turn."""
    base_nos = list(base_nos or ())
    start = len(base_nos) if list(nos[: len(base_nos)]) == base_nos else 0
    had = set(base_nos)
    for message, no in zip(messages[start:], nos[start:]):
        if no not in had and (found := figures(message)) is not None:
            yield found


def record_tally(conn: Any, day: str, user_id: str | None, tally: Tally, database_bytes: int | None = None) -> None:
    """Add one thread write's `Tally` to the day's, the user's day's and the user's counters."""
    names = ("human_messages", "ai_messages", "tool_messages", "other_messages", "tokens_in", "tokens_out",
             "estimated_tokens_in", "estimated_tokens_out")
    record(conn, day, **dict(zip(names, tally.counts)), database_bytes=database_bytes)
    if user_id is not None:
        record_user(conn, day, user_id, messages=sum(tally.counts[:4]))


def record(conn: Any, day: str | None = None, *, database_bytes: int | None = None, **counts: int) -> None:
    """Add `counts` (names from `DAY_COLUMNS`) to a day's row, creating it; `database_bytes`
    replaces the day's figure. Call inside the transaction that does what is counted."""
    unknown = set(counts) - set(DAY_COLUMNS)
    if unknown:
        raise ValueError(f"unknown usage counters: {sorted(unknown)}")
    names = list(counts)
    values: list[Any] = [day or today(), *counts.values()]
    updates = [f"{n} = usage_days.{n} + excluded.{n}" for n in names]
    if database_bytes is not None:
        names.append("database_bytes")
        values.append(database_bytes)
        updates.append("database_bytes = excluded.database_bytes")
    columns = ", ".join(["day", *names])
    marks = ", ".join("?" * len(values))
    conflict = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    conn.execute(f"INSERT INTO usage_days ({columns}) VALUES ({marks}) ON CONFLICT (day) {conflict}", values)


def record_user(conn: Any, day: str | None, user_id: str, **counts: int) -> None:
    """Add `counts` (names from `USER_COLUMNS`) to a user's row for a day. (Columns are
    qualified by their table: PostgreSQL finds `messages = messages + ...` ambiguous.)"""
    unknown = set(counts) - set(USER_COLUMNS)
    if unknown or not counts:
        raise ValueError(f"unknown per-user usage counters: {sorted(unknown) or 'none given'}")
    names = list(counts)
    day = day or today()
    def added(table: str) -> str:
        return ", ".join(f"{n} = {table}.{n} + excluded.{n}" for n in names)

    marks = ", ".join("?" * len(names))
    conn.execute(
        f"INSERT INTO usage_user_days (day, user_id, {', '.join(names)}) VALUES (?, ?, {marks}) "
        f"ON CONFLICT (day, user_id) DO UPDATE SET {added('usage_user_days')}",
        [day, user_id, *counts.values()],
    )
    conn.execute(
        f"INSERT INTO usage_users (user_id, last_day, active_days, {', '.join(names)}) VALUES (?, ?, 1, {marks}) "
        f"ON CONFLICT (user_id) DO UPDATE SET {added('usage_users')}, active_days = usage_users.active_days + "
        "CASE WHEN usage_users.last_day = excluded.last_day THEN 0 ELSE 1 END, last_day = "
        "CASE WHEN excluded.last_day > usage_users.last_day THEN excluded.last_day ELSE usage_users.last_day END",
        [user_id, day, *counts.values()],
    )


# -- the hooks of the write paths that are not a thread write -----------------


def thread_created(conn: Any, user_id: str | None) -> None:
    """A thread row was inserted (a chat's first write, a session, an attachment on a new
    thread, a copy, an import)."""
    day = today()
    record(conn, day, threads_created=1)
    if user_id is not None:
        record_user(conn, day, user_id, threads_created=1)


def user_erased(conn: Any, user_id: str) -> None:
    """A user's erasure (`delete-user`): their rows, the only ones that hold their id, go.
    The day totals keep what they counted (they name no one); a past day's count of
    active users drops by one."""
    conn.execute("DELETE FROM usage_user_days WHERE user_id = ?", [user_id])
    conn.execute("DELETE FROM usage_users WHERE user_id = ?", [user_id])


def threads_deleted(conn: Any, count: int, *, swept: bool) -> None:
    """`count` threads were deleted: by the retention sweep (`swept`), or at a person's
    or program's request (the web chat, `delete-user`, the API, an import replacing one)."""
    if count:
        record(conn, **{"threads_swept" if swept else "threads_deleted": count})


def sweep_recorded(conn: Any, pruned_threads: int, keep_latest: bool, database_bytes: int | None = None) -> None:
    """A retention sweep finished (dry runs are not sweeps). Threads it deleted were
    counted by `threads_deleted`; those it compacted (`keep_latest`) are counted here."""
    record(conn, sweeps=1, **({"threads_swept": pruned_threads} if keep_latest and pruned_threads else {}),
           database_bytes=database_bytes)


def attachment_added(conn: Any) -> None:
    record(conn, attachments_added=1)


# -- reading -------------------------------------------------------------------


def first_day(days: int | None, now: date | None = None) -> str | None:
    """The first day of a period of `days` days ending today (None: all of it)."""
    if days is None:
        return None
    now = now or datetime.now(timezone.utc).date()
    return (now - timedelta(days=max(1, days) - 1)).isoformat()


Query = Callable[..., list[tuple]]
"""`query(sql, params=())`: the rows of one statement, every call in one read snapshot. The
statements are written once for both engines, with `?` marks (see `engines.base.Maintenance`)."""


def read(
    query: Query, days: int | None, *, database_bytes: int, attachments: tuple[int, int], top_users: int = 20
) -> dict[str, Any]:
    """Every figure of a period of `days` days ending today (None: since the store began),
    as JSON-ready data. Reads `usage_days`, `usage_user_days`, `sweeps` and counts `threads`
    by its primary key's index; `attachments` is the store's (count, bytes)."""
    now = datetime.now(timezone.utc)
    start = first_day(days, now.date())
    since = "" if start is None else " WHERE day >= ?"
    params: tuple = () if start is None else (start,)
    names = ["day", *DAY_COLUMNS, "database_bytes"]
    rows = [dict(zip(names, r)) for r in query(f"SELECT {', '.join(names)} FROM usage_days{since} ORDER BY day", params)]
    active = dict(query(f"SELECT day, count(*) FROM usage_user_days{since} GROUP BY day", params))
    for row in rows:
        row["active_users"] = active.get(row["day"], 0)
        row["messages"] = sum(row[f"{k}_messages"] for k in MESSAGE_KINDS)

    def distinct_users(first: str | None) -> int:
        # A period always ends today: a user was active in it if their last active day is in it.
        if first is None:
            return query("SELECT count(*) FROM usage_users")[0][0]
        return query("SELECT count(*) FROM usage_users WHERE last_day >= ?", (first,))[0][0]

    totals: dict[str, Any] = {name: sum(r[name] for r in rows) for name in DAY_COLUMNS}
    totals["messages"] = sum(totals[f"{k}_messages"] for k in MESSAGE_KINDS)
    ((threads,),) = query("SELECT count(*) FROM threads")
    if start is None:
        users = query(
            "SELECT user_id, messages, threads_created, active_days FROM usage_users "
            "ORDER BY messages DESC, user_id LIMIT ?",
            (top_users,),
        )
    else:
        users = query(
            "SELECT user_id, sum(messages), sum(threads_created), count(*) FROM usage_user_days WHERE day >= ? "
            "GROUP BY user_id ORDER BY sum(messages) DESC, user_id LIMIT ?",
            (start, top_users),
        )
    last_sweep = query(
        "SELECT finished_at, strategy, threads, bytes FROM sweeps WHERE NOT dry_run ORDER BY sweep_no DESC LIMIT 1"
    )
    return {
        "generated_at": now.isoformat(timespec="seconds"),
        "period": {"days": days, "first_day": start or (rows[0]["day"] if rows else None), "last_day": now.date().isoformat()},
        "store": {
            "threads": threads,
            "attachments": attachments[0],
            "attachment_bytes": attachments[1],
            "database_bytes": database_bytes,
            "last_sweep": None if not last_sweep else dict(zip(("finished_at", "strategy", "threads", "bytes"), last_sweep[0])),
        },
        "totals": {
            **totals,
            "active_users": distinct_users(start),
            "active_users_7d": distinct_users(first_day(7, now.date())),
            "active_users_30d": distinct_users(first_day(30, now.date())),
        },
        "tokens_note": (
            "tokens_in/tokens_out: reported by the model (usage_metadata); estimated_tokens_*: about 4 characters "
            "a token of the text of new messages (users and tools in, the model out), not the history re-read each turn"
        ),
        "days": rows,
        "users": [
            {"user_id": u, "messages": m, "threads_created": t, "active_days": d} for u, m, t, d in users
        ],
    }


# -- for the app: one read snapshot each, through the engine's `saver.maintenance` ---------


def usage(saver: Any, days: int | None) -> dict[str, Any]:
    """`read` on the saver's store (either engine), in one read snapshot."""
    store = saver.maintenance
    with store.reading() as query:
        return read(query, days, database_bytes=store.database_bytes(), attachments=store.attachment_totals(query))


def store_figures(saver: Any) -> dict[str, int]:
    """The few figures a metrics scrape reads: threads, database bytes, sweeps, swept threads."""
    store = saver.maintenance
    with store.reading() as query:
        ((threads,),) = query("SELECT count(*) FROM threads")
        ((sweeps, swept),) = query("SELECT coalesce(sum(sweeps), 0), coalesce(sum(threads_swept), 0) FROM usage_days")
    return {"threads": threads, "database_bytes": store.database_bytes(), "sweeps": int(sweeps),
            "threads_swept": int(swept)}


def readiness(saver: Any) -> str | None:
    """None if the store answers and its schema is this release's; else one sentence why not."""
    return saver.maintenance.schema_problem()
