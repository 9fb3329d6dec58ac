"""Retention sweeps and erasure: expired threads go entirely, nothing else does, and deleted text is nowhere on disk."""

from __future__ import annotations

import json
import re
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from bench.agent import InstantModel
from checkpointers import ANY_USER, ThreadNotFoundError, open_saver
from graph import Settings, build_graph
from checkpointers.retention import (
    RetentionPolicy,
    RetentionSettingError,
    Sweeper,
    SweepLoop,
    delete_user,
    recent_sweeps,
)
from tests.chat import echo_graph
from ui.cli import main as cli


def _say(saver, thread_id, text="hello", user="alice"):
    echo_graph(saver, "noted: ").invoke({"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": thread_id, "user_id": user}})


def _updated(saver, thread_id) -> datetime:
    return datetime.fromisoformat(saver.threads.get(thread_id).updated_at)


def _clock_at(moment: datetime):
    return lambda: moment


def _ids(saver) -> set[str]:
    return {t.thread_id for t in saver.threads.list(ANY_USER, limit=500).threads}


def _rows_of(saver, table: str) -> int:
    return saver.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _disk_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


POLICY = RetentionPolicy(days=30, batch_size=2)


def test_threads_just_outside_the_window_go_and_just_inside_stay(store):
    saver = store
    _say(saver, "old")
    _say(saver, "young")
    # The window ends exactly at "young"'s last update: "old" is older, "young" is not.
    clock = _clock_at(_updated(saver, "young") + timedelta(days=30))
    report = Sweeper(saver, POLICY, clock=clock).sweep()
    assert report.threads == 1 and not report.skipped
    assert _ids(saver) == {"young"}
    # A microsecond later "young" is outside the window too.
    later = _clock_at(_updated(saver, "young") + timedelta(days=30, microseconds=1))
    assert Sweeper(saver, POLICY, clock=later).sweep().threads == 1
    assert _ids(saver) == set()


def test_a_sweep_deletes_everything_of_a_thread_and_nothing_of_others(saver, db_path, tmp_path):
    attached = tmp_path / "facts.csv"
    attached.write_text("fact\nkumquats are small\n")
    for name in ("a", "b", "c"):
        _say(saver, name, f"thread {name} mentions kumquat")
    saver.attachments.attach("a", attached, user_id="alice")
    file_a = saver.attachments.path("a")
    _say(saver, "keep", "kept kumquat")
    clock = _clock_at(_updated(saver, "c") + timedelta(days=30, microseconds=1))
    report = Sweeper(saver, POLICY, clock=clock).sweep()
    assert report.threads == 3 and report.bytes > 0
    assert _ids(saver) == {"keep"}
    keep_key = saver.conn.execute("SELECT thread_key FROM threads WHERE thread_id = 'keep'").fetchone()[0]
    for table in ("checkpoints", "channel_values", "writes", "attachments"):
        assert saver.conn.execute(f"SELECT count(*) FROM {table} WHERE thread_key != ?", (keep_key,)).fetchone()[0] == 0
    assert not file_a.exists()
    assert [t.thread_id for t in saver.threads.search("alice", "kumquat").threads] == ["keep"]
    saver.conn.execute("INSERT INTO message_search (message_search, rank) VALUES ('integrity-check', 0)")


def test_pinned_threads_are_exempt(store):
    saver = store
    _say(saver, "pinned")
    _say(saver, "plain")
    saver.threads.pin("pinned")
    clock = _clock_at(datetime.now(timezone.utc) + timedelta(days=365))
    assert Sweeper(saver, POLICY, clock=clock).sweep().threads == 1
    assert _ids(saver) == {"pinned"}


def test_a_thread_written_during_the_sweep_is_not_deleted(store):
    saver = store
    _say(saver, "busy")
    _say(saver, "idle")
    clock = _clock_at(_updated(saver, "idle") + timedelta(days=30, microseconds=1))
    sweeper = Sweeper(saver, POLICY, clock=clock)
    cutoff = sweeper.cutoff()
    chosen = [thread_id for _, thread_id in sweeper.expired(cutoff, 10)]
    assert chosen == ["busy", "idle"]
    _say(saver, "busy", "a message arriving mid-sweep")  # updated_at moves past the cutoff
    assert sweeper.expire(chosen, cutoff) == (1, 0)
    assert _ids(saver) == {"busy"}
    assert saver.read_messages("busy").total == 4


def test_only_one_sweeper_works_at_a_time(store_url):
    with open_saver(store_url) as first, open_saver(store_url) as second:
        _say(first, "old")
        clock = _clock_at(datetime.now(timezone.utc) + timedelta(days=31))
        holder = Sweeper(first, POLICY, clock=clock)
        assert holder._acquire()
        report = Sweeper(second, POLICY, clock=clock).sweep()
        assert report.skipped == "another sweep of this database is running" and report.threads == 0
        assert _ids(second) == {"old"}
        holder._release()
        assert Sweeper(second, POLICY, clock=clock).sweep().threads == 1


def test_sweepers_started_at_once_in_several_processes_share_the_work_once(store_url):
    with open_saver(store_url) as saver:
        for n in range(12):
            _say(saver, f"t{n}")
    clock = _clock_at(datetime.now(timezone.utc) + timedelta(days=31))
    reports = []
    barrier = threading.Barrier(3)

    def run(saver):
        barrier.wait()
        reports.append(Sweeper(saver, RetentionPolicy(days=30, batch_size=1), clock=clock, pause_s=0.05).sweep())

    with ExitStack() as stack:
        savers = [stack.enter_context(open_saver(store_url)) for _ in range(3)]
        workers = [threading.Thread(target=run, args=(s,)) for s in savers]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert sum(r.threads for r in reports) == 12
        assert sum(1 for r in reports if r.threads) == 1
        assert sum(1 for r in reports if r.skipped) >= 1
        assert _ids(savers[0]) == set()


def test_keep_latest_compacts_history_and_leaves_a_readable_thread(store):
    saver = store
    for n in range(4):
        _say(saver, "long", f"message {n}")
    before = echo_graph(saver, "noted: ").get_state({"configurable": {"thread_id": "long"}}).values
    clock = _clock_at(_updated(saver, "long") + timedelta(days=31))
    policy = RetentionPolicy(days=30, strategy="keep_latest")
    assert Sweeper(saver, policy, clock=clock).sweep().threads == 1
    assert len(list(saver.list({"configurable": {"thread_id": "long"}}))) == 1
    state = echo_graph(saver, "noted: ").get_state({"configurable": {"thread_id": "long"}})
    assert state.values == before
    assert [t.thread_id for t in saver.threads.search("alice", "message").threads] == ["long"]
    assert Sweeper(saver, policy, clock=clock).sweep().threads == 0  # nothing left to compact
    _say(saver, "long", "and the conversation goes on")
    assert len(echo_graph(saver, "noted: ").get_state({"configurable": {"thread_id": "long"}}).values["messages"]) == 10


def test_the_file_does_not_grow_over_ten_create_and_expire_cycles(saver, db_path):
    sizes = []
    for cycle in range(10):
        for n in range(30):
            _say(saver, f"c{cycle}-{n}", "some words to store " * 20)
        clock = _clock_at(datetime.now(timezone.utc) + timedelta(days=31))
        assert Sweeper(saver, RetentionPolicy(days=30), clock=clock).sweep().threads == 30
        sizes.append(db_path.stat().st_size)
    assert sizes[-1] <= sizes[0] * 1.1, sizes


def test_dry_run_counts_without_deleting_and_every_sweep_is_recorded(store):
    saver = store
    for n in range(3):
        _say(saver, f"t{n}")
    clock = _clock_at(datetime.now(timezone.utc) + timedelta(days=31))
    dry = Sweeper(saver, POLICY, clock=clock).sweep(dry_run=True)
    assert dry.threads == 3 and dry.sample == ("t0", "t1", "t2") and len(_ids(saver)) == 3
    real = Sweeper(saver, POLICY, clock=clock).sweep()
    recorded = recent_sweeps(saver)
    assert [(r["threads"], bool(r["dry_run"])) for r in recorded] == [(3, False), (3, True)]
    assert recorded[0]["bytes"] == real.bytes


def test_zero_days_keeps_everything(store):
    saver = store
    _say(saver, "t")
    clock = _clock_at(datetime.now(timezone.utc) + timedelta(days=3650))
    report = Sweeper(saver, RetentionPolicy(days=0), clock=clock).sweep()
    assert report.skipped and _ids(saver) == {"t"}


def test_settings_come_from_langgraph_json_and_the_environment_overrides(tmp_path, monkeypatch):
    config = tmp_path / "langgraph.json"
    config.write_text(json.dumps({"checkpointer": {"path": "x:y", "ttl": {
        "strategy": "keep_latest", "default_ttl": 1440 * 7, "sweep_interval_minutes": 15, "sweep_limit": 50}}}))
    policy = RetentionPolicy.from_env({}, config)
    assert policy == RetentionPolicy(days=7, strategy="keep_latest", interval_minutes=15, sweep_limit=50)
    env = {"THREADKEEPER_RETENTION_DAYS": "90", "THREADKEEPER_RETENTION_STRATEGY": "delete", "THREADKEEPER_SWEEP_BATCH": "20"}
    assert RetentionPolicy.from_env(env, config) == RetentionPolicy(
        days=90, strategy="delete", interval_minutes=15, sweep_limit=50, batch_size=20
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no langgraph.json here: the defaults
    assert RetentionPolicy.from_env({}) == RetentionPolicy(
        days=30, strategy="delete", interval_minutes=60, sweep_limit=10_000, batch_size=50
    )
    with pytest.raises(RetentionSettingError, match="does not exist"):
        RetentionPolicy.from_env({"THREADKEEPER_LANGGRAPH_JSON": str(tmp_path / "absent.json")})
    for bad, message in (
        ({"THREADKEEPER_RETENTION_DAYS": "a month"}, "THREADKEEPER_RETENTION_DAYS must be a float"),
        ({"THREADKEEPER_RETENTION_DAYS": "-1"}, "0 (keep forever) or a number up to 36,500"),
        ({"THREADKEEPER_RETENTION_DAYS": "inf"}, "or a number up to 36,500, not inf"),  # OverflowError before
        ({"THREADKEEPER_RETENTION_DAYS": "1e6"}, "or a number up to 36,500"),
        ({"THREADKEEPER_RETENTION_DAYS": "nan"}, "or a number up to 36,500, not nan"),
        ({"THREADKEEPER_SWEEP_INTERVAL_MINUTES": "inf"}, "the sweep interval must be a number of minutes"),
        ({"THREADKEEPER_RETENTION_STRATEGY": "archive"}, "'delete' or 'keep_latest'"),
        ({"THREADKEEPER_SWEEP_BATCH": "0"}, "between 1 and 10000"),
    ):
        with pytest.raises(RetentionSettingError, match=re.escape(message)):
            RetentionPolicy.from_env(bad, config)
    config.write_text("{not json")
    with pytest.raises(RetentionSettingError, match="cannot read checkpointer.ttl"):
        RetentionPolicy.from_env({}, config)


def test_the_projects_langgraph_json_gives_the_documented_default():
    root = Path(__file__).resolve().parent.parent
    assert RetentionPolicy.from_env({}, root / "langgraph.json") == RetentionPolicy(days=30, sweep_limit=10_000)


def test_the_background_loop_sweeps_in_the_background(store_url):
    with open_saver(store_url) as saver:
        _say(saver, "stale")
        loop = SweepLoop(saver, RetentionPolicy(days=1e-9, interval_minutes=60)).start()
        try:
            deadline = time.monotonic() + 30
            while _ids(saver) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _ids(saver) == set()
        finally:
            loop.stop()
        assert recent_sweeps(saver)[0]["threads"] == 1


def _marker_test(saver, db_path: Path, erase, remaining: set[str]) -> None:
    marker = "zqx-erasure-marker-7731"
    _say(saver, "secret", f"my secret is {marker}")
    _say(saver, "other", "nothing to see")
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert marker.encode() in _disk_bytes(db_path.parent)  # the check below can fail
    erase()
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert marker.encode() not in _disk_bytes(db_path.parent)
    assert _ids(saver) == remaining


def test_a_deleted_thread_leaves_no_trace_in_the_file_the_wal_or_the_data_directory(saver, db_path):
    _marker_test(saver, db_path, lambda: saver.delete_thread("secret"), {"other"})


def test_a_swept_thread_leaves_no_trace(saver, db_path):
    def sweep():
        clock = _clock_at(_updated(saver, "secret") + timedelta(days=30, microseconds=1))
        assert Sweeper(saver, RetentionPolicy(days=30), clock=clock).sweep().threads == 1

    _marker_test(saver, db_path, sweep, {"other"})


def test_delete_user_removes_all_their_threads_and_leaves_no_trace(saver, db_path, capsys):
    _say(saver, "bobs", "bob's words", user="bob")
    _marker_test(saver, db_path, lambda: delete_user(saver, "alice"), {"bobs"})


def test_delete_user_leaves_their_id_nowhere_on_disk_not_even_in_the_usage_statistics(saver, db_path):
    user = "zqx-user-marker-4419"
    _say(saver, "theirs", user=user)
    _say(saver, "bobs", user="bob")
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert user.encode() in _disk_bytes(db_path.parent)  # the check below can fail
    assert delete_user(saver, user) == 1
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert user.encode() not in _disk_bytes(db_path.parent)
    # a user with no thread left (they deleted each one) is still erased from the statistics
    _say(saver, "again", user=user)
    saver.delete_thread("again")
    assert delete_user(saver, user) == 0
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert user.encode() not in _disk_bytes(db_path.parent)


def test_delete_user_and_sweep_on_the_command_line(db_path, capsys, monkeypatch):
    monkeypatch.chdir(db_path.parent)
    with open_saver(f"sqlite:///{db_path}") as saver:
        for n in range(3):
            _say(saver, f"a{n}", user="alice")
        _say(saver, "b", user="bob")
    url = f"sqlite:///{db_path}"
    assert cli(["--db", url, "delete-user", "alice", "--yes"]) == 0
    assert "deleted 3 threads of 'alice'" in capsys.readouterr().out
    assert cli(["--db", url, "sweep", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: 0 threads" in out and "retention: delete threads not updated for 30 days" in out
    assert cli(["--db", url, "sweep", "--days", "0.000000001"]) == 0
    assert "sweep deleted 1 threads" in capsys.readouterr().out
    assert cli(["--db", url, "status"]) == 0
    assert "last sweep" in capsys.readouterr().out
    monkeypatch.setenv("THREADKEEPER_RETENTION_STRATEGY", "archive")
    assert cli(["--db", url, "sweep"]) == 2
    assert "retention strategy must be 'delete' or 'keep_latest', not 'archive'" in capsys.readouterr().err


def test_a_sweep_stops_at_its_limit_and_the_next_one_goes_on(store):
    saver = store
    for n in range(5):
        _say(saver, f"t{n}")
    clock = _clock_at(datetime.now(timezone.utc) + timedelta(days=31))
    policy = RetentionPolicy(days=30, sweep_limit=3, batch_size=2)
    assert Sweeper(saver, policy, clock=clock).sweep().threads == 3
    assert _ids(saver) == {"t3", "t4"}  # the least recently updated went first
    assert Sweeper(saver, policy, clock=clock).sweep().threads == 2


def _batch_sizes(saver, monkeypatch) -> list[int]:
    """The number of threads each sweep transaction is given, as the sweep goes."""
    sizes: list[int] = []
    delete = saver.delete_threads

    def spy(thread_ids, **kwargs):
        sizes.append(len(thread_ids))
        return delete(thread_ids, **kwargs)

    monkeypatch.setattr(saver, "delete_threads", spy)
    return sizes


def test_sweep_batches_are_sized_by_how_long_they_hold_the_database(store, monkeypatch):
    saver = store
    for n in range(12):
        _say(saver, f"t{n}")
    clock = _clock_at(datetime.now(timezone.utc) + timedelta(days=31))
    policy = RetentionPolicy(days=30, batch_size=5)
    sizes = _batch_sizes(saver, monkeypatch)
    # No batch can be that quick: after the first, one thread a transaction.
    sweeper = Sweeper(saver, policy, clock=clock, pause_s=0)
    sweeper.hold_s = 1e-9
    assert sweeper.sweep().threads == 12
    assert sizes == [sweeper.first_batch] + [1] * (12 - sweeper.first_batch)

    for n in range(12):
        _say(saver, f"u{n}")
    sizes.clear()
    # Any batch is quick enough: the policy's batch size is the limit.
    sweeper.hold_s = 1000.0
    assert sweeper.sweep().threads == 12
    assert sizes == [4, 5, 3]


def test_a_sweep_copies_the_wal_into_the_file_as_it_goes(db_path, monkeypatch):
    """Chat turns would otherwise pay for copying the sweep's pages (SQLite's
    automatic checkpoint runs in whichever commit finds the WAL long)."""

    def sweep_wal_bytes(checkpoints: bool) -> int:
        path = db_path.with_name(f"{checkpoints}.db")
        with open_saver(f"sqlite:///{path}") as saver:
            for n in range(60):
                _say(saver, f"t{n}", "a few words " * 20)
            saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            saver.conn.execute("PRAGMA wal_autocheckpoint = 0")  # only the sweeper's checkpoints count
            sweeper = Sweeper(saver, RetentionPolicy(days=30, batch_size=5), clock=_clock_at(
                datetime.now(timezone.utc) + timedelta(days=31)), pause_s=0)
            sweeper.wait_for_wal = False
            if not checkpoints:
                monkeypatch.setattr(sweeper, "_checkpoint_wal", lambda: None)
            assert sweeper.sweep().threads == 60
            return Path(f"{path}-wal").stat().st_size

    with_checkpoints, without = sweep_wal_bytes(True), sweep_wal_bytes(False)
    assert with_checkpoints * 3 < without, (with_checkpoints, without)


def test_deleting_threads_forgets_what_the_saver_cached_of_them_only(saver):
    for name in ("gone", "kept"):
        _say(saver, name)
        _say(saver, name)
    keys = {name: saver._thread_key(saver.conn, name) for name in ("gone", "kept")}
    assert all(keys[n] in saver._lists._by_thread and n in saver._thread_states for n in keys)
    saver.delete_threads(["gone"])
    assert keys["gone"] not in saver._lists._by_thread and keys["gone"] not in saver._lists._latest
    assert "gone" not in saver._thread_states
    assert keys["kept"] in saver._lists._by_thread and "kept" in saver._thread_states
    _say(saver, "gone")  # a new thread under the old id starts from nothing
    assert len(echo_graph(saver).get_state({"configurable": {"thread_id": "gone"}}).values["messages"]) == 2


class _AnswersWhenLetGo(InstantModel):
    """Answers once `let_go` is set: the thread is deleted while the reply is being written."""

    asked: Any = None
    let_go: Any = None

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.asked.set()
        assert self.let_go.wait(30)
        return super()._generate(messages, stop, run_manager, **kwargs)


@pytest.mark.parametrize("how", ["delete_thread", "delete_user"])
def test_a_thread_deleted_while_its_reply_is_written_stays_deleted(store, how):
    """The in-flight run's next checkpoint found no row and stored one anew, with the whole
    conversation, its title and search words: "Delete all my data" undone by a reply."""
    model = _AnswersWhenLetGo(asked=threading.Event(), let_go=threading.Event())
    agent = build_graph(checkpointer=store, model=model, settings=Settings())
    config = {"configurable": {"thread_id": "secret-thread", "user_id": "alice"}}
    model.let_go.set()
    agent.invoke({"messages": [HumanMessage("my secret one")]}, config)
    model.let_go.clear()
    outcome: list[Any] = []

    def turn() -> None:
        try:
            outcome.append(agent.invoke({"messages": [HumanMessage("my secret two")]}, config))
        except ThreadNotFoundError as exc:
            outcome.append(exc)

    running = threading.Thread(target=turn)
    running.start()
    assert model.asked.wait(30)
    if how == "delete_thread":
        store.delete_thread("secret-thread")
    else:
        assert delete_user(store, "alice") == 1
    model.let_go.set()
    running.join(30)
    assert isinstance(outcome[0], ThreadNotFoundError) and "deleted while this run" in str(outcome[0])
    assert store.threads.list("alice").threads == [] and store.threads.search("alice", "secret").threads == []
    assert agent.get_state(config).values.get("messages", []) == []
    fresh = agent.invoke({"messages": [HumanMessage("a new start")]}, config)  # the id may start over
    assert [m.content for m in fresh["messages"]][0] == "a new start"
