"""Remote-host rules: how some destinations' replies must be read.

Public API:
    adjust(address, reason, status, command, text) -> (reason, rule id or "")
    RULES: (id, domain regex, text regex or None) rows

Some providers answer "user unknown" for messages their *domain filter*
refused after DATA (Japanese mobile carriers: the recipient only accepts
mail from listed senders). Their "550 Unknown user" / "550 : User unknown"
outside RCPT is therefore "filtered", not proof the mailbox is gone -- a
rule keyed on the recipient's domain, as Sisimai's Rhost modules do.

Invariants: rules only ever change a reason to a softer one, never mark
an address hard.
"""

from __future__ import annotations

import re

from mta.mail.bounces.patterns import active

# (rule id, domain, what the filter rejection looks like); None: any
# user-unknown text outside RCPT. au/ezweb name the address in a real "user
# unknown" and leave it blank ("550 : User unknown") when the domain filter
# refused. The ids take part in patterns.ruleset (rules are data).
RULES = (
    ("rhost:ezweb-domain-filter",
     re.compile(r"@(?:[\w-]+\.)*(?:ezweb\.ne\.jp|au\.com)$", re.I),
     re.compile(r"\b550:? ?: user unknown", re.I)),
    ("rhost:jp-carrier-domain-filter",
     re.compile(r"@(?:[\w-]+\.)*(?:docomo\.ne\.jp|softbank\.ne\.jp|i\.softbank\.jp|"
                r"disney\.ne\.jp|pdx\.ne\.jp|willcom\.com)$", re.I), None),
)


def adjust(address: str, reason: str, status: str, command: str | None,
           text: str = "") -> tuple[str, str]:
    """(reason, the id of the rule that changed it or "")."""
    if reason != "userunknown" or command == "RCPT" or status[1:4] == ".1.":
        return reason, ""
    for rule_id, domain, filtered in RULES:
        if active(rule_id) and domain.search(address):
            if filtered is None or filtered.search(text):
                return "filtered", rule_id
    return reason, ""
