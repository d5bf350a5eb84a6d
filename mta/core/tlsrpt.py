"""One outbound TLS negotiation's outcome, as TLS-RPT counts it (RFC 8460; issue 17).

One job: the value the delivery side, the policy (report building) and the
spool (durable counts) share, so that each layer below `policy` can name it.

API:
    TlsOutcomeFields    Protocol: the seven fields, read-only
    TlsOutcome          the frozen value with them (the spool's rows)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["TlsOutcome", "TlsOutcomeFields"]


class TlsOutcomeFields(Protocol):
    @property
    def policy_domain(self) -> str: ...
    @property
    def policy_type(self) -> str: ...             # "sts" | "tlsa" | "no-policy-found"
    @property
    def policy_strings(self) -> Sequence[str]: ...
    @property
    def mx_host(self) -> str: ...
    @property
    def result(self) -> str: ...                  # "success" or an RFC 8460 result type
    @property
    def sending_ip(self) -> str: ...
    @property
    def receiving_ip(self) -> str: ...


@dataclass(frozen=True, slots=True)
class TlsOutcome:
    policy_domain: str
    policy_type: str
    policy_strings: tuple[str, ...]
    mx_host: str
    result: str
    sending_ip: str
    receiving_ip: str
