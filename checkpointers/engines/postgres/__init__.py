"""The PostgreSQL engine: `THREADKEEPER_DATABASE_URL=postgresql://user@host:5432/db`.

Needs `pip install threadkeeper[postgres]` (psycopg 3 and psycopg_pool).
"""

from checkpointers.engines.postgres.saver import (
    PostgresThreadSaver,
    open_async_postgres_saver,
    open_postgres_saver,
)

__all__ = ["PostgresThreadSaver", "open_async_postgres_saver", "open_postgres_saver"]
