"""Read models of the queue for the admin API and the CLI.

One job: plain dataclasses that `Spool.list_messages` / `get_message` /
`list_page` return, each with `to_dict()` for JSON output (a public
interface: keep the keys stable). `SuppressionView` and `EventView` (what
the suppression and ledger stores return) live in mta.core.stores and are
re-exported here.

Invariant: views are snapshots; nothing in them writes back to the spool.
Replies appear as their wire string (``"550 5.1.1 No such user"``) or "".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Defined in core beside the store Protocols that return them; kept importable here.
from mta.core.stores import EventView, SuppressionView

__all__ = ["AttemptView", "EventView", "MessageView", "RecipientView", "SuppressionView"]


@dataclass(frozen=True, slots=True)
class RecipientView:
    idx: int
    address: str
    state: str
    attempts: int
    next_attempt: float
    last_reply: str
    last_remote: str
    last_tls: str

    def to_dict(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies and costs ~8 µs a view.
        return {"idx": self.idx, "address": self.address, "state": self.state,
                "attempts": self.attempts, "next_attempt": self.next_attempt,
                "last_reply": self.last_reply, "last_remote": self.last_remote,
                "last_tls": self.last_tls}


@dataclass(frozen=True, slots=True)
class AttemptView:
    rcpt_idx: int
    at: float
    duration: float
    state: str
    reply: str
    remote_host: str
    remote_ip: str
    tls: str
    detail: str = ""          # asynchronous reports (record_async): their origin

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class MessageView:
    id: str
    sender: str
    received_at: float
    size: int
    credential: str | None
    is_dsn: bool
    done: bool
    recipients: list[RecipientView] = field(default_factory=list)
    attempts: list[AttemptView] = field(default_factory=list)   # only filled by get_message
    test: bool = False                 # a test key's message (issue 13)
    not_before: float | None = None    # a scheduled send's time

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sender": self.sender,
            "received_at": self.received_at,
            "size": self.size,
            "credential": self.credential,
            "is_dsn": self.is_dsn,
            "done": self.done,
            "recipients": [r.to_dict() for r in self.recipients],
            "attempts": [a.to_dict() for a in self.attempts],
        }
