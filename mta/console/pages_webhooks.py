"""The Webhooks page: each endpoint's delivery state, and test and replay.

One job: show the webhook endpoints a viewer may see — the operator every
one (the config file's and those tenants made through the sending API,
with an owner column), a tenant those it made (the default tenant also the
config file's, as the sending API shows them) — with state, lag and last
error, and let the viewer send a signed test request or move an
endpoint's cursor (replay from a sequence number or a time, or skip the
backlog).

Public API:
    PART = "accounts"; NAV; routes(backend) -> list[Route]
    WebhooksBackend    the Protocol the runtime implements
                       (mta.runtime.console_webhooks)
    parse_since(text) -> float    a replay's "since" (422 naming the field)

Routes (under /console):
    GET  /webhooks                 #webhooks (rows id "webhook-<n>", n the
                                   row's position; the name is in the row)
    POST /webhooks/{name}/test     → 303 /webhooks, the notice names the
                                   endpoint's answer (status, ms or error)
    POST /webhooks/{name}/replay   exactly one of: from_seq (a ledger
                                   sequence number, or "end": drop the
                                   backlog), since (YYYY-MM-DD,
                                   YYYY-MM-DDTHH:MM[:SS] or "… HH:MM", UTC;
                                   or unix seconds) → 303 /webhooks
    (per endpoint: the forms #test-<n>, #replay-<n>, #skip-<n>)

Invariants:
- No signing secret ever reaches a page; an endpoint's URL is shown with
  any password in it masked (the backend's job).
- A tenant's viewer sees and acts only on its own endpoints: another's
  name is a 404. A config-file endpoint is the operator's to replay
  (403 for a tenant, who may see and test it, as through the API).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Protocol

from aiohttp import web

from mta.console.backend import ConsoleError, Viewer
from mta.console.render import Route, field, form, redirect, render, viewer

__all__ = ["PART", "NAV", "routes", "WebhooksBackend", "parse_since"]

PART = "accounts"
NAV = [("Webhooks", "/webhooks", "any")]

INT64_MAX = 2 ** 63 - 1
MAX_UNIX_TIME = 253402300799.0        # 9999-12-31T23:59:59Z
_MAX_NAME = 200
_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M",
            "%Y-%m-%d %H:%M:%S")
_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")


class WebhooksBackend(Protocol):
    """Webhook endpoints as a viewer may see them. An endpoint is a dict:
    {"name", "url" (any password masked), "owner" (a tenant, or "config"
    for the config file's), "tenant_filter" (the tenant whose events a
    config endpoint gets, or None), "source": "config" | "api",
    "enabled": bool, "running": bool, "state": "active" | "failing" |
    "disabled", "events": [str], "cursor": int | None, "last_event_seq":
    int | None, "lag": int | None (ledger events after its cursor),
    "attempts": int (failed requests in a row), "last_error": str | None,
    "failing_since": unix time | None, "next_attempt": unix time | None,
    "oldest_unsent_at": unix time | None, "sent": int (events acknowledged
    since the daemon started)}."""

    async def webhooks(self, viewer: Viewer) -> list[dict[str, Any]]:
        """The viewer's endpoints (the operator: all), config file first."""

    async def webhook_test(self, viewer: Viewer, name: str) -> dict[str, Any]:
        """One signed test request → {"ok": bool, "status": int | None,
        "error": str | None, "ms": int}. ConsoleError 404: not the viewer's."""

    async def webhook_replay(self, viewer: Viewer, name: str, *,
                             from_seq: int | str | None = None,
                             since: float | None = None) -> dict[str, Any]:
        """Move the cursor (exactly one of from_seq, an int or "end", and
        since) → {"cursor": int, "state": str}. ConsoleError 404 (not the
        viewer's), 403 (a config endpoint, for a tenant), 409 (disabled)."""


def parse_since(text: str) -> float:
    """A time in UTC as the replay form takes it → unix seconds."""
    value = text.strip()
    if _SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        for fmt in _FORMATS:
            try:
                parsed = dt.datetime.strptime(value, fmt)
            except ValueError:
                continue
            seconds = parsed.replace(tzinfo=dt.timezone.utc).timestamp()
            break
        else:
            raise ConsoleError(422, "since: a date and time in UTC (YYYY-MM-DD HH:MM) or "
                                    "unix seconds", "since")
    if not 0 <= seconds <= MAX_UNIX_TIME:
        raise ConsoleError(422, "since: out of range", "since")
    return seconds


def _from_seq(text: str) -> int | str:
    if text == "end":
        return "end"
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > INT64_MAX:
        raise ConsoleError(422, f"from_seq: a ledger sequence number (0 to {INT64_MAX}) "
                                "or \"end\"", "from_seq")
    return int(text)


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not name or len(name) > _MAX_NAME or not name.isprintable():
        raise ConsoleError(404, "no such webhook")
    return name


def _tested(name: str, result: dict[str, Any]) -> tuple[str | None, str | None]:
    """(ok notice, error notice) of a test request."""
    if result.get("ok"):
        return (f"Test request to {name}: HTTP {result.get('status')} in "
                f"{result.get('ms')} ms.", None)
    status = result.get("status")
    why = result.get("error") or (f"HTTP {status}" if status else "no answer")
    return None, f"Test request to {name} failed: {why}"


def routes(backend: WebhooksBackend) -> list[Route]:
    async def listing(request: web.Request) -> web.StreamResponse:
        hooks = await backend.webhooks(viewer(request))
        return render(request, "webhooks.html", title="Webhooks", hooks=hooks)

    async def test(request: web.Request) -> web.StreamResponse:
        name = _name(request)
        result = await backend.webhook_test(viewer(request), name)
        ok, error = _tested(name, result)
        raise redirect(request, "/webhooks", ok=ok, error=error)

    async def replay(request: web.Request) -> web.StreamResponse:
        name = _name(request)
        data = await form(request)
        start = field(data, "from_seq", max_len=40, required=False)
        since = field(data, "since", max_len=40, required=False)
        if bool(start) == bool(since):
            raise ConsoleError(422, "from_seq: give exactly one of a sequence number (or "
                                    "\"end\") and a time (since)", "from_seq")
        if start:
            result = await backend.webhook_replay(viewer(request), name,
                                                  from_seq=_from_seq(start))
        else:
            result = await backend.webhook_replay(viewer(request), name,
                                                  since=parse_since(since))
        what = ("skipped its backlog" if start == "end" else
                f"will resend from ledger event {int(result['cursor']) + 1}")
        raise redirect(request, "/webhooks", ok=f"Webhook {name} {what} (cursor "
                                                 f"{result['cursor']}, {result['state']}).")

    return [("GET", "/webhooks", listing, "any"),
            ("POST", "/webhooks/{name}/test", test, "any"),
            ("POST", "/webhooks/{name}/replay", replay, "any")]
