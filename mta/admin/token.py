"""The admin API's bearer token file: state_dir/admin-token.

One job: find, create and read the generated token, for the daemon (which
creates it on start when `[admin] token` is unset) and the CLI (which reads
it to talk to the daemon).

Public API:
    TOKEN_FILE                      "admin-token"
    token_path(state_dir) -> Path
    ensure_token(state_dir) -> str  the token, created (0600, atomically) if absent
    load_token(state_dir) -> str | None   None when the file does not exist

Invariants: the file holds one line, the token; it is created 0600 with
`secrets.token_urlsafe(32)` (256 bits) and never rewritten once present, so a
restart keeps the token operators and scripts already use. The token is never
logged or printed here.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from mta.core.files import atomic_write

__all__ = ["TOKEN_FILE", "token_path", "ensure_token", "load_token"]

TOKEN_FILE = "admin-token"


def token_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / TOKEN_FILE


def load_token(state_dir: str | os.PathLike[str]) -> str | None:
    """The stored token, or None if there is no file (PermissionError propagates:
    the caller says whom to run as)."""
    try:
        token = token_path(state_dir).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    return token or None


def ensure_token(state_dir: str | os.PathLike[str]) -> str:
    """Return the stored token, creating the file first if it is absent or empty."""
    existing = load_token(state_dir)
    if existing:
        return existing
    Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    atomic_write(token_path(state_dir), (token + "\n").encode("ascii"), 0o600)
    return token
