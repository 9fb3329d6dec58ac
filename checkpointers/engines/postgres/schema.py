"""The PostgreSQL schema, as numbered migrations applied in order and recorded.

The same storage model as the SQLite file (see `checkpointers.engines.sqlite.schema` and
`docs/storage.md`), laid out in PostgreSQL's types: `threads` (the thread
index; `metadata` is `jsonb`), `checkpoints` (without channel values),
`channel_values` (a value written once per version; a message list as message
numbers, a delta of an earlier list), `messages` (each message once per
thread, deflated, with its search words as text under a GIN index of their
`tsvector`, `WORDS_TSVECTOR`),
and `writes` (task writes whose checkpoint was not stored yet, and those stored before m008;
the others are packed into their checkpoint's row, `packed_writes`); then what sessions and attachments add: `message_metadata`, `message_times` (the times of
messages stored before m009; since then a column of `messages`) and `attachments` (the attached database's bytes); and
`store_meta` (the encryption key's record). Every table of a thread's content
references its thread with `ON DELETE CASCADE`, so deleting a thread's row
deletes all of it.

`migrate` runs under a transaction-scoped advisory lock: processes that start
together queue on it, the first applies what is missing, the others find
it done. A database whose recorded version is newer than this code knows is
refused (`SchemaTooNewError`), as for SQLite. Append to `MIGRATIONS`; never
edit one that has shipped.
"""

from __future__ import annotations

from checkpointers.codec import id_bytes_sql
from checkpointers.engines.postgres.connection import FETCH_ALL, FETCH_NONE, STORE_FOUND_SQL, Plan, Sql
from checkpointers.errors import SchemaTooNewError

MIGRATION_LOCK = 0x746B6D69  # "tkmi": the advisory lock key every process migrates under

M001_INITIAL = (
    """
    CREATE TABLE threads (
        thread_key bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        thread_id text NOT NULL UNIQUE,
        user_id text,
        title text,
        created_at text NOT NULL,
        updated_at text NOT NULL,
        message_count integer NOT NULL DEFAULT 0,
        pinned boolean NOT NULL DEFAULT false,
        metadata jsonb NOT NULL DEFAULT '{}',
        next_value_no integer NOT NULL DEFAULT 1,
        next_message_no integer NOT NULL DEFAULT 1,
        gc_epoch integer NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX threads_by_user_updated ON threads (user_id, updated_at, thread_id)",
    """
    CREATE TABLE checkpoints (
        thread_key bigint NOT NULL REFERENCES threads ON DELETE CASCADE,
        checkpoint_ns text NOT NULL,
        checkpoint_id text NOT NULL,
        parent_checkpoint_id text,
        run_id text,
        type text NOT NULL,
        checkpoint bytea NOT NULL,
        metadata jsonb NOT NULL,
        PRIMARY KEY (thread_key, checkpoint_ns, checkpoint_id)
    )
    """,
    "CREATE INDEX checkpoints_by_run ON checkpoints (run_id) WHERE run_id IS NOT NULL",
    """
    CREATE TABLE channel_values (
        thread_key bigint NOT NULL REFERENCES threads ON DELETE CASCADE,
        value_no integer NOT NULL,
        checkpoint_ns text NOT NULL,
        channel text NOT NULL,
        version text NOT NULL,
        kind smallint NOT NULL,
        type text,
        value bytea,
        base_no integer,
        keep integer,
        depth integer NOT NULL DEFAULT 0,
        PRIMARY KEY (thread_key, value_no)
    )
    """,
    "CREATE INDEX channel_values_by_version ON channel_values (thread_key, checkpoint_ns, channel, version, value_no)",
    """
    CREATE TABLE messages (
        thread_key bigint NOT NULL REFERENCES threads ON DELETE CASCADE,
        message_no integer NOT NULL,
        type text NOT NULL,
        value bytea NOT NULL,
        words tsvector,
        PRIMARY KEY (thread_key, message_no)
    )
    """,
    "CREATE INDEX messages_by_words ON messages USING gin (words)",
    """
    CREATE TABLE writes (
        thread_key bigint NOT NULL REFERENCES threads ON DELETE CASCADE,
        checkpoint_ns text NOT NULL,
        checkpoint_id text NOT NULL,
        task_id text NOT NULL,
        idx integer NOT NULL,
        task_path text NOT NULL,
        channel text NOT NULL,
        type text NOT NULL,
        value bytea,
        PRIMARY KEY (thread_key, checkpoint_ns, checkpoint_id, task_id, idx)
    )
    """,
)

_COUNTERS = ",\n".join(
    f"{name} {'bigint' if name.startswith(('tokens', 'estimated')) else 'integer'} NOT NULL DEFAULT 0"
    for name in (
        "threads_created", "threads_deleted", "threads_swept", "sweeps", "human_messages", "ai_messages",
        "tool_messages", "other_messages", "tokens_in", "tokens_out", "estimated_tokens_in",
        "estimated_tokens_out", "attachments_added",
    )
)

M002_OPERATIONS = (
    # The sweeper asks for the threads least recently updated, of every user;
    # pinned threads are exempt, so they stay out of the index.
    "CREATE INDEX threads_by_expiry ON threads (updated_at, thread_id) WHERE NOT pinned",
    """
    CREATE TABLE sweeps (
        sweep_no bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        started_at text NOT NULL,
        finished_at text NOT NULL,
        strategy text NOT NULL,
        cutoff text NOT NULL,
        threads integer NOT NULL,
        bytes bigint NOT NULL,
        dry_run boolean NOT NULL,
        host text NOT NULL
    )
    """,
    # Usage statistics, as SQLite's m007 (see checkpointers/stats.py): counters that only
    # grow, from this migration on, except threads, counted on the day they were created.
    f"CREATE TABLE usage_days (day text PRIMARY KEY, {_COUNTERS}, database_bytes bigint)",
    """
    CREATE TABLE usage_user_days (
        day text NOT NULL,
        user_id text NOT NULL,
        messages integer NOT NULL DEFAULT 0,
        threads_created integer NOT NULL DEFAULT 0,
        PRIMARY KEY (day, user_id)
    )
    """,
    """
    CREATE TABLE usage_users (
        user_id text PRIMARY KEY,
        last_day text NOT NULL,
        active_days integer NOT NULL DEFAULT 0,
        messages integer NOT NULL DEFAULT 0,
        threads_created integer NOT NULL DEFAULT 0
    )
    """,
    "INSERT INTO usage_days (day, threads_created) SELECT substr(created_at, 1, 10), count(*) FROM threads GROUP BY 1",
    "INSERT INTO usage_user_days (day, user_id, threads_created) "
    "SELECT substr(created_at, 1, 10), user_id, count(*) FROM threads WHERE user_id IS NOT NULL GROUP BY 1, 2",
    "INSERT INTO usage_users (user_id, last_day, active_days, threads_created) "
    "SELECT user_id, max(day), count(*), sum(threads_created) FROM usage_user_days GROUP BY user_id",
)
"""Retention and statistics: the expiry index, `sweeps`, and the usage counters."""


M003_SESSIONS_AND_ATTACHMENTS = (
    # When messages were stored (unix milliseconds), as SQLite's `message_times`: a
    # row (thread_key, message_no, t) dates message_no and every later message of
    # the thread up to the next row. A statement-level trigger writes one row per
    # thread per statement that stores messages (a checkpoint's write is one
    # statement), and none when the thread's newest row already has this millisecond.
    """
    CREATE TABLE message_times (
        thread_key bigint NOT NULL REFERENCES threads ON DELETE CASCADE,
        message_no integer NOT NULL,
        created_at bigint NOT NULL,
        PRIMARY KEY (thread_key, message_no)
    )
    """,
    """
    CREATE FUNCTION messages_record_time() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO message_times (thread_key, message_no, created_at)
        SELECT n.thread_key, min(n.message_no),
            (extract(epoch FROM statement_timestamp()) * 1000)::bigint
        FROM new_messages n GROUP BY n.thread_key
        HAVING (SELECT t.created_at FROM message_times t WHERE t.thread_key = n.thread_key
                ORDER BY t.message_no DESC LIMIT 1)
            IS DISTINCT FROM (extract(epoch FROM statement_timestamp()) * 1000)::bigint
        ON CONFLICT (thread_key, message_no) DO UPDATE SET created_at = EXCLUDED.created_at;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER messages_record_time AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_messages FOR EACH STATEMENT EXECUTE FUNCTION messages_record_time()
    """,
    # Metadata and given creation times (microseconds) of messages written through
    # `saver.sessions`, keyed by message id, as SQLite's `message_metadata`.
    """
    CREATE TABLE message_metadata (
        thread_key bigint NOT NULL REFERENCES threads ON DELETE CASCADE,
        message_id text NOT NULL,
        created_at bigint,
        metadata jsonb NOT NULL DEFAULT '{}',
        PRIMARY KEY (thread_key, message_id)
    )
    """,
    # The database attached to a thread, its bytes included: every app process
    # reads it from here and keeps a read-only copy named by `sha256` (TOAST
    # stores the bytes out of line, so reading the other columns stays cheap).
    """
    CREATE TABLE attachments (
        thread_key bigint PRIMARY KEY REFERENCES threads ON DELETE CASCADE,
        name text NOT NULL,
        sha256 text NOT NULL,
        bytes bigint NOT NULL,
        tables jsonb NOT NULL,
        attached_at text NOT NULL,
        data bytea NOT NULL
    )
    """,
)

M004_STORE_META = (
    # Settings of the store itself, as SQLite's `store_meta`: the encryption key's
    # record (salt, KDF parameters, check value; see `checkpointers.encryption`),
    # checked by every saver that opens the store.
    "CREATE TABLE store_meta (key text PRIMARY KEY, value text NOT NULL)",
)

WORDS_TSVECTOR = "array_to_tsvector(string_to_array(words, ' '))"
"""A message's search words (`messages.words`, lexemes separated by spaces) as the `tsvector` the
GIN index `messages_by_words` holds; a search must match on this very expression to use it."""

M005_COMPACT_WORDS = (
    # Measured through the agent graph (1,000 turns, `bench.postgres`): the GIN index took
    # 1,393 bytes a turn, nearly all of it its pending list (`fastupdate`, up to
    # `gin_pending_list_limit`, 4 MB, before anything moves it into the index proper:
    # about 23 bytes a word); inserting into the index at once takes 139. And a `tsvector`
    # column spends 4 bytes a word beside the word itself: the words as text, with the
    # index on the `tsvector` made from them, take 90 bytes less a message (230 -> 140).
    "DROP INDEX messages_by_words",
    "ALTER TABLE messages ALTER COLUMN words TYPE text USING array_to_string(tsvector_to_array(words), ' ')",
    f"CREATE INDEX messages_by_words ON messages USING gin (({WORDS_TSVECTOR})) WITH (fastupdate = off)",
)
"""Search words stored as text, their index without a pending list."""

M006_ID_BYTES = (
    # Measured through the agent graph (1,000 turns, `bench.postgres --bytes`): a UUID as text
    # takes 37 bytes in a row and in each key, as `bytea` 17 (`codec.id_bytes`: any other
    # id stays as its UTF-8 text); a turn stores two in each of 4 checkpoint and 5 write
    # rows and their keys. Rows written before are converted here (each table rewritten once).
    "ALTER TABLE checkpoints "
    f"ALTER COLUMN checkpoint_id TYPE bytea USING {id_bytes_sql('checkpoint_id')}, "
    f"ALTER COLUMN parent_checkpoint_id TYPE bytea USING {id_bytes_sql('parent_checkpoint_id')}, "
    f"ALTER COLUMN run_id TYPE bytea USING {id_bytes_sql('run_id')}",
    "ALTER TABLE writes "
    f"ALTER COLUMN checkpoint_id TYPE bytea USING {id_bytes_sql('checkpoint_id')}, "
    f"ALTER COLUMN task_id TYPE bytea USING {id_bytes_sql('task_id')}",
)
"""Checkpoint, run and task ids as 16 bytes (`codec.id_bytes`)."""

M007_COMPACT_TURNS = (
    # Measured through the agent graph (1,000 turns, `bench.postgres --bytes`): a turn's input
    # and the model's answer were serialised again in two task writes and in the `__start__`
    # channel's value, beside their rows in `messages`. A write now says what it holds
    # (`kind`, as `channel_values.kind`: message numbers, a dict of them, or a serialised
    # value; old rows are serialised values). And the usual task path "~__pregel_pull, NODE"
    # is stored as a NUL and NODE's bytes (`codec.task_path_bytes`), any other as its UTF-8.
    "ALTER TABLE writes ADD COLUMN kind smallint NOT NULL DEFAULT 0, ALTER COLUMN type DROP NOT NULL, "
    "ALTER COLUMN task_path TYPE bytea USING convert_to(task_path, 'UTF8')",
    # A checkpoint's metadata inside its `tk.cp2` row (`checkpoint_codec`: about 13 bytes for
    # the usual keys, against 83 of `jsonb` in the column); the column holds it only for
    # checkpoints stored the generic way, and for rows written before. `list(filter=)`
    # matches metadata in Python, as on SQLite.
    "ALTER TABLE checkpoints ALTER COLUMN metadata DROP NOT NULL",
)
"""Messages in task writes and a graph's input as message numbers; task paths as bytes;
checkpoint metadata inside the checkpoint's row."""

M008_PACKED_WRITES = (
    # Measured through the agent graph (1,000 turns, `bench.postgres --bytes`): a turn's five
    # task writes took 1,089 bytes as rows of `writes`; appended to their checkpoint's row
    # (`packed_writes`), they take what they hold. Rows of `writes` stay readable, and take a
    # write whose checkpoint is not stored yet.
    "ALTER TABLE checkpoints ADD COLUMN writes bytea",
)
"""A checkpoint's task writes packed into its row."""

MESSAGE_TIME_SQL = "(extract(epoch FROM statement_timestamp()) * 1000)::bigint"
"""When a message is stored: the time of the statement that stores it, in unix milliseconds."""

M009_MESSAGE_TIMES_IN_MESSAGES = (
    # Measured through the agent graph (1,000 turns, `bench.postgres --bytes`): `message_times`
    # took 246 bytes a turn (two rows, one per statement storing messages, and their keys); a
    # column of `messages`, set by its default, fits in the row's alignment padding. A
    # message's time is the time of the statement that stored it, as the trigger gave it;
    # `date_messages` sets it for an import. Rows stored before keep NULL there and their
    # times in `message_times`, which no longer grows: filling the column would rewrite every
    # message (3.6 s and twice the table's size for 60,000 messages) while the table is locked.
    "ALTER TABLE messages ADD COLUMN created_at bigint",
    f"ALTER TABLE messages ALTER COLUMN created_at SET DEFAULT {MESSAGE_TIME_SQL}",
    "DROP TRIGGER messages_record_time ON messages",
    "DROP FUNCTION messages_record_time()",
)
"""When each message was stored, in its own row."""

M010_WRITES_AFTER = (
    # A row of `writes` whose checkpoint's packed writes were full (`packed_writes.MAX_BYTES`)
    # says so, and whether its call replaced: `packed_writes.merged` places it after them.
    "ALTER TABLE writes ADD COLUMN after smallint",
)
"""Where a row of `writes` stands against its checkpoint's packed writes."""

MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("m001_initial", M001_INITIAL),
    ("m002_operations", M002_OPERATIONS),
    ("m003_sessions_and_attachments", M003_SESSIONS_AND_ATTACHMENTS),
    ("m004_store_meta", M004_STORE_META),
    ("m005_compact_words", M005_COMPACT_WORDS),
    ("m006_id_bytes", M006_ID_BYTES),
    ("m007_compact_turns", M007_COMPACT_TURNS),
    ("m008_packed_writes", M008_PACKED_WRITES),
    ("m009_message_times_in_messages", M009_MESSAGE_TIMES_IN_MESSAGES),
    ("m010_writes_after", M010_WRITES_AFTER),
)
"""(name, statements) in order; the version of a store is how many are applied."""


def _refuse_newer(newest: int) -> None:
    if newest > len(MIGRATIONS):
        raise SchemaTooNewError(
            f"this PostgreSQL database has schema version {newest}, newer than this threadkeeper knows "
            f"({len(MIGRATIONS)}): upgrade threadkeeper"
        )


def migrate() -> Plan[int]:
    """Bring the schema up to date (run in one transaction); returns the version.

    A store already up to date is only read: a role that may write rows but not create
    tables, or a read-only server, opens it (PostgreSQL checks the right to create before
    it sees that `CREATE TABLE IF NOT EXISTS` has nothing to do)."""
    ((found,),) = yield Sql(STORE_FOUND_SQL, ())
    if found:
        ((newest,),) = yield Sql("SELECT coalesce(max(version), 0) FROM schema_migrations", ())
        _refuse_newer(newest)
        if newest == len(MIGRATIONS):
            return newest
    yield Sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,), FETCH_ALL)
    yield Sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        (),
        FETCH_NONE,
    )
    applied = {version for (version,) in (yield Sql("SELECT version FROM schema_migrations", ()))}
    _refuse_newer(max(applied, default=0))
    for version, (name, statements) in enumerate(MIGRATIONS, start=1):
        if version in applied:
            continue
        for statement in statements:
            yield Sql(statement, (), FETCH_NONE)
        yield Sql("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name), FETCH_NONE)
    return len(MIGRATIONS)
