"""The `threadkeeper` command: chat and look into the thread store from a terminal.

    threadkeeper serve                           the web chat on http://127.0.0.1:7860
    threadkeeper chat --user alice               a new conversation, streamed
    threadkeeper chat --thread ID --user alice   resume one
    threadkeeper threads --user alice            alice's threads, newest first
    threadkeeper show THREAD_ID                  one thread's transcript
    threadkeeper attach THREAD_ID sales.db       give a thread a database to query
    threadkeeper status                          where the database is, what it holds
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from checkpointers import ANY_USER, StoreError, ThreadNotFoundError, open_saver
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


def _serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from graph import Settings
    from ui.web import WebChat

    settings = Settings.from_env()
    with open_saver(args.db) as saver:
        web = WebChat(saver, settings=settings)
        print(f"threadkeeper web chat on http://{args.host}:{args.port}  (database {saver.path.resolve()})", flush=True)
        print(settings.describe_model(), flush=True)
        web.launch(args.host, args.port)
    return 0


def _attach(args: argparse.Namespace) -> int:
    with open_saver(args.db) as saver:
        user = ANY_USER if args.user is None else args.user
        attached = saver.attachments.attach(args.thread_id, args.file, user_id=user)
    tables = ", ".join(attached.tables) or "no tables"
    print(f"attached {attached.name} to thread {args.thread_id} ({attached.bytes:,} bytes; tables: {tables})")
    return 0


HELP_IN_CHAT = "commands: /retry  resend after an error · /attach FILE  add a database · /new  new thread · /quit"


def _chat(args: argparse.Namespace) -> int:
    from graph import ModelError, Settings, build_graph

    settings = Settings.from_env()
    with open_saver(args.db) as saver:
        app = build_graph(checkpointer=saver, settings=settings)
        thread_id = args.thread or str(uuid.uuid4())
        user = args.user
        print(settings.describe_model())
        if args.thread:
            try:
                saver.threads.get(thread_id, user_id=user)
            except ThreadNotFoundError:
                try:
                    saver.threads.get(thread_id)
                except ThreadNotFoundError:
                    print(f"new thread {thread_id}")
                else:
                    raise ThreadNotFoundError(thread_id) from None  # someone else's: not found
            else:
                history = app.get_state(_config(thread_id, user)).values.get("messages", [])
                print(f"resuming thread {thread_id} ({len(history)} messages)")
                for message in history[-6:]:
                    _print_message(message)
        else:
            print(f"new thread {thread_id}")
        print(HELP_IN_CHAT)
        pending = app.get_state(_config(thread_id, user)).next == ("model",)
        while True:
            try:
                line = input("\nyou> ")
            except EOFError:
                print()
                return 0
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                return 0
            if text == "/new":
                thread_id = str(uuid.uuid4())
                print(f"new thread {thread_id}")
                continue
            if text.startswith("/attach "):
                try:
                    attached = saver.attachments.attach(thread_id, text.split(" ", 1)[1].strip(), user_id=user)
                except (StoreError, ValueError) as exc:
                    print(f"error: {exc}")
                else:
                    print(f"attached {attached.name} (tables: {', '.join(attached.tables) or 'none'})")
                continue
            if text == "/retry" and not pending:
                print("nothing to retry")
                continue
            turn_input = None if text == "/retry" else {"messages": [{"role": "user", "content": text}]}
            try:
                _stream_reply(app, turn_input, _config(thread_id, user))
                pending = False
            except ModelError as exc:
                print(f"\nerror: {exc} (type /retry)")
                pending = True


def _config(thread_id: str, user: str | None) -> dict:
    configurable = {"thread_id": thread_id}
    if user is not None:
        configurable["user_id"] = user
    return {"configurable": configurable}


def _stream_reply(app, turn_input, config: dict) -> None:
    started = False
    for chunk, meta in app.stream(turn_input, config, stream_mode="messages"):
        if meta.get("langgraph_node") != "model" or not isinstance(chunk.content, str):
            if meta.get("langgraph_node") == "tools":
                print(f"\n  [{chunk.name}] {chunk.content[:200]}", flush=True)
            continue
        if not started:
            print("\nassistant> ", end="", flush=True)
            started = True
        print(chunk.content, end="", flush=True)
    print()


def _print_message(message) -> None:
    who = {"human": "you", "ai": "assistant", "tool": "tool"}.get(message.type, message.type)
    print(f"\n{who}> {message_text(message)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadkeeper", description="LangGraph chat threads that persist.")
    parser.add_argument("--db", metavar="URL", help="sqlite:///path/to/file.db (default $THREADKEEPER_DATABASE_URL or sqlite:///data/threadkeeper.db)")
    sub = parser.add_subparsers(dest="command", required=True)
    user_default = os.environ.get("THREADKEEPER_USER")
    p = sub.add_parser(
        "chat",
        help="chat in the terminal; replies stream, threads persist",
        epilog="example: threadkeeper chat --user alice   (then: threadkeeper chat --thread <id> --user alice)",
    )
    p.add_argument("--thread", metavar="ID", help="resume this thread (or start one with this id)")
    p.add_argument("--user", default=user_default, help="whose thread (default $THREADKEEPER_USER, else none)")
    p.set_defaults(run=_chat)
    p = sub.add_parser(
        "serve",
        help="start the web chat",
        epilog="example: threadkeeper serve --port 8080   (sign-in: THREADKEEPER_USERS=alice:secret)",
    )
    p.add_argument("--host", default=os.environ.get("THREADKEEPER_HOST", "127.0.0.1"), help="address to listen on (default 127.0.0.1, $THREADKEEPER_HOST)")
    p.add_argument("--port", type=int, default=int(os.environ.get("THREADKEEPER_PORT", "7860")), help="port (default 7860, $THREADKEEPER_PORT)")
    p.set_defaults(run=_serve)
    p = sub.add_parser(
        "attach",
        help="attach a SQLite database (or CSV) to a thread for the agent to query",
        epilog="example: threadkeeper attach 3f2c... sales.db --user alice",
    )
    p.add_argument("thread_id")
    p.add_argument("file", help="a .db/.sqlite/.sqlite3 file or a .csv file")
    p.add_argument("--user", default=user_default, help="the thread's owner (default: any)")
    p.set_defaults(run=_attach)
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
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
