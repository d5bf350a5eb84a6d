"""Mail addresses and domains.

Rules: the domain is case-insensitive and stored lower-cased in its IDNA
A-label form when it is ASCII-encodable (U-labels are converted); the local
part is kept exactly as given (RFC 5321 says it may be case-sensitive).
The null reverse path ``<>`` is `Address.null()`, with empty local and domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Dot-atom local part plus UTF-8 (SMTPUTF8); quoted local parts are accepted as-is.
_ATOM_CHARS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-\u0080-\U0010ffff]+$")

# Regex source for the plain ASCII mailbox `dot-atom@dot-atom` (the domain's
# labels as LDH, not length-checked), with the domain as group 1: the fast
# paths that skip a full parser (server MAIL/RCPT, From: domains) match it and
# leave every other form to that parser.
ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
LABEL = r"[A-Za-z0-9-]+"
PLAIN_MAILBOX = rf"{ATOM}(?:\.{ATOM})*@({LABEL}(?:\.{LABEL})*)"


class AddressError(ValueError):
    pass


def parse_domain(text: str) -> str:
    """Validate and normalise a domain to lower-case A-labels."""
    d = text.strip().rstrip(".")
    if d.startswith("[") and d.endswith("]"):
        return d  # address literal, e.g. [127.0.0.1]; kept as is
    if not d or len(d) > 253:
        raise AddressError(f"invalid domain {text!r}")
    try:
        d = d.encode("idna").decode("ascii") if not d.isascii() else d
    except UnicodeError as exc:
        raise AddressError(f"invalid domain {text!r}: {exc}") from None
    d = d.lower()
    labels = d.split(".")
    if len(labels) < 1 or not all(_DOMAIN_LABEL.match(lab) for lab in labels):
        raise AddressError(f"invalid domain {text!r}")
    return d


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    domain: str

    @classmethod
    def null(cls) -> "Address":
        return cls("", "")

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    def __str__(self) -> str:
        return "" if self.is_null else f"{self.local}@{self.domain}"


def parse_address(text: str, *, allow_null: bool = False) -> Address:
    """Parse ``user@domain`` (angle brackets optional)."""
    s = text.strip()
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1].strip()
    if not s:
        if allow_null:
            return Address.null()
        raise AddressError("empty address")
    if len(s) > 320 or "@" not in s:
        raise AddressError(f"invalid address {text!r}: expected local@domain")
    local, _, domain = s.rpartition("@")
    if not local or len(local.encode()) > 64 * 4:
        raise AddressError(f"invalid address {text!r}: bad local part")
    if not (local.startswith('"') and local.endswith('"') and len(local) >= 2):
        if (not _ATOM_CHARS.match(local) or local.startswith(".") or local.endswith(".")
                or ".." in local):
            raise AddressError(f"invalid address {text!r}: bad local part")
    return Address(local, parse_domain(domain))
