"""A thread as a download (Markdown or JSON), and when the server's copies go.

Gradio copies a returned file into its cache, and the app has it delete those
copies `export_keep_s` seconds after they were made (`gr.Blocks(delete_cache=...)`);
the copies made here are not needed after Gradio's (a minute at most, or
`export_keep_s` if shorter). So a deleted or swept thread's downloads do not
outlive it by more than that (see README, Retention).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path

from langchain_core.messages import AIMessage, BaseMessage

from checkpointers.threads import ThreadInfo, message_text

log = logging.getLogger("threadkeeper.web")

EXPORT_KEEP_S = 600
"""Default seconds an export stays downloadable (`THREADKEEPER_EXPORT_KEEP_S`)."""


def export_keep_s(environ: Mapping[str, str] | None = None) -> int:
    """How long exports are kept, from `THREADKEEPER_EXPORT_KEEP_S`; one clear error if it is not a positive integer."""
    raw = (os.environ if environ is None else environ).get("THREADKEEPER_EXPORT_KEEP_S", str(EXPORT_KEEP_S))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"THREADKEEPER_EXPORT_KEEP_S must be a whole number of seconds, at least 1, not {raw!r}")
    return value


def markdown(info: ThreadInfo, messages: list[BaseMessage]) -> str:
    lines = [f"# {info.title or 'Untitled thread'}", "", f"_{info.created_at[:19]} – {info.updated_at[:19]} UTC_", ""]
    for m in messages:
        who = {"human": "You", "ai": "Assistant", "tool": "Tool result"}.get(m.type, m.type)
        text = message_text(m)
        if isinstance(m, AIMessage) and m.tool_calls:
            text += "".join(f"\n\n`{c['name']}({json.dumps(c['args'])})`" for c in m.tool_calls)
        lines += [f"**{who}:**", "", text, ""]
    return "\n".join(lines)


def document(info: ThreadInfo, messages: list[BaseMessage]) -> str:
    return json.dumps(
        {
            "thread_id": info.thread_id,
            "title": info.title,
            "created_at": info.created_at,
            "updated_at": info.updated_at,
            "metadata": info.metadata,
            "messages": [m.model_dump(mode="json", exclude_none=True) for m in messages],
        },
        indent=2,
        ensure_ascii=False,
    )


class Exports:
    """This server's folder of exports, emptied as Gradio takes its copies."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="threadkeeper-export-"))
        # Gone with the app (or the process): a server's exports never pile up in /tmp.
        weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)
        self.keep_s = export_keep_s(environ)
        self.check_s = max(1, min(60, self.keep_s // 2))
        """How often Gradio's cache and `folder` are looked through for exports to delete."""
        self._pruner: threading.Thread | None = None

    def write(self, info: ThreadInfo, messages: list[BaseMessage], fmt: str) -> str:
        """The thread as a file named after its title (`fmt`: "md" or "json"); returns its path."""
        safe = "".join(c if c.isalnum() else "-" for c in (info.title or "thread"))[:40].strip("-") or "thread"
        path = self.folder / uuid.uuid4().hex / f"{safe}.{fmt}"
        path.parent.mkdir(parents=True)
        path.write_text(document(info, messages) if fmt == "json" else markdown(info, messages))
        return str(path)

    def prune(self) -> int:
        """Remove this server's own copies of exports once Gradio has served them; returns how many."""
        cutoff = time.time() - min(60, self.keep_s)
        removed = 0
        for folder in list(self.folder.iterdir()):
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def start_pruning(self) -> None:
        """Prune every `check_s` seconds from now on, on a daemon thread (once per server)."""
        if self._pruner is None:
            self._pruner = threading.Thread(target=self._prune_forever, name="threadkeeper-exports", daemon=True)
            self._pruner.start()

    def _prune_forever(self) -> None:
        while True:
            time.sleep(self.check_s)
            try:
                self.prune()
            except OSError:
                log.exception("could not remove old exports from %s", self.folder)
