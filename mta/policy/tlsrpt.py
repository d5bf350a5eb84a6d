"""SMTP TLS Reporting (RFC 8460): the reporting record, the outcome we count
and the daily report in the RFC's JSON, gzip, file name and mail forms.

One job: the pure half of TLS-RPT. What a domain asks for (its
`_smtp._tls` TXT record), what one outbound TLS negotiation came to (an
`Outcome`), and, from a day's counted outcomes, the bytes we send. The
counting itself is durable in mta/spool/tlsrpt.py; fetching the record,
the clock and the sending are the runtime's.

Public API:
    TlsRptError(reason)            a ValueError; .reason is one line naming
                                   what is wrong with the record
    parse_record(records) -> tuple[str, ...]
        the `_smtp._tls.<domain>` TXT strings (each record's strings already
        joined, RFC 8460 §3) -> the rua URIs we can use, in record order:
        mailto: and https: only (other schemes are ignored; the scheme is
        returned lower-case). Exactly one record must begin "v=TLSRPTv1"
        (others are discarded); fields are key=value separated by ";" with
        optional spaces, unknown keys ignored, rua required once.
    mailto_address(uri) -> str     "mailto:a%40x@b?subject=…" -> "a@x@b"
                                   unquoted, query dropped; ValueError
    utc_day(now) -> str            the UTC day of an epoch time, "YYYY-MM-DD"
    POLICY_TYPES, RESULT_TYPES     the RFC's vocabularies (§4.4, §4.3)
    Outcome(policy_domain, policy_type, policy_strings, mx_host, result,
            sending_ip, receiving_ip)
        frozen; checked when built (ValueError naming the field): policy_type
        in POLICY_TYPES, result "success" or one of RESULT_TYPES, the IPs ""
        or an address; policy_strings becomes a tuple.
        Outcome.of(x) -> Outcome   from anything with those attributes (a
                                   row the spool read back), checked
    report_json(*, organization, contact, report_id, day, policy_domain,
                counts) -> dict    RFC 8460 §4.4 (see below)
    report_bytes(doc) -> bytes     gzip of the compact JSON (application/tlsrpt+gzip)
    report_filename(*, receiver, policy_domain, day, report_id) -> str
        "<receiver>!<policy-domain>!<begin>!<end>[!<unique-id>].json.gz"
        (§5.1): begin/end the day's first and last second (epoch); the
        unique id is report_id's letters and digits (omitted when none)
    report_mail(*, sender, to, policy_domain, submitter, report_id, day, gz,
                now) -> bytes      §5.3's multipart/report; report-type="tlsrpt"
    spread_delay(policy_domain, day, spread=4 h) -> float
        seconds after midnight to send a day's report: a stable pseudo-random
        value in [0, spread) from a hash of domain and day (§4.1: spread
        the load on the report receivers)

The report: one `policies` entry per (policy_type, policy_strings,
mx_host) of the day's outcomes, each with its policy (policy-type,
policy-string as a list, policy-domain, mx-host when known), its summary
(total-successful-session-count, total-failure-session-count) and
failure-details: one entry per (result, sending IP, MX host, receiving IP)
with failed-session-count; an empty IP or host is left out, not sent as "".
Entries are sorted, so the same counts give the same bytes. The date range
is the UTC day, "…T00:00:00Z" to "…T23:59:59Z" (the filename's end agrees).

Invariants:
  * Pure: no clock (now and day are arguments), no I/O, no randomness; the
    gzip carries mtime 0, the mail's boundary and Message-ID derive from
    its inputs: the same inputs give the same bytes.
  * The mail is CRLF, 7-bit (the gzip base64 in 76-column lines), every
    header line under 998 octets; header values we are given (addresses,
    domains, the report id) are checked to be printable ASCII without
    spaces, so nothing can inject a header (ValueError naming the field).
  * A TlsRptError's reason never echoes more than a short, escaped piece of
    the record (it is network input and may reach a log line).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import ipaddress
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from mta.core.tlsrpt import TlsOutcome, TlsOutcomeFields

__all__ = ["POLICY_TYPES", "RESULT_TYPES", "Outcome", "OutcomeLike", "TlsRptError",
           "mailto_address", "parse_record", "report_bytes", "report_filename", "report_json",
           "report_mail", "spread_delay", "utc_day"]

Json = dict[str, Any]

POLICY_TYPES = ("sts", "tlsa", "no-policy-found")
RESULT_TYPES = ("starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
                "certificate-not-trusted", "validation-failure", "tlsa-invalid",
                "dnssec-invalid", "dane-required", "sts-policy-fetch-error",
                "sts-policy-invalid", "sts-webpki-invalid")
_RESULTS = frozenset(("success", *RESULT_TYPES))

_VERSION = re.compile(r"v=TLSRPTv1[ \t]*(;|$)")
# a field: RFC 8460 §3's ext-name "=" a value of printable ASCII; spaces are
# let through here because rua's list allows them around its commas
_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.\-]{0,31})=([\x21-\x7e][\t\x20-\x7e]*)")
_TOKEN = re.compile(r"[\x21-\x7e]+")                       # printable ASCII, no space
_DOMAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?"
                     r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?)*")
_MSGID_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+")


class TlsRptError(ValueError):
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def _shown(text: str, limit: int = 40) -> str:
    """A short, escaped piece of network input for a reason."""
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


# -- the record ------------------------------------------------------------------


def parse_record(records: Sequence[str]) -> tuple[str, ...]:
    ours = [r for r in records if _VERSION.match(r)]
    if not ours:
        raise TlsRptError("no v=TLSRPTv1 record")
    if len(ours) > 1:
        raise TlsRptError(f"{len(ours)} v=TLSRPTv1 records (exactly one allowed)")
    fields = [f.strip(" \t") for f in ours[0].split(";")]
    rua: str | None = None
    for i, field in enumerate(fields[1:], start=2):
        if not field:                    # a trailing (or doubled) delimiter
            continue
        m = _FIELD.fullmatch(field)
        if m is None:
            raise TlsRptError(f"field {i} is not key=value: {_shown(field)}")
        if m.group(1) == "rua":
            if rua is not None:
                raise TlsRptError("rua given twice")
            rua = m.group(2)
    if rua is None:
        raise TlsRptError("no rua")
    uris = tuple(u for u in (_usable(part.strip(" \t")) for part in rua.split(",")) if u)
    if not uris:
        raise TlsRptError("rua has no mailto: or https: URI")
    return uris


def _usable(uri: str) -> str | None:
    """The URI with its scheme lower-cased when we can send to it, else None."""
    scheme, colon, rest = uri.partition(":")
    if not colon or not rest:
        raise TlsRptError(f"rua: not a URI: {_shown(uri)}")
    scheme = scheme.lower()
    if scheme == "mailto":
        try:
            mailto_address(uri)
        except ValueError:
            raise TlsRptError(f"rua: not a mailto address: {_shown(uri)}") from None
    elif scheme == "https":
        if not urlsplit(uri).hostname:
            raise TlsRptError(f"rua: an https URI without a host: {_shown(uri)}")
    else:
        return None                      # RFC 8460 §3: only mailto and https
    return f"{scheme}:{rest}"


def mailto_address(uri: str) -> str:
    scheme, _, rest = uri.partition(":")
    if scheme.lower() != "mailto":
        raise ValueError("not a mailto: URI")
    address = unquote(rest.partition("?")[0])
    local, at, domain = address.rpartition("@")
    if not (local and at and _TOKEN.fullmatch(address)) or "," in address \
            or not _DOMAIN.fullmatch(domain.rstrip(".")):
        raise ValueError("a mailto: URI needs one address local@domain")
    return address


# -- outcomes ---------------------------------------------------------------------


OutcomeLike = TlsOutcomeFields      # anything with the seven fields (core.tlsrpt)


@dataclass(frozen=True, slots=True)
class Outcome(TlsOutcome):
    """core.tlsrpt.TlsOutcome, its fields checked."""

    def __post_init__(self) -> None:
        if not self.policy_domain:
            raise ValueError("policy_domain: empty")
        if self.policy_type not in POLICY_TYPES:
            raise ValueError(f"policy_type: {self.policy_type!r} is not one of {POLICY_TYPES}")
        if self.result not in _RESULTS:
            raise ValueError(f"result: {self.result!r} is not success or an RFC 8460 type")
        strings: Any = self.policy_strings      # a caller may hand a list (or worse)
        if isinstance(strings, str) or not all(isinstance(s, str) for s in strings):
            raise ValueError("policy_strings: a sequence of strings")
        object.__setattr__(self, "policy_strings", tuple(strings))
        for name in ("sending_ip", "receiving_ip"):
            value = getattr(self, name)
            if value:
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise ValueError(f"{name}: {value!r} is not an IP address") from None

    @classmethod
    def of(cls, x: OutcomeLike) -> Outcome:
        if isinstance(x, Outcome):
            return x
        return cls(policy_domain=x.policy_domain, policy_type=x.policy_type,
                   policy_strings=tuple(x.policy_strings), mx_host=x.mx_host, result=x.result,
                   sending_ip=x.sending_ip, receiving_ip=x.receiving_ip)


# -- days and names -----------------------------------------------------------------


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).date().isoformat()


def _day(day: date | str) -> date:
    if isinstance(day, datetime):
        raise ValueError("day: a date, not a datetime")
    if isinstance(day, date):
        return day
    if not isinstance(day, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ValueError(f"day: {day!r} is not YYYY-MM-DD")
    try:
        return date.fromisoformat(day)
    except ValueError:
        raise ValueError(f"day: {day!r} is not a date") from None


def _range(day: date | str) -> tuple[datetime, datetime]:
    """The day's first and last second, UTC."""
    start = datetime(*_day(day).timetuple()[:3], tzinfo=UTC)
    return start, start + timedelta(seconds=86399)


def _domain(value: str, field: str) -> str:
    name = value.rstrip(".").lower() if isinstance(value, str) else ""
    if not name or len(name) > 253 or not _DOMAIN.fullmatch(name):
        raise ValueError(f"{field}: {value!r} is not a domain name")
    return name


def _token(value: str, field: str) -> str:
    if not isinstance(value, str) or len(value) > 320 or not _TOKEN.fullmatch(value):
        raise ValueError(f"{field}: must be printable ASCII without spaces (at most 320)")
    return value


# -- the report ---------------------------------------------------------------------


def report_json(*, organization: str, contact: str, report_id: str, day: date | str,
                policy_domain: str, counts: Sequence[tuple[OutcomeLike, int]]) -> Json:
    domain = _domain(policy_domain, "policy_domain")
    for name, value in (("organization", organization), ("contact", contact),
                        ("report_id", report_id)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name}: empty")
    ok: Counter[tuple[str, tuple[str, ...], str]] = Counter()
    failed: Counter[tuple[str, tuple[str, ...], str]] = Counter()
    details: Counter[tuple[tuple[str, tuple[str, ...], str], str, str, str]] = Counter()
    for item, n in counts:
        o = Outcome.of(item)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"counts: {n!r} is not a session count")
        if _domain(o.policy_domain, "counts") != domain:
            raise ValueError(f"counts: an outcome for {o.policy_domain!r} in the report "
                             f"for {domain!r}")
        key = (o.policy_type, o.policy_strings, o.mx_host)
        if o.result == "success":
            ok[key] += n
        else:
            failed[key] += n
            details[(key, o.result, o.sending_ip, o.receiving_ip)] += n
    keys = sorted(k for k in set(ok) | set(failed) if ok[k] or failed[k])
    if not keys:
        raise ValueError("counts: no sessions to report")
    start, end = _range(day)
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "end-datetime": end.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "contact-info": contact,
        "report-id": report_id,
        "policies": [_policy(domain, k, ok[k], failed[k],
                             sorted((d[1:], c) for d, c in details.items() if d[0] == k and c))
                     for k in keys],
    }


def _policy(domain: str, key: tuple[str, tuple[str, ...], str], ok: int, failed: int,
            details: Sequence[tuple[tuple[str, str, str], int]]) -> Json:
    policy_type, strings, mx_host = key
    policy: Json = {"policy-type": policy_type, "policy-string": list(strings),
                    "policy-domain": domain}
    if mx_host:
        policy["mx-host"] = mx_host
    failures: list[Json] = []
    for (result, sending_ip, receiving_ip), n in details:
        entry: Json = {"result-type": result}
        if sending_ip:
            entry["sending-mta-ip"] = sending_ip
        if mx_host:
            entry["receiving-mx-hostname"] = mx_host
        if receiving_ip:
            entry["receiving-ip"] = receiving_ip
        entry["failed-session-count"] = n
        failures.append(entry)
    return {"policy": policy,
            "summary": {"total-successful-session-count": ok,
                        "total-failure-session-count": failed},
            "failure-details": failures}


def report_bytes(doc: Json) -> bytes:
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return gzip.compress(raw, mtime=0)


def report_filename(*, receiver: str, policy_domain: str, day: date | str,
                    report_id: str) -> str:
    start, end = _range(day)
    unique = "".join(c for c in report_id if c.isascii() and c.isalnum())
    name = (f"{_domain(receiver, 'receiver')}!{_domain(policy_domain, 'policy_domain')}"
            f"!{int(start.timestamp())}!{int(end.timestamp())}")
    return f"{name}!{unique}.json.gz" if unique else f"{name}.json.gz"


def report_mail(*, sender: str, to: str, policy_domain: str, submitter: str, report_id: str,
                day: date | str, gz: bytes, now: float) -> bytes:
    sender, to = _token(sender, "sender"), _token(to, "to")
    domain, submitter = _domain(policy_domain, "policy_domain"), _domain(submitter, "submitter")
    left, at, right = _token(report_id, "report_id").partition("@")
    if not _MSGID_PART.fullmatch(left) or (at and not _MSGID_PART.fullmatch(right)):
        raise ValueError("report_id: not usable in <id-left@id-right>")
    msgid = report_id if at else f"{report_id}@{submitter}"
    the_day = _day(day).isoformat()
    filename = report_filename(receiver=submitter, policy_domain=domain, day=day,
                               report_id=report_id)
    digest = hashlib.sha256(b"|".join(x.encode() for x in (
        sender, to, domain, msgid, the_day)) + b"|" + gz).hexdigest()
    boundary = f"=_tlsrpt_{digest[:24]}"
    encoded = base64.b64encode(gz).decode("ascii")
    text = [f"This is an aggregate TLS report from {submitter}",
            f"for the policy domain {domain}, {the_day} (UTC), RFC 8460."]
    head = [f"From: <{sender}>",
            f"To: <{to}>",
            f"Subject: Report Domain: {domain}",
            f" Submitter: {submitter}",
            f" Report-ID: <{msgid}>",
            f"Date: {format_datetime(datetime.fromtimestamp(now, UTC))}",
            f"Message-ID: <tlsrpt.{digest[:16]}.{the_day}@{submitter}>",
            f"TLS-Report-Domain: {domain}",
            f"TLS-Report-Submitter: {submitter}",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            "Content-Type: multipart/report; report-type=\"tlsrpt\";",
            f"\tboundary=\"{boundary}\"",
            "",
            "This is a multipart message in MIME format.",
            f"--{boundary}",
            "Content-Type: text/plain; charset=\"us-ascii\"",
            "Content-Transfer-Encoding: 7bit",
            "",
            *text,
            f"--{boundary}",
            "Content-Type: application/tlsrpt+gzip",
            "Content-Transfer-Encoding: base64",
            "Content-Disposition: attachment;",
            f"\tfilename=\"{filename}\"",
            "",
            *(encoded[i:i + 76] for i in range(0, len(encoded), 76)),
            f"--{boundary}--",
            ""]
    return "\r\n".join(head).encode("ascii")


def spread_delay(policy_domain: str, day: date | str, spread: float = 4 * 3600) -> float:
    if not spread >= 0:
        raise ValueError("spread: must be >= 0 seconds")
    key = f"tlsrpt|{_domain(policy_domain, 'policy_domain')}|{_day(day).isoformat()}"
    fraction = (int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 11) / 2.0 ** 53
    return min(fraction * spread, math.nextafter(spread, 0.0)) if spread else 0.0
