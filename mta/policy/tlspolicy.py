"""What a delivery to one MX host must do about TLS, and how a failure is reported.

One job: from the operator's override, the DANE state of the host and the
domain's MTA-STS policy, decide whether TLS is required, what verifies the
certificate, whether a failure defers, and whether the host may be tried at
all; and name a verification failure with its TLS-RPT result type. Pure:
values in, values out (no DNS, no TLS, no clock).

Public API:
    OVERRIDES = ("dane-only", "verify", "encrypt", "may", "none")   `[tls] policy` levels
    DANE_STATES = ("usable", "none", "bogus")
    VERIFY_MODES = ("none", "pkix", "dane")
    RESULT_TYPES                  the TLS-RPT result types (RFC 8460 §4.3) we emit
    HostPolicy(policy, require_tls, verify, enforce, allowed, names)   frozen
    host_policy(*, override, host, sts, sts_error, dane) -> HostPolicy
    order_hosts(hosts, policies) -> list[str]    the hosts that may be tried, in order
    failure_result(verify, reason) -> str        a failure description -> result type

The decision, first rule that applies (issue 17: DANE before MTA-STS; the
operator's override before both, as Postfix's policy table does):

    override    dane     sts mode     policy          require verify enforce allowed
    "none"      any      any          "none"          no      none   no      yes
    "may"       any      any          "opportunistic" no      none   no      yes
    "encrypt"   any      any          "encrypt"       yes     none   yes     yes
    "verify"    any      any          "verify"        yes     pkix   yes     yes
    "dane-only" usable   any          "dane-only"     yes     dane   yes     yes
    "dane-only" none/bogus any        "dane-only"     yes     dane   yes     NO
    None        usable   any          "dane"          yes     dane   yes     yes
    None        bogus    any          "dane"          yes     dane   yes     NO (RFC 7672 §2.1.1)
    None        none     enforce      "mta-sts"       yes     pkix   yes     host matches an mx
    None        none     testing      "mta-sts"       no      pkix   no      yes
    None        none     none/absent  "opportunistic" no      none   no      yes

  * dane: "usable" = a DNSSEC-secure TLSA RRset with at least one usable
    record; "none" = secure denial of TLSA, or an insecure zone (no DANE);
    "bogus" = the lookup failed or did not validate where it had to.
  * `sts` is the policy in force: freshly fetched, or the cached one when a
    refresh failed (RFC 8461 §5.1). `sts_error` (why a fetch or parse failed)
    never changes the decision: with a cached policy the cached one rules,
    without one the domain has no policy (RFC 8461 §5: deliver as before and
    report). It is accepted so that the caller hands every fact over and this
    rule is written in one place.
  * "encrypt" requires TLS and checks nothing, so `enforce` means: no TLS
    defers. Across all rows enforce == require_tls: a failure of a required
    property defers; in testing mode (and opportunistic) it is reported and
    the delivery goes on (clear text included when STARTTLS is missing).
  * names: the MX host name (lower case, no trailing dot) whenever a
    certificate is verified (pkix, and dane, whose DANE-TA(2) checks the
    name; DANE-EE(3) ignores it); () when nothing is verified. MTA-STS
    checks the MX host's name, never the policy's pattern (RFC 8461 §4.1).
  * In testing mode a host outside the policy's mx is still tried
    (allowed); the caller reports the mismatch (sts.matches(host)).
  * A bad override or dane value is a ValueError naming the argument.

failure_result(verify, reason): the first row whose verify modes include
`verify` and whose marker occurs in `reason` (case-insensitive) wins; a
reason that is itself one of RESULT_TYPES is returned as is; otherwise
"validation-failure" (RFC 8460: a failure no other type covers).

    verify        markers                                           result type
    any           starttls not offered / not supported / not        starttls-not-supported
                  advertised / refused, no starttls
    any           dnssec, bogus                                     dnssec-invalid
    any           tlsa mismatch, no tlsa record matched, no         validation-failure
                  matching tlsa
    any           dane required, no tlsa, no usable tlsa            dane-required
    any           tlsa invalid, invalid tlsa, malformed tlsa,       tlsa-invalid
                  unusable tlsa
    any           tlsa (any other TLSA trouble)                     validation-failure
    pkix, dane    expired, not yet valid                            certificate-expired
    pkix, dane    hostname mismatch, ip address mismatch, host      certificate-host-mismatch
                  mismatch, name mismatch, is not valid for
    pkix          self-signed, self signed, unable to get local     certificate-not-trusted
                  issuer, unable to get issuer, unable to verify
                  the first certificate, untrusted, not trusted
    otherwise                                                       validation-failure

The not-trusted row is pkix only: DANE does not use the CA store (a DANE-EE
host may well be self-signed), so a DANE chain that reaches no TLSA-named
anchor is a validation-failure. The OpenSSL texts of Python's ssl module
("certificate has expired", "Hostname mismatch, certificate is not valid
for ...", "self-signed certificate", "unable to get local issuer
certificate") are tested against real handshakes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mta.policy.mtasts import StsPolicy

__all__ = ["DANE_STATES", "OVERRIDES", "RESULT_TYPES", "VERIFY_MODES", "HostPolicy",
           "failure_result", "host_policy", "order_hosts", "override_for"]

OVERRIDES = ("dane-only", "verify", "encrypt", "may", "none")
DANE_STATES = ("usable", "none", "bogus")
VERIFY_MODES = ("none", "pkix", "dane")
RESULT_TYPES = (
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure", "tlsa-invalid", "dnssec-invalid",
    "dane-required", "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
)


@dataclass(frozen=True)
class HostPolicy:
    """What a delivery to one MX host must do (see the module's table)."""

    policy: str            # "none" | "opportunistic" | "mta-sts" | "dane" | an override level
    require_tls: bool      # never send in clear
    verify: str            # "none" | "pkix" (CA chain + name) | "dane" (TLSA)
    enforce: bool          # a failure defers (False: deliver anyway, report)
    allowed: bool          # this MX host may be tried at all
    names: tuple[str, ...]  # names the certificate must match


def _plain(policy: str) -> HostPolicy:
    return HostPolicy(policy=policy, require_tls=False, verify="none", enforce=False,
                      allowed=True, names=())


def _required(policy: str, verify: str, name: str, *, allowed: bool = True) -> HostPolicy:
    return HostPolicy(policy=policy, require_tls=True, verify=verify, enforce=True,
                      allowed=allowed, names=(name,) if verify != "none" else ())


def host_policy(*, override: str | None, host: str, sts: StsPolicy | None,
                sts_error: str | None, dane: str) -> HostPolicy:
    """The TLS policy for delivering to MX `host` (see the module's table)."""
    if override is not None and override not in OVERRIDES:
        raise ValueError(f"override: must be one of {', '.join(OVERRIDES)}, not {override!r}")
    if dane not in DANE_STATES:
        raise ValueError(f"dane: must be one of {', '.join(DANE_STATES)}, not {dane!r}")
    del sts_error                      # never changes the decision (see the module)
    name = host.lower().removesuffix(".")
    if override == "none":
        return _plain("none")
    if override == "may":
        return _plain("opportunistic")
    if override == "encrypt":
        return _required("encrypt", "none", name)
    if override == "verify":
        return _required("verify", "pkix", name)
    if override == "dane-only":
        return _required("dane-only", "dane", name, allowed=dane == "usable")
    if dane == "usable":
        return _required("dane", "dane", name)
    if dane == "bogus":
        return _required("dane", "dane", name, allowed=False)
    if sts is not None and sts.mode == "enforce":
        return _required("mta-sts", "pkix", name, allowed=sts.matches(host))
    if sts is not None and sts.mode == "testing":
        return HostPolicy(policy="mta-sts", require_tls=False, verify="pkix", enforce=False,
                          allowed=True, names=(name,))
    return _plain("opportunistic")


def order_hosts(hosts: Sequence[str], policies: Mapping[str, HostPolicy]) -> list[str]:
    """The hosts that may be tried, in the given (MX) order: a host whose policy
    is not allowed, or that has no policy at all, is dropped (fail closed)."""
    out: list[str] = []
    for host in hosts:
        decided = policies.get(host)
        if decided is not None and decided.allowed:
            out.append(host)
    return out


_ANY = frozenset(VERIFY_MODES)
_CERT = frozenset(("pkix", "dane"))
_PKIX = frozenset(("pkix",))
_TABLE: tuple[tuple[frozenset[str], tuple[str, ...], str], ...] = (
    (_ANY, ("starttls not offered", "starttls not supported", "starttls not advertised",
            "starttls refused", "no starttls"), "starttls-not-supported"),
    (_ANY, ("dnssec", "bogus"), "dnssec-invalid"),
    (_ANY, ("tlsa mismatch", "no tlsa record matched", "no matching tlsa"),
     "validation-failure"),
    (_ANY, ("dane required", "no tlsa", "no usable tlsa"), "dane-required"),
    (_ANY, ("tlsa invalid", "invalid tlsa", "malformed tlsa", "unusable tlsa"), "tlsa-invalid"),
    (_ANY, ("tlsa",), "validation-failure"),
    (_CERT, ("expired", "not yet valid"), "certificate-expired"),
    (_CERT, ("hostname mismatch", "ip address mismatch", "host mismatch", "name mismatch",
             "is not valid for"), "certificate-host-mismatch"),
    (_PKIX, ("self-signed", "self signed", "unable to get local issuer",
             "unable to get issuer", "unable to verify the first certificate", "untrusted",
             "not trusted"), "certificate-not-trusted"),
)


def failure_result(verify: str, reason: str) -> str:
    """The TLS-RPT result type for a failure described by `reason` while
    verifying with `verify` (see the module's table)."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify: must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
    text = reason.strip().lower()
    if text in RESULT_TYPES:
        return text
    for modes, markers, result in _TABLE:
        if verify in modes and any(marker in text for marker in markers):
            return result
    return "validation-failure"


def override_for(table: Sequence[tuple[str, str]], domain: str) -> str | None:
    """The operator's level for `domain` from `[tls] policy` ((domain, level)
    pairs): the domain's own, else its closest parent's, else None."""
    levels = dict(table)
    labels = domain.lower().rstrip(".").split(".")
    for i in range(len(labels)):
        found = levels.get(".".join(labels[i:]))
        if found is not None:
            return found
    return None
