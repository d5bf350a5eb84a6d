"""Text patterns per bounce reason: the table `classify` falls back on.

Public API:
    TEXT_ORDER: tuple of reason names, in the order they are tried.
    PATTERNS: dict reason -> compiled regex, matched against lower-cased,
              whitespace-collapsed diagnostic text.
    match_reason(text, order=TEXT_ORDER) -> str | None   the first reason in
                                       `order` whose pattern matches `text`
                                       (lower-cased).
    matches(name, text) -> bool        whether reason `name`'s pattern matches.
    RULES: tuple[Rule(id, reason, pattern), ...]  the table as data rows
    ruleset(allowed=None, *, trace=False)   context manager: only the rules
                                       whose ids are in `allowed` exist
                                       (scripts/score_bounces.py --loso);
                                       `trace` makes parsed recipients name
                                       the rules that decided them
    active(rule_id) -> bool, tracing() -> bool, fired(name, text) -> ids

Invariants: patterns are phrases seen in real MTA replies, never text unique
to one sample; each reason's pattern is one alternation so matching a whole
table costs one regex search per reason. The order puts narrow reasons
(mailbox full, message too big, rate limits, suspended, moved) before the
broad ones (user unknown, rejected, blocked) because a reply that says
"mailbox full" often also says "550 ... user" somewhere, never the reverse;
content verdicts (virus, spam) come before user unknown because a gateway
that rejects the content often words it as a recipient failure.
Each row is a phrase for one idea (general rows -- "the host or domain ...
does not exist" -- rather than one vendor's sentence): the leave-one-source-
out evaluation (scripts/score_bounces.py --loso) drops, per held-out source
family, the rows only that family's files support.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

_P: dict[str, list[str]] = {
    "mailboxfull": [
        r"account is (?:over ?quota|full|exceeding)", r"mailbox (?:is )?full", r"mailbox full",
        r"mailbox size limit exceeded", r"over ?quota", r"quota (?:exceeded|violation)",
        r"exceeded (?:storage allocation|the storage|their quota|quota)", r"disk quota",
        r"user(?:'s)? (?:mailbox|disk) (?:is )?(?:full|over)", r"not enough (?:disk )?space",
        r"(?:not enough|insufficient) (?:free )?(?:disk |storage |system )?(?:space|storage)", r"mailbox (?:has )?exceeded",
        r"(?:mail|in)box (?:is )?(?:over|at) (?:its |the )?(?:quota|capacity|limit)",
        r"too much mail data", r"recipient(?:'s)? mailbox is full", r"mail box full",
        r"mailfolder is full", r"exceeds? (?:the )?(?:allowed|maximum) (?:mailbox )?(?:size|quota)",
        r"quota exceed", r"is over the allowed quota", r"full mailbox",
        r"maildir (?:over|delivery failed: user is over)", r"storage (?:quota|space) ",
        r"mailbox (?:would|will) exceed", r"size of the mailbox",
        r"no space left on device", r"out of (?:disk )?space", r"over (?:the )?storage",
    ],
    "mesgtoobig": [
        r"message (?:is )?too (?:big|large)", r"message size exceeds", r"size limit",
        r"message (?:file )?too big", r"exceeds? (?:the )?(?:message )?size",
        r"message length exceeds", r"message exceeds (?:the )?(?:maximum|local)",
        r"mail (?:size|data) (?:is )?too (?:large|big)", r"line(?:s)? too long",
        r"larger than (?:the )?(?:server|maximum|allowed)", r"exceeded the max(?:imum)? message size",
        r"maximum (?:allowed )?message size", r"message too large", r"entity too large",
        r"size exceeds (?:the )?maximum", r"taille limite du message",
    ],
    "exceedlimit": [
        r"message header size exceeds limit", r"too many recipients", r"recipient limit",
        r"exceeded? (?:the )?(?:maximum )?number of recipients",
    ],
    "toomanyconn": [
        r"too many (?:[\w-]+ ){0,2}(?:connections|sessions)",
        r"connection(?:s)? limit", r"too many connections from", r"max(?:imum)? connections",
        r"exceeded the maximum number of connections", r"all available ips are at maximum",
        r"number of connections exceeds",
    ],
    "speeding": [
        r"rate limit(?:ed|ing)?", r"too many (?:messages|emails|mails)",
        r"sending too (?:fast|many)", r"throttl", r"temporarily rate limited",
        r"receiving mail at a rate that prevents", r"unusual rate of",
    ],
    "suspend": [
        r"account (?:is |has been )?(?:disabled|suspended|deactivated|inactive|locked|frozen|expired)",
        r"mailbox (?:is |has been )?(?:disabled|suspended|deactivated|inactive|locked|frozen|not active)",
        r"(?:user|recipient|address|email) (?:is |has been )?(?:suspended|deactivated|disabled|inactive|locked|frozen)",
        r"this account (?:has been|is) (?:disabled|suspended|locked)", r"inactive (?:user|account|mailbox)",
        r"(?:mailbox|account) currently suspended", r"suspended (?:account|mailbox)",
        r"disabled (?:account|mailbox|recipient)", r"is no longer (?:active|valid)",
        r"temporarily disabled", r"boite du destinataire archivee", r"recipient suspend",
        r"user account disabled",
        r"the user\(s\) account is disabled", r"has been disabled", r"account closed",
    ],
    "hasmoved": [r"has been replaced by", r"address (?:has )?(?:moved|changed)",
                 r"user has moved", r"mailbox has moved"],
    "norelaying": [
        r"relay(?:ing)? (?:access )?(?:denied|not (?:permitted|allowed)|prohibited|disallowed)",
        r"not (?:permitted|allowed) to relay", r"no relaying", r"unable to relay",
        r"relay not permitted", r"insecure mail relay", r"we do not relay", r"not a gateway",
        r"relaying (?:mail )?(?:to .+ )?(?:is )?not allowed", r"relay access denied",
        r"sorry, that domain isn't in my list of allowed rcpthosts",
        r"not local host .+ not a gateway", r"open relay",
    ],
    "authfailure": [
        r"\bspf\b.{0,40}(?:fail|check|permerror|softfail|record|authentication)",
        r"(?:fail|failed|failure)[^.]{0,30}\bspf\b", r"\bdmarc\b", r"\bdkim\b.{0,30}(?:fail|invalid|not)",
        r"unauthenticated (?:email|mail|sender)", r"sender policy framework",
        r"authentication (?:fail|required|check)", r"is not authorized to send",
        r"email from .+ (?:was|is) not authenticated", r"does not pass (?:spf|dkim)",
        r"spf validation", r"5\.7\.2[3-6]", r"5\.7\.509",
    ],
    "requireptr": [
        r"(?:no|missing|invalid|bad) (?:ptr|reverse dns|rdns|reverse lookup)",
        r"reverse (?:dns|lookup) (?:fail|not|error|required)", r"ptr record",
        r"cannot find your (?:hostname|reverse)", r"client host rejected: cannot find your",
        r"(?:ip|client) (?:address )?(?:name )?lookup failed", r"does not resolve",
        r"no ptr", r"reverse hostname", r"rdns", r"dns ptr", r"\bptr\b",
        r"not have a (?:valid )?ptr", r"unresolvable (?:address|hostname|host)",
        r"could not be (?:resolved|looked up)", r"hostname verification",
        r"ip name lookup", r"reverse address",
    ],
    "badreputation": [r"low reputation", r"poor reputation", r"bad reputation",
                      r"reputation (?:of|is|score)", r"sender reputation"],
    "spamdetected": [
        r"\bspam\b", r"junk mail", r"message (?:was |is )?(?:classified|identified|detected|considered) as (?:spam|junk|bulk)",
        r"content filter", r"bulk mail", r"unsolicited", r"spamassassin", r"spamhaus dbl",
        r"message content rejected", r"looks like spam", r"appears to be (?:spam|unsolicited)",
        r"scored too high", r"spam score", r"high probability of being spam", r"uribl",
        r"(?:rejected|blocked) (?:as|due to) (?:spam|content)", r"suspicious (?:url|content)",
        r"identified as junk", r"x-spam", r"mail appears to be unsolicited",
    ],
    "virusdetected": [r"virus", r"malware", r"infected", r"malicious (?:content|attachment)",
                      r"harmful (?:content|attachment)", r"trojan"],
    "policyviolation": [
        r"policy (?:violation|reasons|rejection)", r"violat(?:es|ion of) (?:our|the|local) (?:policy|policies)",
        r"prohibited (?:attachment|file|content)", r"attachment (?:type )?(?:not allowed|blocked|rejected)",
        r"(?:file|attachment) (?:extension|type) (?:is )?(?:not )?(?:allowed|permitted|blocked)",
        r"not allowed by (?:local|our) policy", r"blocked by (?:policy|local policy)",
        r"due to local policy", r"(?:email|message) (?:rejected|blocked) due to policy",
        r"an email with content that violates", r"because of (?:local )?policy",
        r"restricted to (?:internal|authorized|members)", r"only accepts? mail from",
        # a filter's verdict naming a policy (content, spoofing, gateway policies)
        r"(?:rejected|blocked|refused|quarantined) (?:by|under) (?:[\w.-]+ ){0,4}polic(?:y|ies)",
        r"\b(?:content|anti-?spoofing|spoofing|e-?mail|message|gateway|security) polic(?:y|ies)\b",
        r"administrative prohibition",
    ],
    "securityerror": [
        r"tls (?:required|is required|negotiation failed)", r"encryption required",
        r"must (?:issue|use) (?:a )?starttls", r"authentication required", r"auth(?:entication)? needed",
        r"insecure", r"unauthenticated senders not allowed", r"sender is not authenticated",
        r"security (?:policy|reasons|restriction)", r"access denied", r"not authorized",
        r"certificate", r"submission port", r"sender(?:s)? not allowed",
    ],
    "contenterror": [r"header (?:error|syntax|contains)", r"illegal (?:character|header)",
                     r"(?:invalid|malformed|bad|illegal) (?:mime|content|header|characters)",
                     r"message content (?:is )?(?:invalid|malformed)", r"8.?bit", r"content error",
                     r"improper use of 8-bit data", r"charset"],
    "notcompliantrfc": [r"not (?:compliant|conform)\w* (?:with|to) rfc", r"rfc ?(?:5322|2822|822|5321|1123)",
                        r"multiple (?:from|date|subject|to|message-id) headers?",
                        r"duplicate header", r"(?:missing|invalid) (?:date|from|message-id) header",
                        r"does not conform to rfc", r"not rfc[- ]?compliant"],
    "systemfull": [r"mail system full", r"(?:disk|system) (?:is )?full",
                   r"insufficient system storage", r"out of memory", r"no space in",
                   r"server (?:is )?(?:out of|low on) (?:disk|storage)"],
    "hostunknown": [
        r"host (?:or domain name )?not found(?!, try again)", r"domain (?:does not|doesn't|doesnt|did not) exist",
        r"(?:no such|unknown|invalid|nonexistent|non-existent|unrouteable|unroutable) (?:mail )?(?:host|domain)(?! name)",
        # the host or domain, by that word or by its name, is unknown / not found / does not exist
        r"(?:(?<!sender )\b(?:host|domain)(?: ?name)?\b[^;:,]{0,50}?\s|(?<![@\w.-])[a-z0-9-]+(?:\.[a-z0-9-]+)+ )"
        r"(?:is )?(?:unknown|not found|does ?n[o']t exist|did not exist|non-?existent)(?!, try again)", r"domain (?:is )?not reachable", r"(?<![@\w.-])[a-z0-9-]+(?:\.[a-z0-9-]+)+ does not exist",
        r"host unknown", r"no such domain", r"(?<!from: )domain (?:name )?(?:is )?(?:invalid|not found|unknown)",
        r"name or service not known", r"no mx", r"name service error .*(?:host not found(?!, try again)|no data|no mx)",
        r"unrouteable address", r"host(?:name)? .{0,40} not found(?!, try again)", r"domain not found",
        r"recipient domain .{0,30}(?:not exist|invalid|unknown)", r"nxdomain",
        r"unknown domain", r"no route to host .{0,10}\(host unknown\)", r"domain is not (?:valid|registered)",
        r"dns lookup failure", r"the account or domain may not exist",
        r"domain (?:name )?lookup failed", r"cannot resolve (?:hostname|domain)",
        r"all relevant mx records point to non-existent hosts", r"host does not exist",
    ],
    "userunknown": [
        r"user(?:name)? (?:is )?(?:unknown|not (?:found|known|exist|listed|local)|doesn'?t exist|does not exist)",
        r"unknown (?:user|recipient|local[- ]?part|mailbox|address|account)",
        r"(?:no such|invalid|unknown|bad|non-?existent|nonexisting|non-existing) (?:user|recipient|mailbox|address|account|person|local user|e-?mail address)",
        r"(?:recipient|mailbox|address|account|addressee|e-?mail address|user account)(?: address)? (?:is )?(?:unknown|invalid|unavailable|not (?:found|known|exist|valid|listed)|does ?n[o']t exist|doesnt exist|rejected: user unknown)",
        r"(?:mailbox|user|recipient|address|account) (?:does|did) not exist", r"no mailbox", r"mailbox not found",
        # the user, mailbox, account or address (named or not) does not exist
        r"(?<!sender )(?<!sender's )\b(?:user|recipient|mailbox|account|address|addressee)\b"
        r"(?:(?!sender)[^;:]){0,50}?"
        r"\b(?:does ?n[o']t|did not|does no longer) exist",
        # "<addr>: recipient rejected" / "recipient rejected: <addr>", nothing more specific said
        r"recipient (?:address )?rejected(?:[.,;)]|$| \(| <|: <)",
        r"(?:user|recipient|address) (?:does ?n[o']t|does not) have an? (?:[\w.-]+ )?(?:account|mailbox)",
        r"not (?:a )?(?:valid|known) (?:user|recipient|mailbox|address)",
        r"recipient (?:address )?rejected: (?:user unknown|undeliverable|account|unknown|invalid)",
        r"user unknown", r"unknown user", r"no such user", r"user not found", r"address not found",
        r"recipient not found", r"recipientnotfound", r"recipient address rejected: access denied", r"resolver\.adr\.", r"unrouteable address",
        r"no account by that name", r"no mailbox here by that name", r"invalid mailbox",
        r"this user doesn'?t have a", r"email account that you tried to reach does not exist",
        r"the recipient name is not recognized", r"mailbox unavailable", r"address unknown",
        r"is not a valid (?:user|mailbox|recipient|e-?mail)", r"not listed in",
        r"unknown or illegal alias", r"no valid recipients", r"undeliverable address",
        r"destination (?:address|mailbox) (?:unknown|not found|does not exist)",
        r"address(?:ee)? unknown", r"mailbox .{0,40}(?:does not exist|not found|unknown)",
        r"user (?:\S+ )?(?:does not exist|not found|unknown)", r"not our customer",
        r"(?:user|mailbox|recipient)(?: \S+)? (?:is )?(?:not|no longer) (?:here|available|valid)",
        r"there is no (?:such )?(?:user|one|recipient|mailbox)", r"invalid (?:to|rcpt)",
        r"not a valid (?:recipient|user|mailbox)", r"check (?:if|that) (?:the )?(?:e-?mail )?address is correct", r"recipient (?:is )?not (?:local|exist)",
        r"no such (?:person|mailbox|local user|address)", r"requested action not taken: mailbox unavailable",
        r"mailbox is (?:unavailable|not available)", r"sorry, no mailbox", r"utilisateur inconnu",
        r"adresse (?:d'au moins un destinataire invalide|inconnue|invalide)", r"destinataire inconnu",
        r"no existe", r"nicht gefunden", r"unbekannt", r"invalid address",
    ],
    "filtered": [r"due to extended inactivity", r"(?:refused|rejected) by (?:the )?recipient",
                 r"recipient (?:has )?(?:refused|blocked)", r"domain filter", r"filter(?:ed)? by",
                 r"this message (?:is|was) (?:rejected|blocked) by (?:the )?recipient",
                 r"not accepting (?:mail|messages)", r"does not accept (?:mail|messages) from you"],
    "rejected": [
        r"sender (?:address )?(?:rejected|refused|denied|blocked|not allowed|verify failed|unknown|domain)",
        r"(?:address|domain) (?:of sender|in mail from)", r"mail from .{0,40}(?:rejected|refused|denied)",
        r"(?:your|the sender(?:'s)?) (?:e-?mail )?address (?:has been )?(?:rejected|refused|blacklisted|blocked)",
        r"sender (?:is )?on (?:a )?(?:block|black|deny)list",
        r"bad sender", r"invalid sender", r"sender .{0,30}(?:not|isn't) (?:permitted|allowed)",
        r"domain of sender address .{0,60}does not (?:exist|resolve)", r"return path",
        r"we do not accept mail from", r"from:? (?:domain|address) (?:is )?invalid", r"unable to verify sender", r"sender verify",
        r"not accept(?:ing)? mail from", r"envelope sender", r"rejected by the moderator",
        r"you do not have permission to post", r"does not have permission to",
        r"your email was rejected", r"you are not allowed to post",
    ],
    "blocked": [
        r"block(?:ed|list|ing)?\b", r"black ?listed", r"\brbl\b", r"\bdnsbl\b", r"spamhaus", r"spamcop", r"sorbs",
        r"barracuda", r"listed (?:at|in|on|by)", r"(?:ip|client|host|connection) (?:address )?(?:is )?(?:rejected|refused|denied|banned|not allowed)",
        r"client host .{0,60}rejected", r"access denied", r"banned", r"reject(?:ed)? (?:your|the) (?:ip|connection)",
        r"(?:has|have) been (?:temporarily |permanently )?(?:rate limited|blocked|deferred)",
        r"not allowed to send", r"refused to talk to me", r"connection refused", r"server refused",
        r"(?:your|the) (?:ip|server|host|network) (?:address )?(?:has been|is|was) (?:blocked|listed|blacklisted|rejected)",
        r"too many (?:errors|invalid recipients)", r"invalid ip", r"my name was rejected",
        r"(?:helo|ehlo) .{0,40}(?:rejected|refused|invalid|denied)", r"invalid (?:helo|ehlo|domain name)",
        r"poor reputation", r"dynamic (?:ip|address)", r"residential", r"mail server refuses",
        r"(?:rejected|refused) (?:because|due to) .{0,40}(?:ip|address|host)",
        r"please contact your internet service provider", r"see https?://\S*(?:block|spamhaus|rbl)",
    ],
    "networkerror": [
        r"network (?:error|is unreachable)", r"no route to host", r"connection (?:timed out|reset|refused|lost|dropped)",
        r"timed? ?out", r"name service error", r"host not found, try again", r"could not connect",
        r"unable to connect", r"lost connection", r"connect to .{0,80}:", r"dns (?:error|failure|problem)",
        r"temporary (?:dns|lookup) failure", r"mail for .{0,40} loops back to myself", r"mail loop",
        r"too many hops", r"routing loop", r"malformed or unexpected name server reply",
        r"unable to (?:establish|open) (?:an )?smtp connection", r"host unreachable", r"bad connection",
    ],
    "expired": [
        r"retry time(?:out)? (?:not reached|exceeded)", r"message (?:expired|timed out|could not be delivered for)",
        r"delivery (?:time expired|expired|attempts will continue|time ?out)", r"have been failing for a long time",
        r"giving up", r"gave up", r"queue (?:time|too long|lifetime)", r"too long in (?:the )?queue",
        r"in the queue too long", r"envelope expired", r"not (?:been )?delivered (?:for|within)",
        r"could not (?:be )?deliver(?:ed)? for", r"retry timeout exceeded", r"expired",
        r"undeliverable for too long", r"will be retried", r"delivery (?:is )?delayed", r"message delayed",
        r"unable to deliver message after multiple retries",
    ],
    "systemerror": [
        r"system error", r"internal (?:server )?error", r"server error", r"local (?:error|configuration error)",
        r"temporary (?:local )?(?:failure|problem|error)", r"service (?:not available|unavailable|temporarily unavailable)",
        r"try (?:again )?later", r"configuration error", r"mail (?:system|server) (?:error|problem)",
        r"queue file write error", r"i/o error", r"resources? (?:temporarily )?unavailable",
        r"server (?:is )?(?:busy|too busy)", r"duplicate(?:d)? message", r"unable to contact ldap",
        r"loop(?:ing)? detected", r"too many (?:hops|delivered-to)", r"database error", r"alias loop",
    ],
    "mailererror": [r"\bpipe to \|", r"command (?:died|failed|not found)", r"x-unix;",
                    r"mailer error", r"procmail", r"exit (?:code|status)", r"\bsh: ",
                    r"program (?:exited|failed)", r"permission denied", r"mail\.local"],
    "syntaxerror": [r"syntax error", r"command not recognized", r"unrecognized command",
                    r"bad sequence of commands", r"line too long in header"],
    "notaccept": [r"null mx", r"does not accept mail", r"not accept(?:ing)? (?:any )?(?:e-?)?mail",
                  r"no mx record found", r"accepts no mail"],
    "failedstarttls": [r"starttls (?:failed|error|negotiation)", r"tls handshake",
                       r"could not (?:complete|establish) (?:a )?tls"],
    "onhold": [],
}

TEXT_ORDER = (
    "mailboxfull", "mesgtoobig", "exceedlimit", "suspend", "hasmoved", "norelaying",
    "notaccept", "authfailure", "requireptr", "virusdetected", "spamdetected",
    "userunknown", "rejected", "hostunknown", "toomanyconn", "speeding", "badreputation", "policyviolation",
    "blocked", "filtered", "notcompliantrfc", "contenterror", "securityerror", "systemfull",
    "mailererror", "expired", "networkerror", "syntaxerror", "failedstarttls", "systemerror",
)



@dataclass(frozen=True, slots=True)
class Rule:
    """One data row of the table: the phrase `pattern` means `reason`."""
    id: str
    reason: str
    pattern: str


RULES: tuple[Rule, ...] = tuple(Rule(f"{name}:{pat}", name, pat)
                                for name, pats in _P.items() for pat in pats)
_ROWS: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    name: [(f"{name}:{pat}", re.compile(pat)) for pat in pats] for name, pats in _P.items()}


def _compile(allowed: frozenset[str] | None) -> dict[str, re.Pattern[str]]:
    table = {}
    for name, pats in _P.items():
        kept = [p for p in pats if allowed is None or f"{name}:{p}" in allowed]
        if kept:
            table[name] = re.compile("|".join(f"(?:{p})" for p in kept))
    return table


PATTERNS = _compile(None)
_ACTIVE: ContextVar[frozenset[str] | None] = ContextVar("bounce_rules", default=None)
_TRACE: ContextVar[bool] = ContextVar("bounce_rules_trace", default=False)
_TABLES: dict[frozenset[str], dict[str, re.Pattern[str]]] = {}


@contextmanager
def ruleset(allowed: frozenset[str] | None = None, *, trace: bool = False) -> Iterator[None]:
    """Within the block only the rules (text rows, rhost rows) whose ids are
    in `allowed` exist (None: all); with `trace`, parsed recipients name the
    rules that decided their reason (BounceRecipient.rules)."""
    if allowed is not None and allowed not in _TABLES:
        if len(_TABLES) > 256:
            _TABLES.clear()
        _TABLES[allowed] = _compile(allowed)
    t1, t2 = _ACTIVE.set(allowed), _TRACE.set(trace)
    try:
        yield
    finally:
        _ACTIVE.reset(t1)
        _TRACE.reset(t2)


def active(rule_id: str) -> bool:
    allowed = _ACTIVE.get()
    return allowed is None or rule_id in allowed


def tracing() -> bool:
    return _TRACE.get()


def _table() -> dict[str, re.Pattern[str]]:
    allowed = _ACTIVE.get()
    return PATTERNS if allowed is None else _TABLES[allowed]


def match_reason(text: str, order: Iterable[str] = TEXT_ORDER) -> str | None:
    table = _table()
    for name in order:
        pat = table.get(name)
        if pat is not None and pat.search(text):
            return name
    return None


def matches(name: str, text: str) -> bool:
    pat = _table().get(name)
    return bool(pat and pat.search(text))


def fired(name: str, text: str) -> tuple[str, ...]:
    """The ids of reason `name`'s active rows that match `text`."""
    return tuple(rid for rid, pat in _ROWS.get(name, ()) if active(rid) and pat.search(text))
