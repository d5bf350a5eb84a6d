"""The state directory's layout: where each file of `[server] state_dir` lives.

One job: name every path under the state directory in one place, so the
daemon, the reload and the CLI (`mta user …` writes the daemon's credential
file) never disagree on where a file is.

API
    state_paths(cfg) -> StatePaths      a TypedDict of Paths (keys below)
    capture_dir(cfg, paths) -> Path     where captured inbound mail goes:
                                        `[bounces] capture_dir`, else
                                        paths["inbound"]

Layout (root = `[server] state_dir`, or $MTA_STATE_DIR as the config applied)
    root/                       0700; the spool (index + segments) lives here
    root/tls/                   the self-signed certificate when none is configured
    root/sandbox/               sandbox mode's Maildir (new/, cur/, tmp/)
    root/credentials.json       submission credentials (scrypt)
    root/initial-credential.txt the first sandbox credential (0600)
    root/verp.key               the VERP token key
    root/public.key             the public listener's token key (unsubscribe, click,
                                open tokens; one-time codes' hashing key is derived)
    root/inbound/               captured inbound mail (default capture_dir)
    root/incoming/              large messages in transit (anonymous files)
    root/admin-token            the admin API token (mta.admin.token writes it)

Invariant: nothing here creates a file or directory; callers do, with the
modes they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from mta.config import Config

__all__ = ["StatePaths", "capture_dir", "state_paths"]


class StatePaths(TypedDict):
    root: Path
    tls: Path
    sandbox: Path
    credentials: Path
    initial_credential: Path
    verp_key: Path
    public_key: Path
    inbound: Path
    incoming: Path


def state_paths(cfg: Config) -> StatePaths:
    root = Path(cfg.server.state_dir)
    return StatePaths(root=root, tls=root / "tls", sandbox=root / "sandbox",
                      credentials=root / "credentials.json",
                      initial_credential=root / "initial-credential.txt",
                      verp_key=root / "verp.key", public_key=root / "public.key",
                      inbound=root / "inbound",
                      incoming=root / "incoming")


def capture_dir(cfg: Config, paths: StatePaths) -> Path:
    """`paths` are those of the running process (a reload keeps its state dir)."""
    return Path(cfg.bounces.capture_dir or paths["inbound"])
