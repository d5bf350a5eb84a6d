"""Who followed a tracked link or fetched the open pixel: a label, or None for a person.

One job: label clicks and opens that were most likely not a person reading
the mail, so that reports can count them apart (nothing is dropped here:
the label travels with the event and the reader of the numbers decides).

API (pure: the caller passes the request's facts and `now`)
    click_label(*, method, user_agent, now, delivered_at) -> str | None
    open_label(*, user_agent, now, delivered_at) -> str | None
    PREFETCH_SECONDS        a fetch this soon after delivery is a machine's
    SCANNER_MARKS, BOT_WORDS, PROXY_MARKS, APPLE_PRIVACY_AGENT   the data tables

Labels, the first that applies:
    "head"      (clicks) a HEAD request: link checkers and previewers probe
                with HEAD; a browser following a link never does.
    "proxy"     (opens) a mail provider's image proxy fetched the pixel:
                - "GoogleImageProxy" (Gmail: images are fetched through
                  ggpht.com when the reader opens the mail, then cached, so
                  a proxy open is a real first open but later ones are not
                  seen and the reader's IP and agent are Google's);
                - "YahooMailProxy" (Yahoo and AOL mail, the same scheme);
                - a User-Agent of exactly "Mozilla/5.0": Apple Mail Privacy
                  Protection fetches every remote image of a message through
                  Apple's relays soon after it arrives, whether or not it is
                  ever read, with this bare agent (no real browser sends so
                  little); such an "open" says nothing about a reader.
    "scanner"   a security gateway's link or attachment scanner, a previewer
                or a bot, by a mark in its User-Agent (SCANNER_MARKS,
                BOT_WORDS), or no User-Agent at all. curl and wget are not
                marks: a person may well use them.
    "prefetch"  delivered_at is known and the request came less than
                PREFETCH_SECONDS after it (or before it: a clock apart): a
                machine that reads mail on arrival, not a person.
    None        looks like a person.

Invariants: matching is by case-insensitive substring on the User-Agent
("bot" only as the end of a word, so "Googlebot/2.1" and "Slackbot-…"
are bots but "Abbott" is not, nor a "Cubot" phone; "crawler" and "spider"
anywhere); no I/O, no clock.
"""

from __future__ import annotations

import re

__all__ = ["APPLE_PRIVACY_AGENT", "BOT_WORDS", "PREFETCH_SECONDS", "PROXY_MARKS",
           "SCANNER_MARKS", "click_label", "open_label"]

PREFETCH_SECONDS = 10.0

# Security gateways that follow every link of inbound mail before the reader
# does, link previewers, and HTTP libraries no person browses with. Lower case.
SCANNER_MARKS: tuple[str, ...] = (
    "barracuda",                        # Barracuda Email Security / Link Protection
    "proofpoint",                       # Proofpoint URL Defense
    "mimecast",                         # Mimecast URL Protect
    "safelinks",                        # Microsoft Defender for Office 365 Safe Links
    "skypeuripreview",                  # Teams / Skype link previews
    "microsoft office existence discovery",   # Office probing a link before opening it
    "microsoft office protocol discovery",
    "ms-office",                        # Office apps fetching a link ("ms-office; MSOffice 16")
    "google-safety",                    # Gmail's safe browsing fetcher
    "google-inspectiontool",
    "symantec", "messagelabs", "trendmicro", "trend micro", "sophos", "fireeye",
    "forcepoint", "cisco-ironport", "ironport", "fortiguard", "zscaler", "checkpoint",
    "headlesschrome", "phantomjs",      # automated browsers
    "python-requests", "python-urllib", "go-http-client", "java/", "okhttp",
    "libwww-perl", "apache-httpclient", "aiohttp",
)
# Words that mark a bot: "bot" ending a word ("Googlebot", "bingbot",
# "AhrefsBot", "Slackbot-LinkExpanding"), "crawler" and "spider" anywhere.
BOT_WORDS: tuple[str, ...] = ("bot", "crawler", "spider")
# Phones and browsers whose names end in "bot" but are people.
_NOT_BOTS = ("cubot",)
# Mail providers' image proxies (lower case).
PROXY_MARKS: tuple[str, ...] = ("googleimageproxy", "yahoomailproxy")
APPLE_PRIVACY_AGENT = "Mozilla/5.0"

_BOT = re.compile(r"bot(?![a-z])|crawler|spider")


def _is_scanner(user_agent: str) -> bool:
    ua = user_agent.strip().lower()
    if not ua:
        return True
    if any(mark in ua for mark in SCANNER_MARKS):
        return True
    for m in _BOT.finditer(ua):
        if not any(ua[max(0, m.end() - len(w)):m.end()] == w for w in _NOT_BOTS):
            return True
    return False


def _prefetch(now: float, delivered_at: float | None) -> bool:
    return delivered_at is not None and now - delivered_at < PREFETCH_SECONDS


def click_label(*, method: str, user_agent: str, now: float,
                delivered_at: float | None) -> str | None:
    """"head", "scanner", "prefetch", or None (a person, as far as we can tell)."""
    if method.upper() == "HEAD":
        return "head"
    if _is_scanner(user_agent):
        return "scanner"
    if _prefetch(now, delivered_at):
        return "prefetch"
    return None


def open_label(*, user_agent: str, now: float, delivered_at: float | None) -> str | None:
    """"proxy", "scanner", "prefetch", or None (a person, as far as we can tell)."""
    ua = user_agent.strip()
    lowered = ua.lower()
    if ua == APPLE_PRIVACY_AGENT or any(mark in lowered for mark in PROXY_MARKS):
        return "proxy"
    if _is_scanner(user_agent):
        return "scanner"
    if _prefetch(now, delivered_at):
        return "prefetch"
    return None
