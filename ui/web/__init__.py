"""The web chat: every visitor lists, opens and resumes their own threads.

    threadkeeper serve                 # http://127.0.0.1:7860
    threadkeeper serve --host 0.0.0.0 --port 8080

Every handler works out the caller's user id on the server (`ui.identity`) and
asks the store with it, so a thread id that is not the caller's behaves as one
that does not exist, whether it comes from the page or a crafted API request.

Where to look: `handlers` (what each event does, on `ui.turns` for the turn
itself), `layout` (the page: components, their wiring, CSS and the browser's
part), `view` (how threads and messages are shown), `events` (a person's mistake
as one warning), `exports` (downloads, and when they are removed).
"""

from ui.web.exports import EXPORT_KEEP_S, export_keep_s
from ui.web.handlers import WebChat

__all__ = ["EXPORT_KEEP_S", "WebChat", "export_keep_s"]
