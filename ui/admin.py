"""Who is an administrator, and the admin page: usage charts for the people who run threadkeeper.

    THREADKEEPER_ADMIN_TOKEN=...    a bearer token (16 characters or more) for /admin/stats,
                                    /metrics, and the admin page (typed into it)
    THREADKEEPER_ADMINS=alice,bob   sign-in names that are administrators (with THREADKEEPER_USERS)

The page (`/admin/`) is a Gradio app of its own. Every event works out on the
server, each time, whether its caller is an administrator: a signed-in login
named in THREADKEEPER_ADMINS, or the token sent with the event. Gradio lets
anyone call any event by its number (`fn_index`), so an event that is not the
caller's to see answers with nothing but the sentence that says so. What it
shows are counts (`checkpointers/stats.py`): no message text, no titles, no
thread ids; users by id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from checkpointers import ThreadSaver, stats

log = logging.getLogger("threadkeeper.admin")

TOKEN_VARIABLE = "THREADKEEPER_ADMIN_TOKEN"
ADMINS_VARIABLE = "THREADKEEPER_ADMINS"
MIN_TOKEN_CHARS = 16
PERIODS = {"24 h": 1, "7 d": 7, "30 d": 30, "90 d": 90, "All": None}
"""The period picker: days ending today (UTC); rollups are daily, so "24 h" is today."""
MAX_DAYS = 36_600
NOT_ADMIN = "This page is for administrators: sign in as one, or enter the admin token."
NO_TOKEN = "Enter the admin token (THREADKEEPER_ADMIN_TOKEN) to see the figures."


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class AdminAccess:
    """Who may see the figures: the holder of the token, and the listed sign-in names."""

    token_digest: bytes | None = None
    admins: frozenset[str] = frozenset()
    sign_in: bool = False

    @classmethod
    def from_env(cls, sign_in: bool, environ: Mapping[str, str] | None = None) -> AdminAccess:
        """One clear `ValueError` for a token too short to be a secret."""
        environ = os.environ if environ is None else environ
        token = environ.get(TOKEN_VARIABLE, "").strip()
        if token and len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{TOKEN_VARIABLE} must be at least {MIN_TOKEN_CHARS} characters")
        admins = frozenset(n.strip() for n in environ.get(ADMINS_VARIABLE, "").split(",") if n.strip())
        if admins and not sign_in:
            log.warning("%s has no effect without sign-in (THREADKEEPER_USERS)", ADMINS_VARIABLE)
        return cls(_digest(token) if token else None, admins, sign_in)

    @property
    def has_token(self) -> bool:
        return self.token_digest is not None

    @property
    def enabled(self) -> bool:
        """Whether anyone at all can be an administrator (else /admin answers 404)."""
        return self.has_token or (self.sign_in and bool(self.admins))

    def token_ok(self, given: Any) -> bool:
        """The token, compared in constant time (digests of equal length, whatever was sent)."""
        if self.token_digest is None or not isinstance(given, str) or not given:
            return False
        return hmac.compare_digest(_digest(given), self.token_digest)

    def bearer_ok(self, authorization: str | None) -> bool:
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def login_ok(self, username: Any) -> bool:
        return self.sign_in and isinstance(username, str) and username in self.admins

    def allows(self, request: gr.Request | None, token: Any) -> bool:
        return self.login_ok(getattr(request, "username", None)) or self.token_ok(token)


def parse_days(raw: Any) -> int | None:
    """`?days=N` (1 to 36,600) or None for all; `ValueError` with one sentence otherwise."""
    if raw is None or raw == "" or raw == "all":
        return None
    text = str(raw).strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise ValueError(f"days must be a whole number from 1 to {MAX_DAYS:,}, or 'all'")
    return int(text)


def _frame(rows: list[dict], columns: dict[str, str], *, value: str = "count", series: str = "kind") -> pd.DataFrame:
    """Long-format data for a plot: one row per day and series."""
    data = [{"day": r["day"], series: label, value: r[column]} for r in rows for column, label in columns.items()]
    return pd.DataFrame(data, columns=["day", series, value])


def headline(figures: dict[str, Any]) -> str:
    t, s = figures["totals"], figures["store"]
    period = figures["period"]
    span = f"the last {period['days']} days" if period["days"] and period["days"] > 1 else (
        "today (UTC)" if period["days"] == 1 else "all time")
    tokens = (f"{t['tokens_in']:,} in / {t['tokens_out']:,} out (reported by the model)"
              if t["tokens_in"] or t["tokens_out"] else
              f"about {t['estimated_tokens_in']:,} in / {t['estimated_tokens_out']:,} out (estimate: text of new messages)")
    last = s["last_sweep"]
    swept = f"last sweep {last['finished_at'][:16].replace('T', ' ')} UTC, {last['threads']:,} threads" if last else "no sweep yet"
    return "\n".join([
        f"**{s['threads']:,}** threads stored · **{s['database_bytes'] / 1e6:,.1f} MB** on disk · "
        f"**{s['attachments']:,}** attachments ({s['attachment_bytes'] / 1e6:,.1f} MB) · {swept}",
        "",
        f"In {span}: **{t['messages']:,}** messages ({t['human_messages']:,} from people, {t['ai_messages']:,} replies, "
        f"{t['tool_messages']:,} tool results) · **{t['threads_created']:,}** threads started · "
        f"**{t['active_users']:,}** active users (7 d: {t['active_users_7d']:,}, 30 d: {t['active_users_30d']:,}) · "
        f"tokens {tokens} · {t['threads_deleted']:,} threads deleted by users · {t['sweeps']:,} sweeps, "
        f"{t['threads_swept']:,} threads swept",
    ])


class AdminPage:
    """The admin page over one store."""

    def __init__(self, saver: ThreadSaver, access: AdminAccess) -> None:
        self.saver = saver
        self.access = access

    def figures(self, period: str) -> dict[str, Any]:
        if period not in PERIODS:
            raise ValueError("unknown period")
        return stats.usage(self.saver, PERIODS[period])

    def show(self, token: Any, period: Any, request: gr.Request) -> tuple:
        """(message, panel, headline, messages, users, tokens, database, sweeps, top users): the figures
        for an administrator, nothing but a sentence for anyone else."""
        if not self.access.allows(request, token):
            if token:
                log.warning("admin page: refused a wrong token")
            signed_in = getattr(request, "username", None) is not None
            return (NOT_ADMIN if signed_in or token or not self.access.has_token else NO_TOKEN,
                    gr.Column(visible=False), "", *self._empty())
        period = period if period in PERIODS else "7 d"
        f = self.figures(period)
        rows = f["days"]
        return (
            "",
            gr.Column(visible=True),
            headline(f),
            _frame(rows, {"human_messages": "people", "ai_messages": "replies", "tool_messages": "tool results"}),
            _frame(rows, {"active_users": "active users", "threads_created": "threads started"}),
            _frame(rows, {"tokens_in": "in (reported)", "tokens_out": "out (reported)",
                          "estimated_tokens_in": "in (estimate)", "estimated_tokens_out": "out (estimate)"}, value="tokens"),
            pd.DataFrame([{"day": r["day"], "MB": round((r["database_bytes"] or 0) / 1e6, 3)} for r in rows
                          if r["database_bytes"] is not None], columns=["day", "MB"]),
            _frame(rows, {"sweeps": "sweeps", "threads_swept": "threads swept", "threads_deleted": "deleted by users"}),
            pd.DataFrame([[u["user_id"], u["messages"], u["threads_created"], u["active_days"]] for u in f["users"]],
                         columns=["user", "messages", "threads started", "active days"]),
        )

    @staticmethod
    def _empty() -> tuple:
        long = pd.DataFrame(columns=["day", "kind", "count"])
        return (long, long, pd.DataFrame(columns=["day", "kind", "tokens"]), pd.DataFrame(columns=["day", "MB"]), long,
                pd.DataFrame(columns=["user", "messages", "threads started", "active days"]))

    def blocks(self) -> gr.Blocks:
        with gr.Blocks(title="threadkeeper · admin") as page:
            gr.Markdown("## threadkeeper · usage")
            with gr.Row(visible=self.access.has_token):
                token = gr.Textbox(type="password", placeholder="Admin token", show_label=False, scale=4,
                                   elem_id="admin-token", max_lines=1)
                unlock = gr.Button("Show", scale=1, elem_id="admin-unlock")
            message = gr.Markdown(elem_id="admin-message")
            with gr.Column(visible=False, elem_id="admin-panel") as panel:
                period = gr.Radio(list(PERIODS), value="7 d", show_label=False, elem_id="admin-period")
                numbers = gr.Markdown(elem_id="admin-headline")
                with gr.Row():
                    messages = gr.BarPlot(x="day", y="count", color="kind", title="Messages per day", x_title="day (UTC)",
                                          elem_id="plot-messages")
                    users = gr.BarPlot(x="day", y="count", color="kind", title="Active users per day",
                                       x_title="day (UTC)", elem_id="plot-users")
                with gr.Row():
                    tokens = gr.BarPlot(x="day", y="tokens", color="kind", title="Tokens per day", x_title="day (UTC)",
                                        elem_id="plot-tokens")
                    database = gr.BarPlot(x="day", y="MB", title="Database size (at the day's last write)", x_title="day (UTC)",
                                           elem_id="plot-database")
                sweeps = gr.BarPlot(x="day", y="count", color="kind", title="Sweeps and deletions per day",
                                    x_title="day (UTC)", elem_id="plot-sweeps")
                top = gr.Dataframe(label="Most active users (counts only)", interactive=False, elem_id="admin-users")
            outputs = [message, panel, numbers, messages, users, tokens, database, sweeps, top]
            private = {"api_visibility": "private"}
            page.load(self.show, [token, period], outputs, **private)
            unlock.click(self.show, [token, period], outputs, **private)
            token.submit(self.show, [token, period], outputs, **private)
            period.change(self.show, [token, period], outputs, **private)
        return page
