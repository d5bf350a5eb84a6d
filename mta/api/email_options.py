"""POST /emails fields beyond Resend's message: template, stream, topic (issue 16).

One job: read and check these fields of one email's JSON object; the build
(runtime/api_content.py) acts on them.

API:
    SendOptions(template, stream, topic)         frozen
    TemplateRef(ref, variables, version)          frozen
    parse_options(doc) -> SendOptions             ValueError subclasses from the caller's
                                                  `fail(field, reason, name)` callback
    STREAMS = ("transactional", "broadcast")

Fields:
    template    {"id": id or alias (required), "variables": object?, "version": int?}
                (Resend's shape; "version" is ours: a published version, default the
                latest). With a template, html and text come from it (giving them too is
                an error) and from/subject/reply_to default to the template's.
    stream      "transactional" (default: the key's, else transactional) or "broadcast":
                broadcast mail gets RFC 8058 one-click unsubscribe headers and goes to
                one recipient per message.
    topic       optional, with broadcast: a name the unsubscription records
                (letters, digits, "_", "-", ".", ≤ 64).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

__all__ = ["STREAMS", "SendOptions", "TemplateRef", "parse_options"]

STREAMS = ("transactional", "broadcast")
_REF = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOPIC = re.compile(r"[A-Za-z0-9_.-]{1,64}")

Fail = Callable[..., NoReturn]


@dataclass(frozen=True)
class TemplateRef:
    ref: str
    variables: dict[str, Any] = field(default_factory=dict)
    version: int | None = None


@dataclass(frozen=True)
class SendOptions:
    template: TemplateRef | None = None
    stream: str | None = None        # None: the key's default
    topic: str = ""


def _template(value: object, fail: Fail) -> TemplateRef:
    if not isinstance(value, dict):
        fail("template", "expected an object {\"id\", \"variables\"}")
    ref = value.get("id")
    if ref is None:
        fail("template.id", "required", "missing_required_field")
    if not isinstance(ref, str) or not _REF.fullmatch(ref):
        fail("template.id", "a template id or alias: 1 to 64 letters, digits, '_' or '-'")
    variables = value.get("variables")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        fail("template.variables", "expected an object of name → value")
    version = value.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or not 1 <= version <= 1_000_000):
        fail("template.version", "a published version number (1 or more)")
    return TemplateRef(ref, variables, version)


def parse_options(doc: dict[str, Any], fail: Fail) -> SendOptions:
    template = None
    if doc.get("template") is not None:
        template = _template(doc["template"], fail)
        for key in ("html", "text", "react"):
            if doc.get(key) is not None:
                fail(key, "give a template or a body, not both")
    stream = doc.get("stream")
    if stream is not None and stream not in STREAMS:
        fail("stream", f"one of {', '.join(STREAMS)}")
    topic = doc.get("topic")
    if topic is None:
        topic = ""
    elif not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
        fail("topic", "1 to 64 letters, digits, '_', '-' or '.'")
    elif stream != "broadcast":
        fail("topic", "only broadcast mail has a topic (set stream: broadcast)")
    return SendOptions(template, stream, topic)
