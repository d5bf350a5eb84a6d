"""The delivery seam: what the queue runner hands a transport and gets back.

One job: the values and Protocols every transport shares (the SMTP client,
the sandbox), so the runner depends on this module and not on a transport.

Public API:
    OutboundMessage(queue_id, sender, recipients=((rcpt_idx, address), …), body,
                    ascii=None, dot_lines=None)
                              what acceptance learnt about the body, so that
                              delivery need not look again (None: it looks):
                              ascii — every byte 7-bit (BODY=8BITMIME or not);
                              dot_lines — some line starts with "." (DATA must
                              dot-stuff; False: the body goes as it is)
    DeliveryReport(outcomes={queue_id: {rcpt_idx: RecipientOutcome}}, health)
    Body                      bytes, or a BodySource read in pieces
    BodySource                Protocol: .size, async .chunks(), .iter_chunks()
                              (blocking, for a thread), async .is_ascii()
    Transport                 Protocol: await .deliver(destination, messages),
                              .reconfigure(cfg), await .close()
    TransportConfig           Protocol: what .reconfigure(cfg) reads of a
                              configuration (mta.config.Config has it)

Invariants: `deliver` gives every recipient of every message exactly one
outcome and raises only on cancellation; `reconfigure` changes what the
next connection uses, never a delivery in flight. `dot_lines=False` is a
promise: a line "." sent unstuffed ends DATA early and the rest is read as
commands (SMTP smuggling), so only the spool's record of the stored bytes
may set it (spool.acceptance.body_flags: the head scanned after every
header change, the tail as core.spill.SpillFile saw it written; kept in the
message's index row, read with the body by Spool.delivery_body).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mta.core.envelope import Destination
from mta.core.outcome import DestinationHealth, RecipientOutcome

__all__ = ["OutboundMessage", "DeliveryReport", "Body", "BodySource", "Transport",
           "ProgressTransport", "OnSettled",
           "TransportConfig", "TransportSettings"]


class BodySource(Protocol):
    """A message body read in pieces (the spool's StoredBody): a message over
    core.spill.HEAD_BYTES is never held whole."""

    @property
    def size(self) -> int:
        """Bytes of the whole message."""

    def chunks(self) -> AsyncIterator[bytes]:
        """The message in pieces, in order; raises StorageError when the
        stored bytes fail their check."""

    def iter_chunks(self) -> Iterator[bytes]:
        """The same pieces, read blocking (for a worker thread)."""

    async def is_ascii(self) -> bool:
        """True when every byte is 7-bit."""


# CRLF line endings, headers included.
Body = bytes | BodySource


@dataclass(frozen=True)
class OutboundMessage:
    queue_id: str
    sender: str                                  # "" for the null reverse path
    recipients: tuple[tuple[int, str], ...]      # (rcpt_idx, address)
    body: Body
    ascii: bool | None = None                    # known at acceptance; None: look
    dot_lines: bool | None = None                # known at acceptance; None: look
    # A TLS-RPT report of ours (issue 17): RFC 8460 §3 and §5.3.1 — its own
    # TLS negotiation is not counted and a policy failure does not stop it.
    tls_report: bool = False
    # RFC 8689 (issue 17): the sender asked for REQUIRETLS (only over TLS a
    # policy verified, to a server that supports REQUIRETLS, else returned with
    # 5.7.30), or said "TLS-Required: No" (TLS policies may not stop it).
    requiretls: bool = False
    tls_optional: bool = False


@dataclass
class DeliveryReport:
    outcomes: dict[str, dict[int, RecipientOutcome]] = field(default_factory=dict)
    health: DestinationHealth = DestinationHealth.OK


class TransportSettings(Protocol):
    """The `[delivery]` keys a transport applies (config.DeliveryConfig)."""

    @property
    def connect_timeout(self) -> float:
        """TCP connect + greeting, seconds."""

    @property
    def command_timeout(self) -> float:
        """Each SMTP command and DATA, seconds."""


class TransportConfig(Protocol):
    """A whole configuration as a transport reads it (config.Config)."""

    @property
    def delivery(self) -> TransportSettings:
        """The [delivery] section."""


class Transport(Protocol):
    async def deliver(self, destination: Destination,
                      messages: Sequence[OutboundMessage]) -> DeliveryReport:
        """Every recipient's outcome and the destination's health."""

    def reconfigure(self, cfg: TransportConfig) -> None:
        """Apply a reloaded configuration to the next connections."""

    async def close(self) -> None:
        """Let go of what is kept between deliveries (daemon shutdown)."""



OnSettled = Callable[[str, dict[int, RecipientOutcome]], None]


class ProgressTransport(Protocol):
    """A transport that reports each message's outcomes as its transaction
    ends (`reports_progress` is True), so the runner records them before the
    next one: SmtpTransport."""

    reports_progress: bool

    async def deliver(self, destination: Destination, messages: Sequence[OutboundMessage], *,
                      on_settled: OnSettled | None = None) -> DeliveryReport:
        """As Transport.deliver, calling on_settled(queue_id, outcomes) per message."""
