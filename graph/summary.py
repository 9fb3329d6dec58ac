"""Memory beyond the window: a running summary of what trimming leaves out,
and the facts a user asked to keep.

The model is sent the system prompt, a memory block (kept facts, then the
summary) and the window (`graph/trimming.py`); together they stay within
`THREADKEEPER_MAX_INPUT_TOKENS`, and the block within `Settings.summary_budget`.
Both live in the thread's state, beside `messages`, which they never change:

* `summary`: `RunningSummary.as_state()`, the text and which messages it
  covers (`messages[:count]`, the last one's id to tell an edited history
  from a longer one). It always covers whole turns, oldest first, so a tool
  call and its results are summarised together, and never the newest human
  message (the window always holds it).
* `facts`: `[{"text": ..., "id": ...}]`, what followed "remember that" in a
  user's message, verbatim, with that message's id. Summaries never touch it.

Because they are state, every saver stores them, `copy_thread` copies them,
deleting a thread or a user erases them and encryption seals them, with no
code of their own in the store.

When the summary is written, and why the reply never waits for it
------------------------------------------------------------------
A run ends when its reply is saved: `invoke` returns, the web chat's stream
closes and `langgraph dev` marks the run done. A summary node inside the run
would hold all three open for a second model call, so there is none. Instead:

1. When the model's final reply of a turn is ready, `Summarizer.after_reply`
   looks at what the next turn is likely to push out of view. If messages
   not yet summarised fill more than three quarters of the window's budget
   (or some have left it already), it starts a background job that folds all
   but the newest quarter's worth into the summary, with the previous summary
   as context. Starting a thread is all the run pays.
2. The job calls the summary model off the run: on its own thread, with no
   callbacks of the run, so none of its tokens reach the reply's stream.
3. The next turn's first step (`trim`) folds a finished job's result into
   the state, where it is checkpointed with that turn. An unfinished job is
   not waited for; the previous summary serves that turn.

Folding only finished work inside a run, rather than writing the summary from
the background with `update_state`, is deliberate: a background write races
the thread's next run (two checkpoints from one parent, and the newer one
wins), which could drop that run's messages; a fold inside the run cannot.
The price: a summary lives in the process that computed it until the thread's
next turn (a process that exits first computes it again later), and the
summary panel shows it from that turn on.

Folding early, at three quarters, is what keeps the summary ahead of the
window: a message is usually summarised a few turns before it leaves, and a
job covers a quarter of the window at a time, so a thread of 1,000 short turns
costs tens of summary calls, not a thousand.

Failure is safe: a summary call that raises, outlives `timeout_s` or answers
nothing changes nothing in the state (the previous summary stays, the history
was never touched), is logged as one line without any message text, and is
tried again at the end of a later turn. The user sees nothing of it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from graph.tokens import TokenCounter
from graph.trimming import Window, drop_oldest_turns, last_human, message_text

log = logging.getLogger(__name__)

FACTS_HEADING = "Facts the user asked you to remember (in their own words):"
SUMMARY_HEADING = "Summary of the earlier conversation, whose messages are no longer shown to you:"
MAX_FACTS = 20
FACT_MAX_CHARS = 500
FOLD_AT = 0.75
"""Fold when unsummarised messages in view pass this share of the window's budget..."""
KEEP_UNFOLDED = 0.25
"""... and fold all but the newest whole turns that fit this share."""
MAX_KEPT_JOBS = 1000
"""Finished jobs waiting for their thread's next turn, at most; the oldest go first."""

_REMEMBER = re.compile(
    r"(?:^|(?<=[.!?\n]))\s*(?:(?:please|and|also|oh|ok|okay)[\s,]+)*remember(?:\s+that\b|\s*:)\s*"
    r"(?P<fact>.+?(?:[.!](?=\s|$)|\n|$))",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True)
class RunningSummary:
    """The `summary` channel: a text covering the thread's first `count` messages."""

    text: str = ""
    count: int = 0
    last_id: str | None = None

    def as_state(self) -> dict:
        return {"text": self.text, "count": self.count, "last_id": self.last_id}

    @classmethod
    def from_state(cls, value: dict | None) -> RunningSummary:
        return cls(**value) if value else cls()

    def intact_in(self, messages: Sequence[BaseMessage]) -> bool:
        """Whether the messages it covers are still the thread's first ones (an edit
        further back than the summary reaches removes them)."""
        return self.count == 0 or (self.count <= len(messages) and messages[self.count - 1].id == self.last_id)


def extract_fact(text: str) -> str | None:
    """What follows "remember that" (or "remember:") in a message, verbatim, or None.

    Only a sentence that starts with it counts, and not a question: "do you
    remember what I said?" keeps nothing.
    """
    found = _REMEMBER.search(text) if "emember" in text or "EMEMBER" in text else None
    if found is None:
        return None
    fact = found.group("fact").strip()
    if not fact or fact.endswith("?") or len(fact) > FACT_MAX_CHARS:
        return None
    return fact


def memory_block(summary: str, facts: Sequence[dict]) -> str:
    """The text added to the system prompt: kept facts, then the summary."""
    parts = []
    if facts:
        parts.append(FACTS_HEADING + "".join(f"\n- {f['text']}" for f in facts))
    if summary:
        parts.append(f"{SUMMARY_HEADING}\n{summary}")
    return "\n\n".join(parts)


def cut_to_tokens(text: str, counter: TokenCounter, max_tokens: int) -> str:
    """`text` if it fits `max_tokens`, else its longest prefix ending on a word that does, with "…"."""
    if counter.count_text(text) <= max_tokens:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if counter.count_text(text[:mid] + " …") <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    kept = text[:lo]
    if " " in kept[len(kept) // 2 :]:
        kept = kept[: kept.rindex(" ")]
    return (kept.rstrip() + " …") if kept.strip() else ""


def fold_end(messages: Sequence[BaseMessage], counter: TokenCounter, window: Window, covered: int, reply_tokens: int) -> int | None:
    """Where the summary should end after this turn, or None if it need not grow.

    `messages` is the history the model just answered, `window` what it was
    shown of it, `covered` how many messages the summary covers, and
    `reply_tokens` the reply's size. The end is always the start of a turn
    (a human message), after `covered` and never past the newest human message.
    """
    newest = last_human(messages)
    if newest is None or newest <= covered:
        return None
    if window.cut_chars is not None:
        return newest  # the newest message alone fills the window: all before it is out of view
    start, used = window.start, window.tokens + reply_tokens + sum(counter.count(m) for m in messages[window.end :])
    if covered > start:  # summarised and still in view: not what the next turns push out
        used -= sum(counter.count(m) for m in messages[start:covered])
        start = covered
    if start == covered and used <= window.available * FOLD_AT:
        return None  # nothing out of view unsummarised, and room for the next turns
    end, _ = drop_oldest_turns(messages, counter, start, used, int(window.available * KEEP_UNFOLDED), newest)
    return end if end > covered else None


def transcript(messages: Sequence[BaseMessage], max_chars: int) -> str:
    """The messages as plain lines for a summary model: no tool message is sent as one,
    so a provider never sees a result without its call."""
    lines = []
    for message in messages:
        text = " ".join(message_text(message).split())
        if len(text) > max_chars:
            text = text[: max_chars - 1] + "…"
        if isinstance(message, HumanMessage):
            lines.append(f"User: {text}")
        elif isinstance(message, AIMessage):
            if text:
                lines.append(f"Assistant: {text}")
            for call in message.tool_calls:
                lines.append(f"Assistant used the tool {call['name']} with {call['args']}"[:max_chars])
        elif isinstance(message, ToolMessage):
            lines.append(f"Tool result: {text}")
    return "\n".join(lines)


SummaryWriter = Callable[[str, Sequence[BaseMessage], int], str]
"""`write(previous_summary, new_messages, max_tokens) -> new summary`; may raise."""

INSTRUCTIONS = (
    "You keep the running summary of a conversation between a user and an assistant, which the "
    "assistant reads once these messages are out of its view. Merge the new messages into the "
    "previous summary. Keep what the user said about themselves (names, preferences, allergies, "
    "plans), decisions, numbers, open questions and what tools found; drop greetings and small "
    "talk. Write plain sentences, at most about {words} words. Answer with the summary only."
)


def model_writer(model: Any) -> SummaryWriter:
    """Summaries from a chat model, given the previous summary and the new messages as text."""

    def write(previous: str, messages: Sequence[BaseMessage], max_tokens: int) -> str:
        reply = model.invoke([
            SystemMessage(INSTRUCTIONS.format(words=max(20, max_tokens * 3 // 4))),
            HumanMessage(f"Previous summary:\n{previous or '(none yet)'}\n\nNew messages:\n{transcript(messages, 4 * max_tokens)}"),
        ])
        return message_text(reply)

    return write


GAP_LINE = "- …"


def extractive_writer(counter: TokenCounter) -> SummaryWriter:
    """A plain summary without a model: one line per user message (its first 200
    characters), the earliest lines kept in the first half of the budget and the
    newest in the rest, so how a conversation began and where it went both stay."""

    def write(previous: str, messages: Sequence[BaseMessage], max_tokens: int) -> str:
        lines = [line for line in previous.splitlines() if line.strip() and line != GAP_LINE]
        for message in messages:
            said = " ".join(message_text(message).split())
            if isinstance(message, HumanMessage) and said:
                lines.append(f"- The user said: {said[:199] + '…' if len(said) > 200 else said}")
        sizes = [counter.count_text(line) + 1 for line in lines]
        head, used = 0, 0
        while head < len(lines) and used + sizes[head] <= max_tokens // 2:
            used, head = used + sizes[head], head + 1
        tail = len(lines)
        room = max_tokens - used - (counter.count_text(GAP_LINE) + 1)
        while tail > head and sizes[tail - 1] <= room:
            room, tail = room - sizes[tail - 1], tail - 1
        kept = lines[:head] + ([GAP_LINE] if tail > head else []) + lines[tail:]
        return cut_to_tokens("\n".join(kept), counter, max_tokens)

    return write


@dataclass
class _Job:
    base: RunningSummary
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    result: RunningSummary | None = None
    """The summary so far: a job of several parts keeps the parts that succeeded."""
    failed: bool = False
    reported: bool = False


class Summarizer:
    """Keeps the running summary and kept facts of the threads of one compiled graph.

    `refresh` runs in the trimming node (folds finished work, picks up a new
    fact); `after_reply` runs when the model's final reply is ready and may
    start a background job. Neither waits for a model.
    """

    def __init__(self, write: SummaryWriter, counter: TokenCounter, *, budget: int, timeout_s: float, chunk_tokens: int) -> None:
        self.write = write
        self.counter = counter
        self.budget = budget
        """Tokens the memory block may take (`Settings.summary_budget`)."""
        self.timeout_s = timeout_s
        """Seconds one summary call may take, its retries included; a job of several parts gets as many."""
        self.chunk_tokens = max(200, chunk_tokens)
        """Tokens of new messages sent in one summary call; more are folded in several calls."""
        self.calls = 0
        """Summary calls made (the bench counts them)."""
        self._jobs: dict[tuple, _Job] = {}
        self._sizes: dict[str, int] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # -- inside the run --------------------------------------------------------

    def refresh(self, state: dict, config: dict) -> dict:
        """The state update that brings the summary and facts up to date: finished
        work folded in, a summary of edited-away messages dropped, a new fact kept."""
        messages = state.get("messages") or []
        summary = RunningSummary.from_state(state.get("summary"))
        key = _thread_key(config)
        update: dict = {}
        if not summary.intact_in(messages):
            log.info("thread %s was edited before the end of its summary; the summary starts again", key[0] if key else "-")
            summary = RunningSummary()
            update["summary"] = summary.as_state()
        folded = self._take_finished(key, summary, messages)
        if folded is not None:
            update["summary"] = folded.as_state()
        facts = state.get("facts") or []
        kept = self._with_new_fact(key, messages, facts)
        if kept is not facts:
            update["facts"] = kept
        return update

    def block(self, state: dict) -> str:
        """The memory block for the system prompt, within the budget (a summary that no
        longer fits beside the facts is cut here, not in the state)."""
        summary = RunningSummary.from_state(state.get("summary")).text
        facts = state.get("facts") or []
        block = memory_block(summary, facts)
        if not block or self.tokens(block) <= self.budget:
            return block
        room = self.budget - self.counter.count_text(memory_block("", facts) + "\n\n" + SUMMARY_HEADING) - 2
        return memory_block(cut_to_tokens(summary, self.counter, max(0, room)), facts)

    def after_reply(self, state: dict, reply: BaseMessage, window: Window, config: dict) -> None:
        """Start folding what the next turns will push out of view, if anything: in the
        background, one job per thread at a time; a failed one is tried again here."""
        key = _thread_key(config)
        if key is None:
            return
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                if not job.done.is_set() and not self._overdue(key, job):
                    return
                if job.result is not None and job.done.is_set():
                    return  # folded at the start of the next turn
                del self._jobs[key]
        messages = state["messages"]
        summary = RunningSummary.from_state(state.get("summary"))
        if not summary.intact_in(messages):
            return
        end = fold_end(messages, self.counter, window, summary.count, self.counter.count(reply))
        if end is None:
            return
        facts_tokens = self.counter.count_text(memory_block("", state.get("facts") or []))
        text_budget = max(20, self.budget - facts_tokens - self.counter.count_text(SUMMARY_HEADING) - 4)
        folding = messages[summary.count : end]  # the job's own list: the run goes on with the state's
        parts = self._parts(folding)
        job = _Job(base=summary, deadline=time.monotonic() + self.timeout_s * len(parts))
        worker = threading.Thread(
            target=self._run, args=(key, job, folding, parts, text_budget), name="threadkeeper-summary", daemon=True
        )
        with self._lock:
            self._jobs[key] = job
            self._evict()
            self._threads = [t for t in self._threads if t.is_alive()] + [worker]
        worker.start()

    def tokens(self, text: str) -> int:
        """`counter.count_text`, remembered: the same block and prompt are counted at every step."""
        found = self._sizes.get(text)
        if found is None:
            if len(self._sizes) >= 256:
                self._sizes.clear()
            found = self._sizes[text] = self.counter.count_text(text)
        return found

    # -- the background job ----------------------------------------------------

    def _parts(self, folding: Sequence[BaseMessage]) -> list[tuple[int, int]]:
        """`folding` cut into runs of whole turns of about `chunk_tokens` each."""
        parts, begin, used = [], 0, 0
        for i, message in enumerate(folding):
            if isinstance(message, HumanMessage) and i > begin and used >= self.chunk_tokens:
                parts.append((begin, i))
                begin, used = i, 0
            used += self.counter.count(message)
        parts.append((begin, len(folding)))
        return parts

    def _run(self, key: tuple, job: _Job, folding: list[BaseMessage], parts: list, text_budget: int) -> None:
        summary = job.base
        try:
            for begin, end in parts:
                with self._lock:
                    self.calls += 1
                text = (self.write(summary.text, folding[begin:end], text_budget) or "").strip()
                if not text:
                    raise _EmptySummary
                covered = job.base.count + end
                summary = RunningSummary(cut_to_tokens(text, self.counter, text_budget), covered, folding[end - 1].id)
                job.result = summary
        except Exception as exc:
            job.failed = True
            reason = "it answered nothing" if isinstance(exc, _EmptySummary) else type(exc).__name__
            # Never the exception's text: a provider's error may quote the conversation.
            log.warning("summary of thread %s failed (%s); its previous summary is kept and it is tried again on a later turn", key[0], reason)
        finally:
            job.done.set()

    def _take_finished(self, key: tuple | None, summary: RunningSummary, messages: Sequence[BaseMessage]) -> RunningSummary | None:
        if key is None:
            return None
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                return None
            if not job.done.is_set():
                if self._overdue(key, job):
                    del self._jobs[key]
                return None
            del self._jobs[key]
        result = job.result
        if result is None or job.base != summary or not result.intact_in(messages):
            return None  # failed, or the state changed under it (an edit, a summary set by hand)
        return result

    def _overdue(self, key: tuple, job: _Job) -> bool:
        if time.monotonic() < job.deadline:
            return False
        if not job.reported:
            job.reported = True
            log.warning(
                "summary of thread %s failed (no answer within %g s); its previous summary is kept and it is tried again on a later turn",
                key[0], self.timeout_s,
            )
        return True

    def _evict(self) -> None:
        while len(self._jobs) > MAX_KEPT_JOBS:
            oldest = next((k for k, j in self._jobs.items() if j.done.is_set()), None)
            if oldest is None:
                return
            del self._jobs[oldest]

    def _with_new_fact(self, key: tuple | None, messages: Sequence[BaseMessage], facts: list[dict]) -> list[dict]:
        newest = last_human(messages)
        if newest is None:
            return facts
        message = messages[newest]
        if any(f.get("id") == message.id for f in facts):
            return facts
        fact = extract_fact(message_text(message))
        if fact is None:
            return facts
        kept = [*facts, {"text": fact, "id": message.id}]
        if len(kept) > MAX_FACTS or self.counter.count_text(memory_block("", kept)) > self.budget // 2:
            log.warning("thread %s: its list of kept facts is full; a new one stays in the history only", key[0] if key else "-")
            return facts
        return kept

    # -- for callers and tests -------------------------------------------------

    def pending(self, config: dict) -> bool:
        """Whether a summary for this thread is being written or waits for the thread's next turn."""
        with self._lock:
            return _thread_key(config) in self._jobs

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for every running job to finish (tests, benchmarks, a clean shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)


class _EmptySummary(Exception):
    pass


def _thread_key(config: dict) -> tuple | None:
    configurable = config.get("configurable") or {}
    thread_id = configurable.get("thread_id")
    if thread_id is None:
        return None
    # Inside a node the namespace ends with "node:task-id", new at every step: the
    # graph's own place is what comes before it, without the task ids.
    place = [part.split(":")[0] for part in str(configurable.get("checkpoint_ns", "")).split("|")][:-1]
    return (str(thread_id), *place)


# -- the summary panel's interface (UI-free: the web chat calls these) ------------


@dataclass(frozen=True)
class ThreadMemory:
    """What a thread's summary panel shows."""

    summary: str
    """The running summary ("" when there is none yet, or it was cleared)."""
    facts: list[str]
    """The kept facts, oldest first, verbatim."""
    covered: int
    """How many of the thread's first messages the summary covers."""
    pending: bool
    """A newer summary is being written or waits for the thread's next turn."""
    budget: int
    """Tokens the summary and facts may take together."""


def summary_of(graph: Any, config: dict) -> ThreadMemory:
    """The thread's summary and kept facts, as its next turn will send them."""
    values = graph.get_state(config).values
    summary = RunningSummary.from_state(values.get("summary"))
    summarizer = getattr(graph, "summarizer", None)
    return ThreadMemory(
        summary=summary.text,
        facts=[f["text"] for f in values.get("facts") or []],
        covered=summary.count,
        pending=bool(summarizer and summarizer.pending(config)),
        budget=_budget_of(graph),
    )


def set_summary(graph: Any, config: dict, text: str) -> ThreadMemory:
    """Replace the summary's text (it still covers the same messages; later ones are
    folded into the new text). Raises ValueError, one sentence, if it does not fit."""
    return set_memory(graph, config, summary=text)


def set_facts(graph: Any, config: dict, facts: Sequence[str]) -> ThreadMemory:
    """Replace the kept facts. Raises ValueError, one sentence, for too many or too long facts."""
    return set_memory(graph, config, facts=facts)


def set_memory(graph: Any, config: dict, *, summary: str | None = None, facts: Sequence[str] | None = None) -> ThreadMemory:
    """Replace the summary's text, the kept facts, or both, in one write: both are
    checked first, so an edit that does not fit changes nothing (a fact kept word for
    word keeps its source). Raises ValueError, one sentence."""
    values = graph.get_state(config).values
    counter, budget = _counter_of(graph), _budget_of(graph)
    update: dict[str, Any] = {}
    kept = values.get("facts") or []
    if facts is not None:
        sources = {f["text"]: f.get("id") for f in kept}
        kept = [{"text": t, "id": sources.get(t)} for t in (f.strip() for f in facts) if t]
        if len(kept) > MAX_FACTS:
            raise ValueError(f"At most {MAX_FACTS} facts are kept; this list has {len(kept)}.")
        if any(len(f["text"]) > FACT_MAX_CHARS for f in kept):
            raise ValueError(f"A kept fact may be at most {FACT_MAX_CHARS} characters long.")
        if counter.count_text(memory_block("", kept)) > budget // 2:
            raise ValueError(f"The kept facts may take at most {budget // 2:,} tokens; these take more.")
        update["facts"] = kept
    if summary is not None:
        text = summary.strip()
        room = budget - counter.count_text(memory_block("", kept) + "\n\n" + SUMMARY_HEADING) - 2
        size = counter.count_text(text)
        if text and size > room:
            raise ValueError(f"The summary is about {size:,} tokens; at most {max(0, room):,} fit beside the kept facts.")
        old = RunningSummary.from_state(values.get("summary"))
        update["summary"] = RunningSummary(text, old.count, old.last_id).as_state()
    if update:
        graph.update_state(config, update, as_node="model")
    return summary_of(graph, config)


def clear_summary(graph: Any, config: dict) -> ThreadMemory:
    """Forget the summary and the kept facts. The messages the summary covered stay
    covered (they are not summarised again), so the agent forgets what was outside
    its window; the history itself is untouched."""
    values = graph.get_state(config).values
    summary = RunningSummary.from_state(values.get("summary"))
    cleared = RunningSummary("", summary.count, summary.last_id)
    graph.update_state(config, {"summary": cleared.as_state(), "facts": []}, as_node="model")
    return summary_of(graph, config)


def _budget_of(graph: Any) -> int:
    summarizer = getattr(graph, "summarizer", None)
    if summarizer is not None:
        return summarizer.budget
    from graph.settings import Settings

    return Settings.from_env().summary_budget


def _counter_of(graph: Any) -> TokenCounter:
    summarizer = getattr(graph, "summarizer", None)
    return summarizer.counter if summarizer is not None else TokenCounter()
