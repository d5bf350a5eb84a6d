"""Delivery outcomes on two levels (docs/ARCHITECTURE.md §4).

Each recipient gets its own `RecipientOutcome` (delivered / deferred /
bounced, the remote reply kept verbatim). Separately each attempt reports a
`DestinationHealth` for the whole destination; only that drives throttling.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mta.core.reply import Reply


class RecipientFate(enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


class DestinationHealth(enum.Enum):
    OK = "ok"                # the destination answered; keep going
    DOWN = "down"            # could not connect / timeouts / DNS temp failure
    THROTTLING = "throttling"  # it answered 421 or similar "slow down"


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    fate: RecipientFate
    reply: Reply
    remote_host: str = ""   # MX host name (or route host) that gave the reply
    remote_ip: str = ""
    tls: str = ""           # e.g. "TLSv1.3" or "" when clear text
    tls_policy: str = ""    # which outbound TLS policy applied (issue 17): opportunistic,
                            # mta-sts, dane, none, or an override level
    tls_check: str = ""     # its certificate check: "verified", "failed: <RFC 8460
                            # result>" (testing mode went on), "" none made
