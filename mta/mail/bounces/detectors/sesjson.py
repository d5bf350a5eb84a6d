"""Amazon SES notifications delivered as JSON (SNS envelope or bare).

Public API:
    load_json(mail) -> dict | None   the SES notification object, if the body is one
    detect(mail) -> BounceReport | None   bounces ("bounce") and deliveries ("delivery")

Complaints in the same format are read by the arf detector. A Permanent
bounceType gives 5.x.x, Transient 4.x.x, when a recipient carries no status.
"""

from __future__ import annotations

import json
from typing import Any

from mta.mail.bounces.common import make_recipient
from mta.mail.bounces.context import Mail
from mta.mail.bounces.model import BounceRecipient, BounceReport

# json.loads' object, its shape unchecked: SES fields are read with .get() and
# `or` defaults, and a body of the wrong shape fails inside parse's catch-all
# (kind "nonbounce", detector "error") as it always has.
JsonObject = dict[str, Any]


def load_json(mail: Mail) -> JsonObject | None:
    text = mail.text
    if "notificationType" not in text and "eventType" not in text:
        return None
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    text = text[start:end + 1]
    try:
        data = json.loads(text)
    except ValueError:
        # Folded or redacted JSON: unfold the SNS "Message" string and retry.
        try:
            data = json.loads(text.replace("\n", ""))
        except ValueError:
            return None
    if isinstance(data, dict) and isinstance(data.get("Message"), str):
        try:
            data = json.loads(data["Message"])
        except ValueError:
            return None
    if not isinstance(data, dict):
        return None
    if "eventType" in data and "notificationType" not in data:
        data["notificationType"] = data["eventType"]
    return data


def detect(mail: Mail) -> BounceReport | None:
    data = load_json(mail)
    if not data:
        return None
    kind = data.get("notificationType")
    if kind == "Bounce":
        b = data.get("bounce") or {}
        temp = (b.get("bounceType") or "").lower() == "transient"
        remote = (b.get("reportingMTA") or "").split(";", 1)[-1].strip()
        out: list[BounceRecipient] = []
        for r in b.get("bouncedRecipients") or []:
            addr = r.get("emailAddress") or ""
            if not addr:
                continue
            diag = r.get("diagnosticCode") or b.get("bounceSubType") or ""
            if ";" in diag[:12]:
                diag = diag.split(";", 1)[1]
            out.append(make_recipient(addr, action=r.get("action") or "failed",
                                      status=r.get("status") or "", diagnostic=diag,
                                      remote_mta=remote, temporary=temp))
        return BounceReport("bounce", out, detector="sesjson")
    if kind == "Delivery":
        d = data.get("delivery") or {}
        out = [make_recipient(a, action="delivered", status="2.0.0",
                              diagnostic=d.get("smtpResponse") or "")
               for a in d.get("recipients") or []]
        return BounceReport("delivery", out, detector="sesjson")
    return None
