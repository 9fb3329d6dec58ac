"""Storage engines: one package per database, each laying out the storage model in its SQL.

`checkpointers.open_saver(url)` picks one by the URL's scheme: `sqlite:///path`
is the embedded default (`checkpointers.engines.sqlite.saver`), `postgresql://` (or
`postgres://`) is `checkpointers.engines.postgres`, for several app processes
on one database. What both store is described once, in `docs/storage.md`, and
the Python side they share is `checkpointers.messages`.

`base.py` is how engine-neutral modules (`checkpointers.sessions`,
`checkpointers.attachments`) ask an engine for SQL: plans of statements and steps,
run by each engine's runner. `engines/sqlite/` holds the SQLite halves of those
modules; `engines/postgres/` the whole PostgreSQL engine.
"""
