"""Automation on replies: rules `reply pattern -> action for a duration`,
optionally after a threshold of matches in a sliding window, and the actions
in force per site and per tenant. Pure: every call takes `now` (POSIX
seconds); nothing here reads a clock or does I/O.

Public API:
    ACTIONS = ("suspend", "suspend_tenant", "connection_limit", "message_rate",
               "bounce")
    Action(kind, value=None)    connection_limit: int >= 1; message_rate:
                                RateSpec (mta.policy.gcra); others: None
        str(action)             "suspend", "connection_limit=1", "message_rate=10/m"
    parse_action(text) -> Action
    Rule(pattern, action, duration, threshold=1, window=0.0, name="")
        pattern      regex source, searched case-insensitively in the reply
                     written "CODE ESC TEXT" ("421 4.7.0 [TS04] Messages ...")
        duration     seconds the action lasts (bounce: ignored, may be 0)
        threshold    matches needed within `window` seconds (threshold 1:
                     window 0, the first match fires)
        name         shown in events (default: f"{action} on /{pattern}/")
        .matches(reply) -> bool
    parse_rule(data, where) -> Rule       one `[[automation]]`-style table:
        match (regex, required), action (required), duration ("1h";
        required unless action is bounce), threshold ("3/10m": 3 matches
        within 10 minutes; an int N: N matches within the duration), name
    Fired(id, rule, scope, key, action, since, until, reason)
        id      f"{scope}:{key}:{action}"   (stable: what `lift` takes)
        scope   "site" (key: the site) | "tenant" (key: f"{tenant}@{provider
                or site}")
        reason  the reply that fired it: control characters removed, at most
                200 characters
    Automation()                the match history and the actions in force
        .observe(rules, *, reply, site, provider, tenant, synthetic, now)
                                -> list[Fired]   what fired or was extended
        .expire(now) -> list[Fired]     drop and return actions that ended
        .active(now) -> list[Fired]     in force at now, sorted by until
        .site_suspended(site, now) -> Fired | None
        .tenant_suspended(tenant, provider_or_site, now) -> Fired | None
        .connection_limit(site, now) -> int | None     the lowest in force
        .message_rate(site, now) -> RateSpec | None     the slowest in force
        .lift(target) -> list[Fired]    by id, or every action on a key
        .adopt(fired) -> bool           put in force an action fired elsewhere
                                        (another node); False: already as long
        .held() -> int                  match timestamps in memory

Rules:
  * A reply with synthetic=True (a deferral we made up ourselves: "site
    suspended", a throttle, a warm-up cap) is never recorded and never fires
    anything, even when it matches. This alone is the no-self-extension
    guarantee: only a provider's own reply can start or extend an action.
  * The window slides: a match counts while now - at <= window. When a
    (rule, key) reaches `threshold` matches, the rule fires and that
    (rule, key)'s history is cleared: the next firing needs `threshold` new
    matches. History is kept per (rule, key) where key is the key the
    action would have: per site for site actions, per tenant@provider for
    suspend_tenant (one tenant's mail makes its own suspension).
  * One action per id. The id carries the action's value, so
    connection_limit=1 and connection_limit=5 on one site are two actions;
    the queries take the strictest in force. A firing whose id is already in
    force extends it only when its until is later (since and id stay, rule
    and reason become the new ones; it is returned again, since < now telling
    the caller it is an extension); otherwise nothing changes and nothing is
    returned.
  * bounce fires (returned with since == until == now) but is never kept:
    the caller turns that recipient's deferral into a bounce.
  * suspend_tenant with tenant None: that rule is skipped (not recorded).
  * An action is in force while now < until; expire(now) removes the others.
    lift also clears the match history of the keys it lifts.

Invariants: per (rule, key) at most `threshold` timestamps are held
(threshold <= 1000); expire(now) also forgets histories whose newest match
has left the window, so memory follows the keys still active.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mta.core.durations import parse_duration
from mta.policy.gcra import RateSpec, parse_rate

__all__ = ["ACTIONS", "Action", "parse_action", "Rule", "parse_rule", "Fired",
           "Automation", "MAX_PATTERN", "MAX_THRESHOLD", "MAX_REASON"]

ACTIONS = ("suspend", "suspend_tenant", "connection_limit", "message_rate", "bounce")
MAX_PATTERN = 500       # characters of a rule's regex source
MAX_THRESHOLD = 1000    # matches a rule may wait for (bounds the history)
MAX_REASON = 200        # characters of the reply kept as a Fired's reason

_RULE_KEYS = ("match", "action", "duration", "threshold", "name")
_VALUED = ("connection_limit", "message_rate")
_ACTION_FORMS = "suspend, suspend_tenant, bounce, connection_limit=N, message_rate=N/period"


@dataclass(frozen=True)
class Action:
    kind: str
    value: int | RateSpec | None = None

    def __post_init__(self) -> None:
        if self.kind not in ACTIONS:
            raise ValueError(f"kind: {self.kind!r} is not one of {', '.join(ACTIONS)}")
        if self.kind == "connection_limit":
            if (isinstance(self.value, bool) or not isinstance(self.value, int)
                    or self.value < 1):
                raise ValueError(f"connection_limit: must be a whole number >= 1 "
                                 f"(got {self.value!r})")
        elif self.kind == "message_rate":
            if not isinstance(self.value, RateSpec):
                raise ValueError(f"message_rate: must be a rate like '10/m' "
                                 f"(got {self.value!r})")
        elif self.value is not None:
            raise ValueError(f"{self.kind}: takes no value (got {self.value!r})")

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value}"


def parse_action(text: str) -> Action:
    """One of: suspend, suspend_tenant, bounce, connection_limit=N,
    message_rate=SPEC (mta.policy.gcra.parse_rate); a ValueError names the
    text."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not an action (expected one of {_ACTION_FORMS})")
    kind, eq, value = text.strip().partition("=")
    kind, value = kind.strip(), value.strip()
    if kind not in ACTIONS or bool(eq) != (kind in _VALUED):
        raise ValueError(f"{text!r} is not an action (expected one of {_ACTION_FORMS})")
    if kind == "connection_limit":
        if not value.isascii() or not value.isdigit() or int(value) < 1:
            raise ValueError(f"{text!r}: the connection limit must be a whole number >= 1")
        return Action(kind, int(value))
    if kind == "message_rate":
        try:
            return Action(kind, parse_rate(value))
        except ValueError as e:
            raise ValueError(f"{text!r}: {e}") from None
    return Action(kind)


@dataclass(frozen=True)
class Rule:
    pattern: str
    action: Action
    duration: float
    threshold: int = 1
    window: float = 0.0
    name: str = ""
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"match: must be a non-empty regular expression "
                             f"(got {self.pattern!r})")
        if len(self.pattern) > MAX_PATTERN:
            raise ValueError(f"match: longer than {MAX_PATTERN} characters")
        try:
            regex = re.compile(self.pattern, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"match: {self.pattern!r} is not a valid regular "
                             f"expression ({e})") from None
        object.__setattr__(self, "_regex", regex)
        if not isinstance(self.action, Action):
            raise ValueError(f"action: must be an Action (got {self.action!r})")
        if not _finite(self.duration) or self.duration < 0:
            raise ValueError(f"duration: must be a finite number of seconds >= 0 "
                             f"(got {self.duration!r})")
        if self.duration == 0 and self.action.kind != "bounce":
            raise ValueError(f"duration: {self.action.kind} needs a duration > 0")
        if (isinstance(self.threshold, bool) or not isinstance(self.threshold, int)
                or not 1 <= self.threshold <= MAX_THRESHOLD):
            raise ValueError(f"threshold: must be a whole number from 1 to "
                             f"{MAX_THRESHOLD} (got {self.threshold!r})")
        if not _finite(self.window) or self.window < 0:
            raise ValueError(f"window: must be a finite number of seconds >= 0 "
                             f"(got {self.window!r})")
        if self.threshold == 1:
            object.__setattr__(self, "window", 0.0)
        elif self.window == 0:
            raise ValueError(f"threshold: {self.threshold} matches need a window > 0")
        if not isinstance(self.name, str):
            raise ValueError(f"name: must be a string (got {self.name!r})")
        if not self.name:
            object.__setattr__(self, "name", f"{self.action} on /{self.pattern}/")

    def matches(self, reply: str) -> bool:
        return self._regex.search(reply) is not None


def _finite(x: object) -> bool:
    return (not isinstance(x, bool) and isinstance(x, (int, float))
            and math.isfinite(x))


def parse_rule(data: Mapping[str, object], where: str) -> Rule:
    """One rule from a config table; every ValueError starts with `where`."""
    for key in data:
        if key not in _RULE_KEYS:
            raise ValueError(f"{where}: unknown key {key!r}")
    for key in ("match", "action"):
        if key not in data:
            raise ValueError(f"{where}: missing key {key!r}")
    pattern, action_text = data["match"], data["action"]
    if not isinstance(pattern, str):
        raise ValueError(f"{where}: match: must be a string (got {pattern!r})")
    if not isinstance(action_text, str):
        raise ValueError(f"{where}: action: must be a string (got {action_text!r})")
    try:
        action = parse_action(action_text)
    except ValueError as e:
        raise ValueError(f"{where}: action: {e}") from None
    duration = 0.0
    if "duration" in data:
        duration = _duration(data["duration"], where, "duration")
    elif action.kind != "bounce":
        raise ValueError(f"{where}: missing key 'duration' (how long {action} lasts, "
                         f"e.g. '1h')")
    threshold, window = _threshold(data.get("threshold", 1), duration, where)
    name = data.get("name", "")
    if not isinstance(name, str):
        raise ValueError(f"{where}: name: must be a string (got {name!r})")
    try:
        return Rule(pattern, action, duration, threshold, window, name)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _duration(value: object, where: str, key: str) -> float:
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key}: expected a duration like '1h' or '30m' "
                         f"(got {value!r})")
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(f"{where}: {key}: expected a duration like '1h' or '30m' "
                         f"(got {value!r})") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{where}: {key}: {value!r} is too long")
    return seconds


def _threshold(value: object, duration: float, where: str) -> tuple[int, float]:
    """(threshold, window) from "N/DURATION" or an int N (window: the
    rule's duration)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value > 1 and duration == 0:
            raise ValueError(f"{where}: threshold: {value} needs a window, "
                             f"write it like '{value}/10m'")
        count, window = value, duration
    elif isinstance(value, str) and "/" in value:
        text, _, span = value.partition("/")
        text = text.strip()
        if not text.isascii() or not text.isdigit():
            raise ValueError(f"{where}: threshold: expected 'N/duration' like '3/10m' "
                             f"(got {value!r})")
        count, window = int(text), _duration(span.strip(), where, "threshold")
        if window == 0:
            raise ValueError(f"{where}: threshold: the window must be > 0 (got {value!r})")
    else:
        raise ValueError(f"{where}: threshold: expected 'N/duration' like '3/10m' or a "
                         f"whole number (got {value!r})")
    if not 1 <= count <= MAX_THRESHOLD:
        raise ValueError(f"{where}: threshold: the count must be from 1 to "
                         f"{MAX_THRESHOLD} (got {value!r})")
    return count, window


@dataclass(frozen=True)
class Fired:
    id: str
    rule: Rule
    scope: str
    key: str
    action: Action
    since: float
    until: float
    reason: str


def _reason(reply: str) -> str:
    """The reply as one clean line: CR/LF/TAB become spaces, other control
    characters go, at most MAX_REASON characters."""
    out = []
    for ch in reply:
        if unicodedata.category(ch) == "Cc":
            if ch in "\r\n\t":
                out.append(" ")
        else:
            out.append(ch)
    return "".join(out).strip()[:MAX_REASON]


# A rule's identity for its match history: equal rules (a reload that left
# the rule alone) share their history. Strings and numbers only, so the key
# never depends on how hashable the action's value is.
_RuleKey = tuple[str, str, int, float]


def _rule_key(rule: Rule) -> _RuleKey:
    return (rule.pattern, str(rule.action), rule.threshold, rule.window)


class Automation:
    """Per-key match history and the actions in force."""

    def __init__(self) -> None:
        self._history: dict[tuple[_RuleKey, str], deque[float]] = {}
        self._window: dict[tuple[_RuleKey, str], float] = {}
        self._in_force: dict[str, Fired] = {}

    def observe(self, rules: Sequence[Rule], *, reply: str, site: str,
                provider: str | None, tenant: str | None, synthetic: bool,
                now: float) -> list[Fired]:
        """Record the reply against every matching rule; return what fired
        (new or extended actions, and bounces), in rule order."""
        if synthetic:
            return []
        fired: list[Fired] = []
        seen: set[_RuleKey] = set()
        for rule in rules:
            rk = _rule_key(rule)
            if rk in seen or not rule.matches(reply):
                continue
            seen.add(rk)
            if rule.action.kind == "suspend_tenant":
                if tenant is None:
                    continue
                scope, key = "tenant", f"{tenant}@{provider or site}"
            else:
                scope, key = "site", site
            if not self._record(rule, (rk, key), now):
                continue
            result = self._fire(rule, scope, key, reply, now)
            if result is not None:
                fired.append(result)
        return fired

    def _record(self, rule: Rule, hkey: tuple[_RuleKey, str], now: float) -> bool:
        """Count one match; True when the threshold is reached (the history
        is then cleared)."""
        if rule.threshold == 1:
            return True
        times = self._history.get(hkey)
        if times is None:
            times = self._history[hkey] = deque(maxlen=rule.threshold)
            self._window[hkey] = rule.window
        times.append(now)
        while times and now - times[0] > rule.window:
            times.popleft()
        if len(times) < rule.threshold:
            return False
        del self._history[hkey], self._window[hkey]
        return True

    def _fire(self, rule: Rule, scope: str, key: str, reply: str,
              now: float) -> Fired | None:
        action = rule.action
        ident = f"{scope}:{key}:{action}"
        if action.kind == "bounce":
            return Fired(ident, rule, scope, key, action, now, now, _reason(reply))
        until = now + rule.duration
        current = self._in_force.get(ident)
        if current is not None and current.until > now:
            if until <= current.until:
                return None
            since = current.since
        else:
            since = now
        fired = Fired(ident, rule, scope, key, action, since, until, _reason(reply))
        self._in_force[ident] = fired
        return fired

    def expire(self, now: float) -> list[Fired]:
        """Remove and return the actions whose until <= now (sorted by
        until), and forget match histories that left their window."""
        ended = sorted((f for f in self._in_force.values() if f.until <= now),
                       key=lambda f: (f.until, f.id))
        for f in ended:
            del self._in_force[f.id]
        stale = [h for h, times in self._history.items()
                 if not times or now - times[-1] > self._window[h]]
        for h in stale:
            del self._history[h], self._window[h]
        return ended

    def active(self, now: float) -> list[Fired]:
        """The actions in force at now, sorted by until (then id). Does not
        remove the ended ones: expire does, so the caller sees them end."""
        return sorted((f for f in self._in_force.values() if f.until > now),
                      key=lambda f: (f.until, f.id))

    def _find(self, scope: str, key: str, kind: str, now: float) -> list[Fired]:
        return [f for f in self._in_force.values()
                if f.scope == scope and f.key == key and f.action.kind == kind
                and f.until > now]

    def site_suspended(self, site: str, now: float) -> Fired | None:
        found = self._find("site", site, "suspend", now)
        return found[0] if found else None

    def tenant_suspended(self, tenant: str, provider_or_site: str,
                         now: float) -> Fired | None:
        found = self._find("tenant", f"{tenant}@{provider_or_site}", "suspend_tenant", now)
        return found[0] if found else None

    def connection_limit(self, site: str, now: float) -> int | None:
        limits = [f.action.value for f in self._find("site", site, "connection_limit", now)]
        ints = [v for v in limits if isinstance(v, int)]
        return min(ints) if ints else None

    def message_rate(self, site: str, now: float) -> RateSpec | None:
        specs = [f.action.value for f in self._find("site", site, "message_rate", now)]
        rates = [v for v in specs if isinstance(v, RateSpec)]
        if not rates:
            return None
        # slowest: fewest messages a second; a tie keeps the smaller burst
        return min(rates, key=lambda r: (r.per_second, r.count))

    def adopt(self, fired: Fired) -> bool:
        current = self._in_force.get(fired.id)
        if fired.action.kind == "bounce" or (current is not None and current.until >= fired.until):
            return False
        self._in_force[fired.id] = fired
        return True

    def held(self) -> int:
        """Match timestamps held, over every (rule, key)."""
        return sum(len(times) for times in self._history.values())

    def lift(self, target: str) -> list[Fired]:
        """Lift the action with id `target`, or else every action whose key
        is `target` (a site, or "tenant@provider"); returns what was lifted,
        sorted by until. The lifted keys' match histories are cleared too."""
        if target in self._in_force:
            lifted = [self._in_force[target]]
        else:
            lifted = [f for f in self._in_force.values() if f.key == target]
        lifted.sort(key=lambda f: (f.until, f.id))
        keys = {f.key for f in lifted}
        for f in lifted:
            del self._in_force[f.id]
        for h in [h for h in self._history if h[1] in keys]:
            del self._history[h], self._window[h]
        return lifted
