"""The `threadkeeper` command: look into the thread store from a terminal.

    threadkeeper status                  where the database is, what it holds
    threadkeeper threads --user alice    alice's threads, newest first
    threadkeeper show THREAD_ID          one thread's transcript
"""

from __future__ import annotations

import argparse
import sys

from checkpointers import ANY_USER, StoreError, open_saver
from checkpointers.schema import current_version
from checkpointers.threads import message_text


def _status(args: argparse.Namespace) -> int:
    with open_saver(args.db) as saver:
        conn = saver.conn
        print(f"database       {saver.path.resolve()}")
        print(f"schema version {current_version(conn)}")
        (threads,) = conn.execute("SELECT count(*) FROM threads").fetchone()
        (users,) = conn.execute("SELECT count(DISTINCT user_id) FROM threads").fetchone()
        (checkpoints,) = conn.execute("SELECT count(*) FROM checkpoints").fetchone()
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
        print(f"threads        {threads:,} of {users:,} users")
        print(f"checkpoints    {checkpoints:,}")
        print(f"file           {pages * size / 1e6:,.2f} MB ({free:,} free pages)")
    return 0


def _threads(args: argparse.Namespace) -> int:
    with open_saver(args.db) as saver:
        page = saver.threads.list(args.user, limit=args.limit)
    if not page.threads:
        print(f"no threads for user {args.user!r}" if args.user else "no threads without a user")
        return 0
    print(f"{'THREAD':<38} {'UPDATED (UTC)':<19} {'MSGS':>5}  TITLE")
    for t in page.threads:
        pin = "* " if t.pinned else ""
        print(f"{t.thread_id:<38} {t.updated_at[:19].replace('T', ' '):<19} {t.message_count:>5}  {pin}{t.title or '(untitled)'}")
    return 0


def _show(args: argparse.Namespace) -> int:
    with open_saver(args.db) as saver:
        info = saver.threads.get(args.thread_id, user_id=ANY_USER if args.user is None else args.user)
        checkpoint = saver.get_tuple({"configurable": {"thread_id": args.thread_id}})
    print(f"# {info.title or '(untitled)'}  ({info.message_count} messages, user {info.user_id or '-'})")
    messages = (checkpoint.checkpoint["channel_values"].get("messages") if checkpoint else None) or []
    for message in messages:
        print(f"\n[{message.type}] {message_text(message)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadkeeper", description="LangGraph chat threads that persist.")
    parser.add_argument("--db", metavar="URL", help="sqlite:///path/to/file.db (default $THREADKEEPER_DATABASE_URL or sqlite:///data/threadkeeper.db)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="show the database and what it holds", epilog="example: threadkeeper status")
    p.set_defaults(run=_status)
    p = sub.add_parser("threads", help="list a user's threads, newest first", epilog="example: threadkeeper threads --user alice")
    p.add_argument("--user", help="whose threads (default: threads without a user)")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.set_defaults(run=_threads)
    p = sub.add_parser("show", help="print one thread's transcript", epilog="example: threadkeeper show 3f2c...")
    p.add_argument("thread_id")
    p.add_argument("--user", help="only show it if it belongs to this user")
    p.set_defaults(run=_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (StoreError, ValueError) as exc:
        print(f"threadkeeper: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
