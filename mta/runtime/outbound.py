"""Outbound messages: what one scheduler `Batch` sends, with VERP senders.

One job: turn a batch's transactions (recipients grouped by message) into
the `OutboundMessage`s the transport sends — the body from the spool, and
the envelope sender each transaction gets.

API
    Outbound(spool, verp=None, bounce_domain_for=None)
      await .messages(batch) -> list[OutboundMessage]
    transactions(group, body, verp, bounce_domain, *, ascii=None, dot_lines=None)
        -> list[OutboundMessage]          the pure part: one message's transactions

Invariants
  * A body larger than core.spill.HEAD_BYTES is opened, not read: it is
    read in pieces while it is sent (memory stays bounded however big and
    however many; issue 10 item 3).
  * Each message carries what acceptance stored about its body
    (`ascii`, `dot_lines`: spool.DeliveryBody, read with its location in
    one query), so no delivery attempt scans the body for 8-bit bytes or
    dot-stuffs one that has no line starting with "." (issue 12); a row
    from before them says None and the transport looks.
  * A message whose body cannot be read (missing, corrupt) is left out and
    logged (``event=body_unreadable``); its recipients get no outcome from
    the transport, so the runner defers them and the rows stay.
  * VERP: with a codec and a bounce domain for the sender's domain, each
    recipient is its own transaction with return path
    ``b+<token>@<bounce domain>`` (a bounce names the recipient it is
    about). DSNs (sender <>) never get one: they must not bounce back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from mta.core.logfmt import event
from mta.core.spill import HEAD_BYTES
from mta.delivery.transport import Body, OutboundMessage
from mta.mail.verp import VerpCodec
from mta.runtime.tlsrpt_job import REPORT_LISTENER
from mta.scheduler import Batch, Work
from mta.spool import DeliveryBody, Spool

__all__ = ["Outbound", "transactions"]

log = logging.getLogger("mta.queue")


def transactions(group: Sequence[Work], body: Body, verp: VerpCodec | None,
                 bounce_domain: str | None, *, ascii: bool | None = None,
                 dot_lines: bool | None = None) -> list[OutboundMessage]:
    """The transactions of one message's `group` of recipients: one with
    them all, or one per recipient with its VERP return path."""
    first = group[0].item
    report = first.listener == REPORT_LISTENER
    tls = {"tls_report": report, "requiretls": bool(first.tls_flags & 1),
           "tls_optional": bool(first.tls_flags & 2) and not first.tls_flags & 1}
    if verp is not None and bounce_domain:
        return [OutboundMessage(queue_id=first.queue_id,
                                sender=verp.encode(first.queue_id, w.item.rcpt_idx, bounce_domain),
                                recipients=((w.item.rcpt_idx, w.item.address),), body=body,
                                ascii=ascii, dot_lines=dot_lines, **tls)
                for w in group]
    return [OutboundMessage(queue_id=first.queue_id, sender=first.sender,
                            recipients=tuple((w.item.rcpt_idx, w.item.address) for w in group),
                            body=body, ascii=ascii, dot_lines=dot_lines, **tls)]


class Outbound:
    def __init__(self, spool: Spool, verp: VerpCodec | None = None,
                 bounce_domain_for: Callable[[str], str | None] | None = None):
        self.spool = spool
        # VERP: each recipient's transaction carries its own return path,
        # b+<token>@<bounce domain of the sender's domain> (None: no VERP).
        self.verp = verp
        self.bounce_domain_for = bounce_domain_for or (lambda sender: None)

    async def messages(self, batch: Batch) -> list[OutboundMessage]:
        out: list[OutboundMessage] = []
        for group in batch.messages:
            first = group[0].item
            stored = await self._body(first.queue_id)
            if stored is None:
                continue
            bounce_domain = (self.bounce_domain_for(first.sender)
                             if self.verp is not None and first.sender else None)
            out.extend(transactions(group, stored.body, self.verp, bounce_domain,
                                    ascii=stored.ascii, dot_lines=stored.dot_lines))
        return out

    async def _body(self, queue_id: str) -> DeliveryBody | None:
        try:
            return await self.spool.delivery_body(queue_id, open_over=HEAD_BYTES)
        except Exception as exc:  # missing/corrupt body: keep the rows, retry later
            event(log, "body_unreadable", logging.ERROR, id=queue_id, error=repr(exc))
            return None
