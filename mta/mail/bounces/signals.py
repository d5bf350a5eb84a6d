"""Is this message a failure notice at all?  Header and text signals.

Public API:
    looks_like_bounce(mail) -> bool
    looks_like_autoreply(mail) -> bool
    says_temporary(text) -> bool | None   True: a delay notice, False: permanent, None: unsaid

Invariants: signals are structural or phrase-level, in several languages,
never tied to one message; a mailer-daemon/postmaster sender or an
X-Failed-Recipients header alone is enough for a bounce, and so is an fml
(X-MLServer) error notice ("Loop Alert:", "Security Alert:", ...).
"""

from __future__ import annotations

import re

from mta.mail.bounces.context import Mail
from mta.mail.bounces.message import header

_DAEMON = re.compile(
    r"mailer-daemon|post_?master|mail delivery (?:system|subsystem|service)|mail ?administrator|"
    r"system administrator|mdaemon|double-bounce|bounce[sd]?@|nobody@|mail-?daemon|"
    r"mail delivery|delivery subsystem|mailer@|notify@|autoreply-bounce|mmsmaster|smtp\w*@",
    re.I)
_SUBJECT = re.compile(
    r"undeliver|undelivered|"
    r"delivery (?:status|fail|failure|notification|report|problem|error|has failed)|"
    r"returned mail|return(?:ed)? to sender|failure notice|mail delivery failed|non[- ]?deliver|"
    r"could not (?:be )?deliver|delivery (?:delayed|warning)|warning: (?:could not|message)|"
    r"mail (?:system )?error|bounce|not delivered|rejected|failed delivery|delivery incomplete|"
    r"message not deliverable|nondeliverable|fail(?:ed|ure)|unable to deliver|error|"
    r"unzustellbar|non remis|no entregado|不達|エラー|届きません|送信できません|配信不能|"
    r"mail could not|permanent (?:error|failure)|notification|warning", re.I)
_TEXT = re.compile(
    r"could not be delivered|couldn'?t be delivered|was not delivered|undeliverable|"
    r"delivery (?:to the following|has failed|failed|failure|problem)|permanent (?:error|fatal)|"
    r"following (?:address(?:es)?|recipients?)|failed (?:permanently|recipient)|"
    r"wasn'?t able to deliver|unable to deliver|not be delivered|did not reach|"
    r"returned to (?:the )?sender|smtp error|remote host said|rejected|mail delivery|"
    r"user unknown|recipient|mailbox|delivery status notification|"
    r"this is an automatically generated",
    re.I)
_FML = re.compile(r"\bfml\b", re.I)
_FML_ERROR = re.compile(r"loop alert|loop back warning|unix from loop|security alert|"
                        r"not member|are not member|reject mail|fml system error|"
                        r"spam mail from a spammer", re.I)
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?[ -]?(?:reply|response|respons|antwort|svar)|auto:|"
    r"out of (?:the )?office|abwesenheit|absence|vacation|away from|r[ée]ponse automatique|"
    r"respuesta autom|risposta automatica|自動)", re.I)
_TEMP = re.compile(r"\b(?:delayed|will (?:be retried|retry|continue|keep trying)|"
                   r"still (?:trying|being retried)|temporar(?:y|ily)|not yet been delivered|"
                   r"has not been delivered yet|warning:)", re.I)
_PERM = re.compile(r"permanent|gave up|giving up|failed permanently|fatal|could not be delivered|"
                   r"undeliverable|has been rejected|not going to try again", re.I)


def looks_like_bounce(mail: Mail) -> bool:
    if mail.msg.get("X-Failed-Recipients"):
        return True
    if _FML.search(header(mail.msg, "X-MLServer")) and _FML_ERROR.search(mail.subject):
        return True             # fml (mailing-list manager) error notices
    if _DAEMON.search(mail.from_header) or _DAEMON.search(header(mail.msg, "Return-Path")):
        return True
    if _SUBJECT.search(mail.subject) and _TEXT.search(mail.notice):
        return True
    # RFC 5321 4.5.5: notifications go out with the null reverse path
    if header(mail.msg, "Return-Path").strip() == "<>" and _TEXT.search(mail.notice):
        return True
    return False


def looks_like_autoreply(mail: Mail) -> bool:
    msg = mail.msg
    auto = (msg.get("Auto-Submitted") or "").strip().lower()
    if auto.startswith("auto-replied"):
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Autoresponder"):
        return True
    if (msg.get("Precedence") or "").strip().lower() == "auto_reply":
        return True
    if (msg.get("X-Auto-Response-Suppress") and _AUTO_SUBJECT.search(mail.subject)):
        return True
    return bool(_AUTO_SUBJECT.search(mail.subject))


def says_temporary(text: str) -> bool | None:
    if _PERM.search(text):
        return False
    if _TEMP.search(text):
        return True
    return None
