"""The `threadkeeper` command: chat and look into the thread store from a terminal.

    threadkeeper serve                           the web chat on http://127.0.0.1:7860
    threadkeeper chat --user alice               a new conversation, streamed
    threadkeeper chat --thread ID --user alice   resume one (an unknown id is an error; --new starts one)
    threadkeeper threads [--user alice]          every user's threads (or alice's), newest first
    threadkeeper show THREAD_ID                  one thread's transcript
    threadkeeper attach THREAD_ID sales.db       give a thread a database to query
    threadkeeper status                          where the database is, what it holds
    threadkeeper stats [--days 7] [--json]       usage statistics (counts only, no text)
    threadkeeper sweep [--dry-run]               apply the retention policy now (for cron)
    threadkeeper delete-user alice               delete every thread of a user, leaving no trace
    threadkeeper rotate-key                      re-encrypt the store under a new key (keys from the environment)
    threadkeeper import-json DIR --user alice    import <session-uuid>.json chat histories as threads
    threadkeeper export --user alice -o a.json   a user's threads as one JSON document
    threadkeeper import a.json                   read such a document back
    threadkeeper import-checkpoints old.sqlite   copy the threads of a LangGraph SqliteSaver/PostgresSaver database

Commands that read or change what is stored never create a store: with no
file (or PostgreSQL schema) where the URL points they say so, instead of
answering from an empty one. Every command works on a `postgresql://` store
too (export and import move a user's threads between engines; rotate-key
re-seals either engine's store in place).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from checkpointers import ANY_USER, StoreError, ThreadNotFoundError, ThreadSaver, missing_store, open_saver
from checkpointers.retention import RetentionPolicy, Sweeper, SweepLoop, delete_user, recent_sweeps
from checkpointers.errors import ThreadExistsError, StoreUnavailableError
from checkpointers.threads import message_text
from checkpointers.url import ENV_VAR, is_postgres, resolve_url, sqlite_path
from ui.turns import ToolResult, TurnRefused, Turns, check_message


@contextmanager
def _existing_store(args: argparse.Namespace) -> Iterator[ThreadSaver]:
    """The store, for a command that needs what it holds: one is never created
    here, so a command run from another directory does not answer "no threads"
    from a new empty file."""
    missing = missing_store(args.db)
    if missing is not None:
        raise StoreUnavailableError(f"{missing} (set {ENV_VAR} or --db)")
    with open_saver(args.db) as saver:
        yield saver


def _status(args: argparse.Namespace) -> int:
    with _existing_store(args) as saver:
        for label, value in saver.maintenance.describe():
            print(f"{label:<14} {value}")
        with saver.maintenance.reading() as query:
            ((threads, users),) = query("SELECT count(*), count(DISTINCT user_id) FROM threads")
            ((checkpoints,),) = query("SELECT count(*) FROM checkpoints")
        print(f"threads        {threads:,} of {users:,} users")
        print(f"checkpoints    {checkpoints:,}")
        print(RetentionPolicy.from_env().describe())
        for sweep in recent_sweeps(saver, limit=1):
            kind = "dry run" if sweep["dry_run"] else f"{sweep['threads']:,} threads, {sweep['bytes']:,} bytes"
            print(f"last sweep     {sweep['finished_at'][:19].replace('T', ' ')} UTC ({kind})")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    policy = RetentionPolicy.from_env()
    if args.days is not None:
        policy = dataclasses.replace(policy, days=args.days)
    with _existing_store(args) as saver:
        print(policy.describe())
        report = Sweeper(saver, policy).sweep(dry_run=args.dry_run)
    print(report.describe())
    for thread_id in report.sample:
        print(f"  {thread_id}")
    if report.dry_run and report.threads > len(report.sample):
        print(f"  ... and {report.threads - len(report.sample):,} more")
    return 1 if report.skipped and "another sweep" in report.skipped else 0


def _delete_user(args: argparse.Namespace) -> int:
    with _existing_store(args) as saver:
        count = saver.threads.count(args.user)
        if count and not args.yes:
            answer = input(f"delete {count:,} threads of {args.user!r} and their attachments for good? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        deleted = delete_user(saver, args.user)
    print(f"deleted {deleted:,} threads of {args.user!r}; {saver.maintenance.erasure_note}")
    return 0


def _threads(args: argparse.Namespace) -> int:
    everyone = args.user is None
    with _existing_store(args) as saver:
        page = saver.threads.list(ANY_USER if everyone else args.user, limit=args.limit)
        print(f"store: {saver.location}")
    if not page.threads:
        print("no threads" if everyone else f"no threads for user {args.user!r}")
        return 0
    owner = f"{'OWNER':<16} " if everyone else ""
    print(f"{'THREAD':<38} {owner}{'UPDATED (UTC)':<19} {'MSGS':>5}  TITLE")
    for t in page.threads:
        pin = "* " if t.pinned else ""
        owner = f"{t.user_id or '-':<16} " if everyone else ""
        print(
            f"{t.thread_id:<38} {owner}{t.updated_at[:19].replace('T', ' '):<19} {t.message_count:>5}  "
            f"{pin}{t.title or '(untitled)'}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    with _existing_store(args) as saver:
        info = saver.threads.get(args.thread_id, user_id=ANY_USER if args.user is None else args.user)
        checkpoint = saver.get_tuple({"configurable": {"thread_id": args.thread_id}})
        print(f"store: {saver.location}")
    print(f"# {info.title or '(untitled)'}  ({info.message_count} messages, user {info.user_id or '-'})")
    messages = (checkpoint.checkpoint["channel_values"].get("messages") if checkpoint else None) or []
    for message in messages:
        print(f"\n[{message.type}] {message_text(message)}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from graph import Settings
    from ui import logs
    from ui.admin import AdminAccess
    from ui.app import build_app, grace_s, serve
    from ui.web import WebChat

    logs.configure()
    settings = Settings.from_env()
    policy = RetentionPolicy.from_env()
    grace = grace_s()
    with open_saver(args.db) as saver:
        web = WebChat(saver, settings=settings)
        access = AdminAccess.from_env(web.identity.sign_in)
        sweeping = SweepLoop(saver, policy).start()
        print(f"threadkeeper web chat on http://{args.host}:{args.port}  (database {saver.location})", flush=True)
        print(settings.describe_model(), flush=True)
        print(policy.describe(), flush=True)
        logging.getLogger("threadkeeper").info(logs.settings_line({
            "host": args.host, "port": args.port, "database": saver.location,
            "model": settings.model if settings.model_connected else "offline",
            "sign_in": "on" if web.identity.sign_in else "off",
            "admin_page": "on" if access.enabled else "off",
            "retention_days": f"{policy.days:g}", "log_format": logs.log_format(),
            "shutdown_grace_s": f"{grace:g}",
        }))
        try:
            serve(build_app(web, access=access, on_stop=[sweeping.stop], shutdown_grace_s=grace), args.host, args.port)
        finally:
            sweeping.stop()
    logging.getLogger("threadkeeper").info("stopped: pending writes committed, store closed")
    return 0


def _stats(args: argparse.Namespace) -> int:
    import json

    from checkpointers import stats
    from ui.admin import parse_days

    days = parse_days(args.days)
    with _existing_store(args) as saver:
        figures = stats.usage(saver, days)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    t, s, period = figures["totals"], figures["store"], figures["period"]
    print(f"store          {s['threads']:,} threads, {s['database_bytes'] / 1e6:,.2f} MB on disk, "
          f"{s['attachments']:,} attachments ({s['attachment_bytes'] / 1e6:,.2f} MB)")
    span = "all days" if period["days"] is None else f"{period['days']} days"
    print(f"period         {period['first_day'] or '-'} to {period['last_day']} UTC ({span})")
    print(f"messages       {t['messages']:,} ({t['human_messages']:,} human, {t['ai_messages']:,} AI, "
          f"{t['tool_messages']:,} tool, {t['other_messages']:,} other)")
    print(f"threads        {t['threads_created']:,} started, {t['threads_deleted']:,} deleted by users, "
          f"{t['threads_swept']:,} swept in {t['sweeps']:,} sweeps")
    print(f"active users   {t['active_users']:,} in the period; {t['active_users_7d']:,} in 7 days, "
          f"{t['active_users_30d']:,} in 30 days")
    print(f"tokens         {t['tokens_in']:,} in, {t['tokens_out']:,} out (reported by the model); "
          f"about {t['estimated_tokens_in']:,} in, {t['estimated_tokens_out']:,} out (estimate)")
    print(f"attachments    {t['attachments_added']:,} added")
    if figures["days"]:
        print()
        print(f"{'DAY':<11} {'MSGS':>7} {'HUMAN':>7} {'AI':>7} {'TOOL':>6} {'USERS':>6} {'THREADS':>8} "
              f"{'TOKENS IN':>10} {'OUT':>10} {'DB MB':>9}")
        for d in figures["days"]:
            tin = d["tokens_in"] or d["estimated_tokens_in"]
            tout = d["tokens_out"] or d["estimated_tokens_out"]
            approx = "" if d["tokens_in"] or d["tokens_out"] else "~"
            size = "-" if d["database_bytes"] is None else f"{d['database_bytes'] / 1e6:,.2f}"
            print(f"{d['day']:<11} {d['messages']:>7,} {d['human_messages']:>7,} {d['ai_messages']:>7,} "
                  f"{d['tool_messages']:>6,} {d['active_users']:>6,} {d['threads_created']:>8,} "
                  f"{approx + format(tin, ','):>10} {approx + format(tout, ','):>10} {size:>9}")
    if figures["users"]:
        print()
        print(f"{'USER':<24} {'MSGS':>7} {'THREADS':>8} {'DAYS':>5}")
        for u in figures["users"]:
            print(f"{u['user_id'][:24]:<24} {u['messages']:>7,} {u['threads_created']:>8,} {u['active_days']:>5,}")
    return 0


def _attach(args: argparse.Namespace) -> int:
    with _existing_store(args) as saver:
        user = ANY_USER if args.user is None else args.user
        saver.threads.get(args.thread_id, user_id=user)  # a mistyped id is an error, not a new thread
        attached = saver.attachments.attach(args.thread_id, args.file, user_id=user)
    tables = ", ".join(attached.tables) or "no tables"
    print(f"attached {attached.name} to thread {args.thread_id} ({attached.bytes:,} bytes; tables: {tables})")
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    from checkpointers.encryption import KEY_VARIABLE, NEW_KEY_VARIABLE
    from checkpointers.errors import EncryptionKeyError

    url = resolve_url(args.db)
    current = os.environ.get(KEY_VARIABLE) or None
    new = os.environ.get(NEW_KEY_VARIABLE) or None
    if args.decrypt and new is not None:
        raise EncryptionKeyError(f"--decrypt stores the data unencrypted: unset {NEW_KEY_VARIABLE}, or leave out --decrypt")
    if not args.decrypt and new is None:
        raise EncryptionKeyError(f"set {NEW_KEY_VARIABLE} to the new key (or pass --decrypt to remove encryption)")
    if is_postgres(url):
        from checkpointers.engines.postgres.connection import redacted
        from checkpointers.engines.postgres.key_rotation import rotate_key

        missing = missing_store(url)
        if missing is not None:
            raise StoreUnavailableError(f"{missing} (set {ENV_VAR} or --db)")
        store, where = url, redacted(url)
    else:
        from checkpointers.engines.sqlite.key_rotation import rotate_key

        store = where = sqlite_path(url).resolve()
        if not store.exists():
            raise StoreUnavailableError(f"no store at {store} (set {ENV_VAR} or --db)")
    before = "unencrypted" if current is None else "encrypted"
    after = "unencrypted" if new is None else "encrypted with the new key"
    print(f"rotating the key of {where}: {before} -> {after}", flush=True)

    last = [0.0]

    def progress(done: int, total: int) -> None:
        if done == total or time.monotonic() - last[0] >= 1.0:  # a line a second at most
            last[0] = time.monotonic()
            print(f"  {done:,} of {total:,} threads", flush=True)

    summary = rotate_key(store, current, new, batch_rows=args.batch_rows, progress=progress)
    resumed = " (finished an interrupted run)" if summary.resumed else ""
    print(
        f"done{resumed}: {summary.threads:,} threads, {summary.values:,} values and "
        f"{summary.attachments:,} attachments rewritten in {summary.seconds:.1f} s"
    )
    if summary.encrypted:
        print(f"start threadkeeper with {KEY_VARIABLE} set to the new key (and {NEW_KEY_VARIABLE} unset)")
    else:
        print(f"the store is no longer encrypted: start threadkeeper with {KEY_VARIABLE} unset")
    return 0


HELP_IN_CHAT = "commands: /retry  resend after an error · /attach FILE  add a database · /new  new thread · /quit"


def _chat(args: argparse.Namespace) -> int:
    from graph import ModelError, Settings, build_graph

    settings = Settings.from_env()
    resuming = args.thread is not None and not args.new
    with _existing_store(args) if resuming else open_saver(args.db) as saver:
        thread_id = args.thread or str(uuid.uuid4())
        user = args.user
        if resuming:
            saver.threads.get(thread_id, user_id=user)  # unknown (a typo?) or someone else's: not found
        elif args.thread is not None:
            try:
                saver.threads.get(thread_id)
            except ThreadNotFoundError:
                pass
            else:
                raise ThreadExistsError(f"a thread with id {thread_id!r} exists already: leave out --new to resume it")
        app = build_graph(checkpointer=saver, settings=settings)
        turns = Turns(saver, app)
        print(settings.describe_model())
        if resuming:
            history = turns.messages(thread_id, user)
            print(f"resuming thread {thread_id} ({len(history)} messages)")
            for message in history[-6:]:
                _print_message(message)
        else:
            print(f"new thread {thread_id}")
        print(HELP_IN_CHAT)
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
            try:
                if text == "/retry":
                    turns.check_retry(thread_id, user)
                else:
                    check_message(text)
                    turns.claim(thread_id, user)
            except (TurnRefused, StoreError) as exc:
                print(f"error: {exc}")
                continue
            turn_input = turns.input(None if text == "/retry" else text)
            try:
                _stream_reply(turns.reply_sync(turn_input, turns.config(thread_id, user)))
            except (ModelError, StoreUnavailableError) as exc:
                print(f"\nerror: {exc} (type /retry)")


def _stream_reply(parts) -> None:
    started = False
    for part in parts:
        if isinstance(part, ToolResult):
            print(f"\n  [{part.message.name}] {message_text(part.message)[:200]}", flush=True)
            continue
        if not started:
            print("\nassistant> ", end="", flush=True)
            started = True
        print(part.text, end="", flush=True)
    print()


def _print_message(message) -> None:
    who = {"human": "you", "ai": "assistant", "tool": "tool"}.get(message.type, message.type)
    print(f"\n{who}> {message_text(message)}")


def _import_json(args: argparse.Namespace) -> int:
    from checkpointers.importer import import_json_folder

    with open_saver(args.db) as saver:
        summary = import_json_folder(saver, args.folder, user_id=args.user, report=print)
    print(summary.describe())
    return 1 if summary.failed else 0


def _import_checkpoints(args: argparse.Namespace) -> int:
    from checkpointers.stock_import import CACHE_MESSAGES, import_checkpoints, metadata_path, open_stock_source

    metadata_path(args.user_key)  # a bad key is refused before anything is opened
    since = _since(args.since) if args.since else None
    with open_stock_source(args.source) as source, open_saver(args.db, cache_messages=CACHE_MESSAGES) as saver:
        total = source.count_threads()
        print(f"importing {total:,} threads from the {source.description} into {saver.location}", flush=True)
        last = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            if done < total and time.monotonic() - last[0] >= 5.0:  # a line every 5 seconds at most
                last[0] = time.monotonic()
                print(f"  {done:,} of {total:,} threads", flush=True)

        summary = import_checkpoints(
            saver, source, user_key=args.user_key, since=since, report=print, progress=progress
        )
    print(summary.describe())
    return 1 if summary.failed else 0


def _since(text: str):
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r} is not a date: write it as 2026-01-31 or 2026-01-31T09:00") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _export(args: argparse.Namespace) -> int:
    import json

    from checkpointers.transfer import export_user, summarize

    if not args.user:
        raise ValueError("export needs --user: whose threads to export")
    with _existing_store(args) as saver:
        document = export_user(saver, args.user)
    text = json.dumps(document, ensure_ascii=False, indent=1) + "\n"
    counts = summarize(document)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        where, note = "standard output", sys.stderr
    else:
        staging = f"{args.output}.part"
        # A user's whole history: readable by its owner only.
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(staging, args.output)
        where, note = args.output, sys.stdout
    print(
        f"exported {counts.threads:,} threads of {args.user!r} ({counts.messages:,} messages, "
        f"{counts.attachments:,} attachments) to {where}",
        file=note,
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from checkpointers.transfer import import_document, read_document

    source = Path(args.file)
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{source.name} cannot be imported: it is not a threadkeeper export (not UTF-8 text)") from None
    except OSError as exc:
        raise ValueError(f"cannot read {source}: {exc.strerror or exc}") from None
    document = read_document(text, source.name)
    owner = args.user if args.user is not None else document.user_id
    with open_saver(args.db) as saver:
        summary = import_document(saver, document, user_id=owner, replace=args.replace, report=print)
    print(
        f"imported {summary.threads:,} threads ({summary.messages:,} messages, {summary.attachments:,} attachments) "
        f"for {owner!r}, skipped {summary.skipped:,}, failed {summary.failed:,}"
    )
    return 1 if summary.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadkeeper", description="LangGraph chat threads that persist.")
    parser.add_argument(
        "--db", metavar="URL",
        help="sqlite:///path/to/file.db or postgresql://user@host:5432/db (default $THREADKEEPER_DATABASE_URL, "
        "else sqlite:///data/threadkeeper.db in the current directory); only chat, serve and the imports create it",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    user_default = os.environ.get("THREADKEEPER_USER")
    p = sub.add_parser(
        "chat",
        help="chat in the terminal; replies stream, threads persist",
        epilog="example: threadkeeper chat --user alice   (then: threadkeeper chat --thread <id> --user alice)",
    )
    p.add_argument("--thread", metavar="ID", help="resume this thread; an id that is not in the store is an error")
    p.add_argument("--new", action="store_true", help="start a new thread (the default without --thread; with it, under that id)")
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
    p = sub.add_parser(
        "stats",
        help="usage statistics: messages, threads, active users, tokens, sweeps (counts only, no text)",
        description="Prints the usage figures the store keeps by day (UTC), as the admin page and "
        "GET /admin/stats show them. Users appear by id, with counts only; no message text or titles.",
        epilog="example: threadkeeper stats --days 7   (machine-readable: threadkeeper stats --json)",
    )
    p.add_argument("--days", metavar="N", help="the last N days, today included (default: all)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON (the /admin/stats document)")
    p.set_defaults(run=_stats)
    p = sub.add_parser("status", help="show the database and what it holds", epilog="example: threadkeeper status")
    p.set_defaults(run=_status)
    p = sub.add_parser(
        "threads",
        help="list threads, newest first: every user's, or one user's",
        description="Lists the threads of the store, most recently updated first. Without --user it lists every "
        "user's, with an OWNER column ('-' for a thread without one), as show and attach act on any user's thread.",
        epilog="example: threadkeeper threads --user alice   (everyone's: threadkeeper threads)",
    )
    p.add_argument("--user", help="only this user's threads (default: every user's)")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.set_defaults(run=_threads)
    p = sub.add_parser(
        "rotate-key",
        help="re-encrypt the store under a new key (or encrypt or decrypt it); resumable",
        description="Re-encrypt every thread, title, search entry and attachment under a new key. "
        "Keys come from the environment, never the command line: the current key from "
        "THREADKEEPER_ENCRYPTION_KEY (unset if the store is not encrypted yet) and the new one from "
        "THREADKEEPER_NEW_ENCRYPTION_KEY. On SQLite, stop threadkeeper first; on PostgreSQL its processes may run, "
        "and refuse to write until they are restarted with the new key. If it is interrupted, run it again "
        "with the same keys: it continues where it stopped; the store does not open until it has finished.",
        epilog="example: THREADKEEPER_ENCRYPTION_KEY=$OLD THREADKEEPER_NEW_ENCRYPTION_KEY=$NEW threadkeeper rotate-key",
    )
    p.add_argument("--decrypt", action="store_true", help="remove encryption instead (THREADKEEPER_NEW_ENCRYPTION_KEY unset)")
    p.add_argument("--batch-rows", type=int, default=2000, metavar="N", help="rows per transaction (default 2000)")
    p.set_defaults(run=_rotate_key)
    p = sub.add_parser("show", help="print one thread's transcript", epilog="example: threadkeeper show 3f2c...")
    p.add_argument("thread_id")
    p.add_argument("--user", help="only show it if it belongs to this user")
    p.set_defaults(run=_show)
    p = sub.add_parser(
        "sweep",
        help="delete (or compact) threads older than the retention window, now",
        description="Apply the retention policy (THREADKEEPER_RETENTION_DAYS, langgraph.json checkpointer.ttl) once. "
        "Safe to run from cron beside a running server: only one sweep per database runs at a time.",
        epilog="example: threadkeeper sweep --dry-run   (cron: 0 3 * * * threadkeeper sweep)",
    )
    p.add_argument("--dry-run", action="store_true", help="only count (and list some of) the threads that would go")
    p.add_argument("--days", type=float, help="override the retention window for this run")
    p.set_defaults(run=_sweep)
    p = sub.add_parser(
        "delete-user",
        help="delete every thread of a user, with attachments, leaving no trace",
        epilog="example: threadkeeper delete-user alice --yes",
    )
    p.add_argument("user", help="the user id (the sign-in name, or an anonymous id)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(run=_delete_user)
    p = sub.add_parser(
        "import-json",
        help="import a folder of <session-uuid>.json chat histories (and their .db files) as threads",
        description="Each <session-uuid>.json file (LangChain messages_to_dict format) becomes the thread of that id, "
        "titled by its first human message and dated by the file; a <session-uuid>.db beside it is attached. "
        "Sessions imported before are skipped, so running it again adds nothing. Bad files are reported by "
        "name and skipped; the exit status is 1 if any failed.",
        epilog="example: threadkeeper import-json ./exported-sessions --user alice",
    )
    p.add_argument("folder", help="the folder holding the .json (and .db) files")
    p.add_argument("--user", default=user_default, help="who owns the imported threads (default $THREADKEEPER_USER, else none)")
    p.set_defaults(run=_import_json)
    p = sub.add_parser(
        "import-checkpoints",
        help="copy every thread of a LangGraph SqliteSaver or PostgresSaver database into the store",
        description="Copies every thread of a database written by LangGraph's stock SqliteSaver or PostgresSaver: "
        "every checkpoint, pending write and metadata, so history and time travel work as before and each "
        "thread carries on here. Each thread is listed for its owner (a metadata key of its checkpoints), "
        "titled by its first human message and dated by its checkpoints. The source is read through "
        "langgraph-checkpoint-sqlite / -postgres on a read-only connection and never changed. Running it "
        "again adds nothing; an interrupted run is finished by the next one.",
        epilog="example: threadkeeper import-checkpoints sqlite:///old/checkpoints.sqlite --since 2026-01-01   "
        "(or: postgresql://app@db.internal/langgraph --user-key metadata.owner)",
    )
    p.add_argument("source", metavar="URL", help="sqlite:///path/to/checkpoints.sqlite (or a path), or postgresql://...")
    p.add_argument(
        "--user-key", default="metadata.user_id", metavar="KEY",
        help="the checkpoint metadata key that names each thread's owner (default metadata.user_id); "
        "threads whose checkpoints lack it have no owner",
    )
    p.add_argument("--since", metavar="DATE", help="only threads last updated at or after DATE (UTC unless it says)")
    p.set_defaults(run=_import_checkpoints)
    p = sub.add_parser(
        "export",
        help="write every thread of a user (messages, titles, metadata, attachments) as one JSON document",
        epilog="example: threadkeeper export --user alice --output alice.json   (read back: threadkeeper import alice.json)",
    )
    p.add_argument("--user", default=user_default, help="whose threads (default $THREADKEEPER_USER)")
    p.add_argument("--output", "-o", metavar="FILE", help="where to write it (default: standard output)")
    p.set_defaults(run=_export)
    p = sub.add_parser(
        "import",
        help="read back a document written by `threadkeeper export`",
        description="Restores every thread of the document. A thread whose id exists already is skipped and "
        "reported (with --replace, the same user's thread is replaced). A damaged document is refused "
        "before anything is written.",
        epilog="example: threadkeeper import alice.json   (or: --user alice2 to give the threads to another user)",
    )
    p.add_argument("file", help="the JSON document")
    p.add_argument("--user", help="who owns the imported threads (default: the user in the document)")
    p.add_argument("--replace", action="store_true", help="replace threads of the same id and user")
    p.set_defaults(run=_import)
    return parser


def _shell_argument(arg: str) -> bool:
    """Whether `arg` is something a shell can pass: no NUL, and encodable as a file name.
    A program calling `main()` can pass anything; refuse the rest in one line."""
    try:
        os.fsencode(arg)
    except UnicodeEncodeError:
        return False
    return "\x00" not in arg


def main(argv: list[str] | None = None) -> int:
    if not all(_shell_argument(arg) for arg in (sys.argv[1:] if argv is None else argv)):
        print("threadkeeper: an argument holds a NUL character or text that is not valid Unicode", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (StoreError, ValueError) as exc:
        # One line, whatever the message quotes (a file name may hold a newline).
        print(f"threadkeeper: {exc}".replace("\n", "\\n").replace("\r", "\\r"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
