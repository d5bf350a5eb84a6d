"""SMTP AUTH credentials: the store's interface, and its embedded default —
one JSON file of scrypt hashes, shared by CLI and daemon.

API
    CredentialCheck (Protocol)      what the submission server needs:
                                    verify(name, password), domains(name)
    Credentials (Protocol)          the whole store (CLI, daemon): the checks
                                    plus names, list, add, passwd, remove
    CredentialInfo                  one entry of .list() (a TypedDict)
    Another backend (a networked store shared by several nodes) implements
    `Credentials`; callers depend on the Protocols, and the runtime chooses
    the backend in one place (runtime/users.py open_credentials).

    CredentialStore(path, *, clock=None)      the embedded default
        path: the file (normally state_dir/credentials.json); a directory is
        taken to mean <dir>/credentials.json.
    .add(name, password=None, domains=()) -> str
                                            new user; returns the password
                                            (generate_password() when None); `domains`
                                            scopes it to sending domains
                                            ("d" exact, "*.d" its subdomains)
    .domains(name) -> tuple | None          its scopes (None: unscoped)
    .passwd(name, password=None) -> str     new password for an existing user
    .remove(name)
    .names() -> list[str]                   sorted
    .list() -> list[CredentialInfo]         [{"name", "created", "updated",
                                            "domains"}], never hashes
    .verify(name, password) -> bool         sync and CPU-bound (scrypt, ~50 ms):
                                            the server runs it in a thread
    .entries() -> {name: entry}             the stored entries (scrypt hashes,
                                            never passwords): for replication only
    .put_entry(name, entry | None)          store another node's entry as is
                                            (None: remove it); under the file lock
    CredentialError                         every refusal, with a message for humans
    generate_password() -> str              24 characters of base64url (~143 bits),
                                            the first a letter or digit
    MIN_PASSWORD                            12: the shortest password add/passwd accept

File format (version 1)::

    {"version": 1, "users": {"alice": {"scheme": "scrypt", "n": 16384, "r": 8,
     "p": 1, "salt": "<b64>", "hash": "<b64>", "created": 1700000000.0,
     "updated": 1700000000.0}}}

Invariants
  * The file is mode 0600 and always complete: written to a temporary file in
    the same directory, fsynced, renamed over the old one, then the directory
    is fsynced. Readers never see half a file.
  * Writers (CLI commands) serialise on an flock of ``<file>.lock`` and
    re-read the file under the lock, so two concurrent edits do not lose one.
  * The daemon picks up CLI edits without a restart: every `verify`/`names`/
    `list` re-reads the file when its (mtime, size, inode) changed. A file
    that fails to parse on reload keeps the last good contents (logged).
  * A password being set (add, passwd) has MIN_PASSWORD to 1024 characters
    and no CR, LF or NUL; passwords stored before the minimum existed still
    verify. Generated ones never start with "-" or "_" (a client such as
    swaks would read "-…" as an option).
  * Passwords are hashed with scrypt (random 16-byte salt, n=2**14, r=8, p=1;
    params stored per hash so they can be raised later) and compared with
    `hmac.compare_digest`. Unknown users still cost one scrypt so timing does
    not reveal which names exist. Nothing here logs a password or a hash.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypedDict

from mta.core import Clock, MtaError
from mta.core.files import atomic_write
from mta.policy.senders import normal_scopes

__all__ = ["MIN_PASSWORD", "CredentialCheck", "CredentialError", "CredentialInfo",
           "CredentialStore", "Credentials", "generate_password", "valid_username"]

log = logging.getLogger("mta.server.credentials")

_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
_N, _R, _P = 2 ** 14, 8, 1
_DKLEN = 32
_MAX_PASSWORD = 1024
MIN_PASSWORD = 12
_FILE_VERSION = 1


class CredentialError(MtaError):
    """A credential operation was refused; the message says why."""


class CredentialInfo(TypedDict):
    name: str
    created: float | None
    updated: float | None
    domains: list[str]


class CredentialCheck(Protocol):
    """The credential store as the submission server uses it."""

    def verify(self, name: str | bytes, password: str | bytes) -> bool:
        """True when `name` exists and `password` matches; never raises for
        bad input; may block (a password hash): callers run it in a thread."""

    def domains(self, name: str) -> tuple[str, ...] | None:
        """The sending domains `name` is scoped to, None: unscoped."""


class Credentials(CredentialCheck, Protocol):
    """The whole store: the server's checks plus the operator's edits.
    Every refusal is a CredentialError with a message for humans."""

    def names(self) -> list[str]: ...

    def add(self, name: str, password: str | None = None, domains: Sequence[str] = ()) -> str:
        """A new user; returns its password (generated when None)."""

    def passwd(self, name: str, password: str | None = None) -> str: ...

    def remove(self, name: str) -> None: ...

    def list(self) -> list[CredentialInfo]: ...


def valid_username(name: str) -> bool:
    return isinstance(name, str) and bool(_NAME.fullmatch(name))


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _hash(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    maxmem = 128 * n * r * p + 1024 * 1024 * 4
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def _new_entry(password: str, now: float, created: float | None = None) -> dict[str, Any]:
    salt = secrets.token_bytes(16)
    digest = _hash(password.encode("utf-8"), salt, _N, _R, _P, _DKLEN)
    return {"scheme": "scrypt", "n": _N, "r": _R, "p": _P, "salt": _b64(salt),
            "hash": _b64(digest), "created": now if created is None else created,
            "updated": now}


# A fixed entry to hash against for unknown users (equal cost, never matches:
# compare_digest against a random hash).
_DUMMY = {"scheme": "scrypt", "n": _N, "r": _R, "p": _P,
          "salt": _b64(b"\0" * 16), "hash": _b64(secrets.token_bytes(_DKLEN))}


def _check(entry: dict[str, Any], password: bytes) -> bool:
    try:
        if entry.get("scheme") != "scrypt":
            return False
        n, r, p = int(entry["n"]), int(entry["r"]), int(entry["p"])
        salt = base64.b64decode(entry["salt"], validate=True)
        want = base64.b64decode(entry["hash"], validate=True)
    except (KeyError, ValueError, TypeError):
        return False
    got = _hash(password, salt, n, r, p, len(want))
    return hmac.compare_digest(got, want)


def _check_scopes(domains: Sequence[str]) -> tuple[str, ...]:
    try:
        return normal_scopes(domains)
    except ValueError as exc:
        raise CredentialError(str(exc)) from None


def generate_password() -> str:
    """A new random password whose first character is a letter or a digit."""
    while True:
        password = secrets.token_urlsafe(18)
        if password[0].isalnum():
            return password


def _check_password(password: str) -> str:
    if not isinstance(password, str) or not password:
        raise CredentialError("password must not be empty")
    if len(password) < MIN_PASSWORD:
        raise CredentialError(f"password is too short: use at least {MIN_PASSWORD} characters "
                              f"(this one has {len(password)})")
    if len(password) > _MAX_PASSWORD:
        raise CredentialError(f"password is longer than {_MAX_PASSWORD} characters")
    if any(c in password for c in "\r\n\0"):
        raise CredentialError("password must not contain CR, LF or NUL")
    return password


class CredentialStore:
    def __init__(self, path: str | os.PathLike[str], *, clock: Clock | None = None):
        p = Path(path)
        if p.is_dir():
            p = p / "credentials.json"
        self.path = p
        self._clock = clock
        self._lock = threading.Lock()
        self._users: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._refresh(strict=True)

    # -- reading ----------------------------------------------------------

    def _now(self) -> float:
        return self._clock.now() if self._clock is not None else time.time()

    def _read(self) -> tuple[dict[str, dict[str, Any]], tuple[int, int, int] | None]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}, None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return self._users, stamp
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read())
        except (OSError, ValueError) as exc:
            raise CredentialError(f"{self.path}: cannot read credentials: {exc}") from None
        if (not isinstance(doc, dict) or doc.get("version") != _FILE_VERSION
                or not isinstance(doc.get("users"), dict)):
            raise CredentialError(f"{self.path}: not a version {_FILE_VERSION} credentials file")
        users = {k: v for k, v in doc["users"].items() if isinstance(v, dict)}
        return users, stamp

    def _refresh(self, *, strict: bool) -> None:
        with self._lock:
            try:
                users, stamp = self._read()
            except CredentialError as exc:
                if strict:
                    raise
                log.warning("event=credentials_reload_failed error=%s (keeping last good)", exc)
                return
            if stamp != self._stamp:
                self._users, self._stamp = users, stamp
                if stamp is not None:
                    log.debug("event=credentials_loaded users=%d", len(users))

    # -- writing ----------------------------------------------------------

    @contextmanager
    def _editing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Lock, re-read, let the caller edit a copy, write it back atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(str(self.path) + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            with self._lock:
                self._stamp = None  # force a re-read under the file lock
                users, _ = self._read()
                users = {k: dict(v) for k, v in users.items()}
            yield users
            self._write(users)
            self._refresh(strict=True)
        finally:
            os.close(lock_fd)  # releases the flock

    def _write(self, users: dict[str, dict[str, Any]]) -> None:
        data = json.dumps({"version": _FILE_VERSION, "users": users},
                          indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(self.path, data, 0o600)

    # -- public API -------------------------------------------------------

    @staticmethod
    def _check_name(name: str) -> str:
        if not valid_username(name):
            raise CredentialError(
                f"invalid user name {name!r}: use 1-64 of A-Z a-z 0-9 . _ @ + -")
        return name

    def add(self, name: str, password: str | None = None, domains: Sequence[str] = ()) -> str:
        self._check_name(name)
        scopes = _check_scopes(domains)
        password = generate_password() if password is None else _check_password(password)
        with self._editing() as users:
            if name in users:
                raise CredentialError(f"user {name!r} already exists "
                                      "(use passwd to change the password)")
            users[name] = _new_entry(password, self._now())
            if scopes:
                users[name]["domains"] = list(scopes)
        log.info("event=credential_added name=%s", name)
        return password

    def passwd(self, name: str, password: str | None = None) -> str:
        self._check_name(name)
        password = generate_password() if password is None else _check_password(password)
        with self._editing() as users:
            if name not in users:
                raise CredentialError(f"no such user {name!r}")
            created = users[name].get("created")
            scopes = users[name].get("domains")
            users[name] = _new_entry(password, self._now(), created=created)
            if scopes:
                users[name]["domains"] = scopes
        log.info("event=credential_changed name=%s", name)
        return password

    def remove(self, name: str) -> None:
        self._check_name(name)
        with self._editing() as users:
            if name not in users:
                raise CredentialError(f"no such user {name!r}")
            del users[name]
        log.info("event=credential_removed name=%s", name)

    def entries(self) -> dict[str, dict[str, Any]]:
        self._refresh(strict=True)
        return {k: dict(v) for k, v in self._users.items()}

    def put_entry(self, name: str, entry: dict[str, Any] | None) -> None:
        self._check_name(name)
        with self._editing() as users:
            if entry is None:
                users.pop(name, None)
            else:
                users[name] = dict(entry)
        log.info("event=credential_replicated name=%s removed=%s", name, entry is None)

    def names(self) -> list[str]:
        self._refresh(strict=False)
        return sorted(self._users)

    def list(self) -> list[CredentialInfo]:
        self._refresh(strict=False)
        return [{"name": n, "created": e.get("created"), "updated": e.get("updated"),
                 "domains": list(e.get("domains", []))}
                for n, e in sorted(self._users.items())]

    def domains(self, name: str) -> tuple[str, ...] | None:
        """The sending domains `name` is scoped to (``*.d`` = subdomains of d),
        or None for an unscoped credential (any verified domain)."""
        self._refresh(strict=False)
        entry = self._users.get(name)
        scopes = entry.get("domains") if entry else None
        return tuple(scopes) if scopes else None

    def verify(self, name: str | bytes, password: str | bytes) -> bool:
        """True when `name` exists and `password` matches. Never raises for bad input."""
        self._refresh(strict=False)
        try:
            if isinstance(name, bytes):
                name = name.decode("utf-8")
            pw = password if isinstance(password, bytes) else password.encode("utf-8")
        except (UnicodeError, AttributeError):
            name, pw = "", b""
        entry = self._users.get(name) if valid_username(name) else None
        if entry is None or len(pw) > 4 * _MAX_PASSWORD:
            _check(_DUMMY, pw[: 4 * _MAX_PASSWORD])  # same cost as a real check
            return False
        return _check(entry, pw)
