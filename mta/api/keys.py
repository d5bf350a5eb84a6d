"""API keys: the token format, the key model, checks, and authentication.

One job: say what an API key token looks like, make new ones, check the
inputs that describe a key, and decide whether a presented token is a live
key — directly against a store, or through `KeyCache` (what the HTTP layer
holds).

Token: ``mta_live_<id>_<secret>`` or ``mta_test_<id>_<secret>``; `id` is 12
characters of lower-case base32 (a-z, 2-7: 60 bits), `secret` 32 characters
of `secrets.token_urlsafe` (192 bits; it may contain ``_`` and ``-``, so a
token is split at its first three ``_`` only). The *prefix* ``mta_live_<id>``
names the key everywhere (lists, logs); the secret is shown once, at
creation, and never stored: the store keeps the SHA-256 (hex) of the whole
token. A fast hash is right here: the token is 192 random bits, so there is
nothing for a slow, salted hash (scrypt, as for SMTP passwords chosen by
people) to protect against guessing; comparison is `hmac.compare_digest`.

Public API:
    PERMISSIONS = ("full_access", "sending_access");  MODES = ("live", "test")
    new_token(test) -> (id, token)
    parse_token(token) -> (mode, id) | None     None for anything malformed (any
                                                object, length, non-ASCII); never raises
    parse_prefix(text) -> (mode, id) | None     the same for ``mta_live_<id>``
    token_hash(token) -> str                    SHA-256 hex
    check_name(name) -> str;  check_permission(p) -> str
    check_domains(domains) -> tuple[str, ...]   IDNA A-labels, "*.d" = d's subdomains
    check_rate_limit(r) -> float                requests/s, 0 = the daemon's default
        (each check raises ValueError with a message)
    ApiKey                  the frozen key: .prefix, .mode, .credential ("api:NAME",
                            the name the ledger, idempotency and suppression scopes
                            use), .scopes (None = any domain), .as_json()
    KeyStore                the Protocol the HTTP side needs (get/create/list/revoke/touch)
    StoreKeys(rows)         a KeyStore over a row store (mta.spool.apikeys.SqliteApiKeys)
    KeyNameTaken            a KeyError: an active key already has the name
    authenticate(store_get, token) -> ApiKey | None
    KeyCache(store, clock, ttl=2.0)   .authenticate(token), await .authenticate_async(token),
                                      .forget(key_id=None)

Invariants:
- `authenticate` refuses a malformed token, an unknown id, a wrong secret
  (constant-time compare of the whole token's hash) and a revoked key.
- `KeyCache` keeps what the store said about an id for `ttl` seconds: a key
  revoked by another process (`mta key revoke`) stops working within `ttl`;
  in this process call `.forget(id)` after revoking and it stops at once.
  Unknown ids are remembered too (so a flood of random tokens does not hit
  the store each time), in an LRU of at most 10,000 entries, as are found
  ids: memory does not grow with what clients send. It is not thread-safe:
  use it from one thread (the event loop); `authenticate_async` runs only
  the store calls in worker threads.
- A successful authentication records the key's use (`touch`) at most once
  a minute per key; a failure to record it is logged, never an auth failure.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import hashlib
import hmac
import logging
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mta.core.clock import Clock
from mta.policy.senders import normal_scopes

__all__ = ["MODES", "PERMISSIONS", "ApiKey", "KeyCache", "KeyNameTaken", "KeyStore",
           "StoreKeys", "authenticate", "check_domains", "check_name", "check_permission",
           "check_rate_limit", "new_token", "parse_prefix", "parse_token", "token_hash"]

log = logging.getLogger("mta.api")

PERMISSIONS = ("full_access", "sending_access")
MODES = ("live", "test")
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
ID_LENGTH = 12
SECRET_BYTES = 24                       # token_urlsafe(24) is 32 characters
PREFIX_LENGTH = len("mta_live_") + ID_LENGTH
TOKEN_LENGTH = PREFIX_LENGTH + 1 + 32
MAX_NAME = 100
MAX_RATE_LIMIT = 1_000_000.0
TOUCH_EVERY = 60.0                      # seconds between two last-used writes of a key
CACHE_MAX = 10_000

_TOKEN = re.compile(r"mta_(live|test)_([a-z2-7]{12})_([A-Za-z0-9_-]{32})")
_PREFIX = re.compile(r"mta_(live|test)_([a-z2-7]{12})")


# -- tokens --------------------------------------------------------------------------

def new_token(test: bool) -> tuple[str, str]:
    """A fresh (id, token)."""
    key_id = "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return key_id, f"mta_{'test' if test else 'live'}_{key_id}_{secret}"


def parse_token(token: object) -> tuple[str, str] | None:
    if not isinstance(token, str) or len(token) != TOKEN_LENGTH:
        return None
    m = _TOKEN.fullmatch(token)
    return (m[1], m[2]) if m else None


def parse_prefix(text: object) -> tuple[str, str] | None:
    if not isinstance(text, str) or len(text) != PREFIX_LENGTH:
        return None
    m = _PREFIX.fullmatch(text)
    return (m[1], m[2]) if m else None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _same_hash(stored: str, token: str) -> bool:
    return hmac.compare_digest(stored.encode("utf-8", "surrogatepass"),
                               token_hash(token).encode("ascii"))


# -- checks --------------------------------------------------------------------------

def check_name(name: object) -> str:
    if not isinstance(name, str) or not name or not name.strip():
        raise ValueError("a key name must not be empty")
    if len(name) > MAX_NAME:
        raise ValueError(f"a key name is at most {MAX_NAME} characters (this one has "
                         f"{len(name)})")
    if not name.isprintable():
        raise ValueError(f"a key name must be printable (no control characters): {name!r}")
    if name != name.strip():
        raise ValueError(f"a key name must not start or end with a space: {name!r}")
    return name


def check_permission(permission: object) -> str:
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r} (one of: {', '.join(PERMISSIONS)})")
    return str(permission)


def check_domains(domains: Sequence[str]) -> tuple[str, ...]:
    return normal_scopes(domains)      # the same scopes as SMTP credentials


def check_rate_limit(rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) \
            or not math.isfinite(rate) or not 0 <= rate <= MAX_RATE_LIMIT:
        raise ValueError(f"a rate limit is requests per second from 0 (the default) to "
                         f"{MAX_RATE_LIMIT:g}, not {rate!r}")
    return float(rate)


# -- the key -------------------------------------------------------------------------

def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    permission: str                     # "full_access" | "sending_access"
    domains: tuple[str, ...]            # () = any domain
    test: bool
    rate_limit: float                   # requests/s; 0 = the daemon's default
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None

    @property
    def mode(self) -> str:
        return "test" if self.test else "live"

    @property
    def prefix(self) -> str:
        return f"mta_{self.mode}_{self.id}"

    @property
    def credential(self) -> str:
        return f"api:{self.name}"

    @property
    def scopes(self) -> tuple[str, ...] | None:
        """The sender policy's scopes: None for a key pinned to no domain."""
        return self.domains or None

    def as_json(self) -> dict[str, Any]:
        """Resend's GET /api-keys item (id, name, created_at) plus ours."""
        return {"id": self.id, "name": self.name, "created_at": _iso(self.created_at),
                "prefix": self.prefix, "permission": self.permission,
                "domains": list(self.domains), "mode": self.mode,
                "rate_limit": self.rate_limit, "last_used_at": _iso(self.last_used_at),
                "revoked_at": _iso(self.revoked_at)}


class KeyNameTaken(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "the key name is taken"


class KeyStore(Protocol):
    def get(self, key_id: str) -> tuple[ApiKey, str] | None: ...
    def create(self, name: str, *, permission: str = "full_access",
               domains: Sequence[str] = (), test: bool = False, rate_limit: float = 0.0,
               now: float) -> tuple[ApiKey, str]: ...
    def list(self, include_revoked: bool = False) -> builtins.list[ApiKey]: ...
    def revoke(self, id_or_name: str, now: float) -> ApiKey | None: ...
    def touch(self, key_id: str, now: float) -> None: ...


# -- the store adapter ---------------------------------------------------------------

class KeyRow(Protocol):
    """One stored key as the row store returns it (spool.apikeys.ApiKeyRow)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def hash(self) -> str: ...
    @property
    def permission(self) -> str: ...
    @property
    def domains(self) -> tuple[str, ...]: ...
    @property
    def test(self) -> bool: ...
    @property
    def rate_limit(self) -> float: ...
    @property
    def created(self) -> float: ...
    @property
    def revoked(self) -> float | None: ...
    @property
    def last_used(self) -> float | None: ...


class KeyRows(Protocol):
    """The row store (spool.apikeys.SqliteApiKeys). `insert` raises a
    KeyError with `.column` "id" or "name" on a conflict."""

    def get(self, key_id: str) -> KeyRow | None: ...
    def rows(self, include_revoked: bool = False) -> Sequence[KeyRow]: ...
    def insert(self, *, id: str, name: str, hash: str, permission: str,
               domains: Sequence[str], test: bool, rate_limit: float,
               created: float) -> KeyRow: ...
    def revoke(self, id_or_name: str, now: float) -> KeyRow | None: ...
    def touch(self, key_id: str, now: float, every: float = ...) -> None: ...


def key_of(row: KeyRow) -> ApiKey:
    return ApiKey(id=row.id, name=row.name, permission=row.permission,
                  domains=tuple(row.domains), test=bool(row.test),
                  rate_limit=float(row.rate_limit), created_at=row.created,
                  revoked_at=row.revoked, last_used_at=row.last_used)


class StoreKeys:
    """`KeyStore` over a row store: checks the inputs, makes the token."""

    def __init__(self, rows: KeyRows):
        self.rows = rows

    def get(self, key_id: str) -> tuple[ApiKey, str] | None:
        row = self.rows.get(key_id)
        return None if row is None else (key_of(row), row.hash)

    def create(self, name: str, *, permission: str = "full_access",
               domains: Sequence[str] = (), test: bool = False, rate_limit: float = 0.0,
               now: float) -> tuple[ApiKey, str]:
        name, permission = check_name(name), check_permission(permission)
        scopes, rate = check_domains(domains), check_rate_limit(rate_limit)
        for _ in range(3):              # an id collision (2**-60 a pair) gets a new id
            key_id, token = new_token(test)
            try:
                row = self.rows.insert(id=key_id, name=name, hash=token_hash(token),
                                       permission=permission, domains=scopes, test=test,
                                       rate_limit=rate, created=now)
            except KeyError as exc:
                if getattr(exc, "column", None) == "id":
                    continue
                raise KeyNameTaken(str(exc)) from None
            return key_of(row), token
        raise RuntimeError("could not find a free API key id")

    def list(self, include_revoked: bool = False) -> builtins.list[ApiKey]:
        return [key_of(r) for r in self.rows.rows(include_revoked)]

    def revoke(self, id_or_name: str, now: float) -> ApiKey | None:
        """The active key with this id, else this name, else this prefix."""
        row = self.rows.revoke(id_or_name, now)
        parsed = parse_prefix(id_or_name)
        if row is None and parsed is not None:
            found = self.rows.get(parsed[1])
            if found is not None and found.test == (parsed[0] == "test"):
                row = self.rows.revoke(parsed[1], now)
        return None if row is None else key_of(row)

    def touch(self, key_id: str, now: float) -> None:
        self.rows.touch(key_id, now, TOUCH_EVERY)


# -- authentication ------------------------------------------------------------------

Found = tuple[ApiKey, str] | None


def _verify(found: Found, token: str, mode: str) -> ApiKey | None:
    if found is None:
        return None
    key, stored = found
    if not _same_hash(stored, token) or key.mode != mode or key.revoked_at is not None:
        return None
    return key


def authenticate(store_get: Callable[[str], Found], token: object) -> ApiKey | None:
    """The active key this token belongs to, or None."""
    parsed = parse_token(token)
    if parsed is None or not isinstance(token, str):
        return None
    return _verify(store_get(parsed[1]), token, parsed[0])


_MISS = object()


class KeyCache:
    """What the store said about each id, for `ttl` seconds (see the module
    docstring). `clock` is a core Clock (wall time: an entry is also dropped
    when the clock steps back past the moment it was stored)."""

    def __init__(self, store: KeyStore, clock: Clock, ttl: float = 2.0, *,
                 max_entries: int = CACHE_MAX):
        self.store, self.clock, self.ttl, self.max_entries = store, clock, ttl, max_entries
        self._found: OrderedDict[str, tuple[float, tuple[ApiKey, str]]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._touched: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._found) + len(self._unknown)

    def _fresh(self, stored_at: float, now: float) -> bool:
        return stored_at <= now < stored_at + self.ttl

    def _cached(self, key_id: str, now: float) -> Any:
        """(key, hash), None (known unknown), or _MISS."""
        hit = self._found.get(key_id)
        if hit is not None and self._fresh(hit[0], now):
            self._found.move_to_end(key_id)
            return hit[1]
        at = self._unknown.get(key_id)
        if at is not None and self._fresh(at, now):
            self._unknown.move_to_end(key_id)
            return None
        return _MISS

    def _remember(self, key_id: str, found: Found, now: float) -> None:
        self.forget(key_id)
        if found is None:
            _put(self._unknown, key_id, now, self.max_entries)
        else:
            _put(self._found, key_id, (now, found), self.max_entries)

    def _touch_due(self, key_id: str, now: float) -> bool:
        last = self._touched.get(key_id)
        if last is not None and last <= now < last + TOUCH_EVERY:
            return False
        _put(self._touched, key_id, now, self.max_entries)
        return True

    def forget(self, key_id: str | None = None) -> None:
        """Drop what is cached about one id (or everything)."""
        for lru in (self._found, self._unknown):
            if key_id is None:
                lru.clear()
            else:
                lru.pop(key_id, None)

    def _touch(self, key_id: str, now: float) -> None:
        try:
            self.store.touch(key_id, now)
        except Exception as exc:          # last-used is advisory: never fail a request on it
            log.warning("event=api_key_touch_failed key=%s error=%s", key_id,
                        type(exc).__name__)

    def _start(self, token: object) -> tuple[str, str, str, float, Any] | None:
        """(token, mode, id, now, what the cache knows) for a well-formed token."""
        parsed = parse_token(token)
        if parsed is None or not isinstance(token, str):
            return None
        now = self.clock.now()
        return token, parsed[0], parsed[1], now, self._cached(parsed[1], now)

    def authenticate(self, token: object) -> ApiKey | None:
        start = self._start(token)
        if start is None:
            return None
        token, mode, key_id, now, found = start
        if found is _MISS:
            found = self.store.get(key_id)
            self._remember(key_id, found, now)
        key = _verify(found, token, mode)
        if key is not None and self._touch_due(key_id, now):
            self._touch(key_id, now)
        return key

    async def authenticate_async(self, token: object) -> ApiKey | None:
        """`authenticate`, with the store calls (a miss, a due touch) in a
        worker thread: the event loop never waits on SQLite."""
        start = self._start(token)
        if start is None:
            return None
        token, mode, key_id, now, found = start
        if found is _MISS:
            found = await asyncio.to_thread(self.store.get, key_id)
            self._remember(key_id, found, now)
        key = _verify(found, token, mode)
        if key is not None and self._touch_due(key_id, now):
            await asyncio.to_thread(self._touch, key_id, now)
        return key


def _put(lru: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    lru[key] = value
    lru.move_to_end(key)
    while len(lru) > limit:
        lru.popitem(last=False)
