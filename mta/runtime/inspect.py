"""Read-only views of a (possibly running) daemon's queue for the CLI.

Opens the index with SQLite's read-only URI mode: WAL lets it read while the
daemon writes, and nothing here can take the writer's lock or run recovery.
The full operator surface (admin API) comes later; this is `mta queue list`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

INDEX = Path("spool") / "index.sqlite3"


class NoQueue(Exception):
    pass


def queue_listing(state_dir: str | Path, *, include_done: bool = False,
                  limit: int = 1000) -> list[dict[str, Any]]:
    path = Path(state_dir) / INDEX
    if not path.exists():
        raise NoQueue(f"no queue index at {path} (has the daemon ever run with this state_dir?)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        db.row_factory = sqlite3.Row
        where = "" if include_done else "WHERE m.done = 0"
        msgs = db.execute(
            f"SELECT m.id, m.sender, m.received_at, m.size, m.credential, m.is_dsn, m.done "
            f"FROM messages m {where} ORDER BY m.received_at LIMIT ?", (limit,)).fetchall()
        out = []
        for m in msgs:
            rcpts = db.execute(
                "SELECT rcpt_idx, address, state, attempts, next_attempt, last_reply, last_remote "
                "FROM recipients WHERE message_id = ? ORDER BY rcpt_idx", (m["id"],)).fetchall()
            out.append({
                "id": m["id"], "sender": m["sender"], "received_at": m["received_at"],
                "size": m["size"], "credential": m["credential"], "is_dsn": bool(m["is_dsn"]),
                "done": bool(m["done"]),
                "recipients": [{"address": r["address"], "state": r["state"],
                                "attempts": r["attempts"],
                                "next_attempt": r["next_attempt"] if r["state"] == "queued" else None,
                                "last_reply": r["last_reply"] or "",
                                "last_remote": r["last_remote"] or ""} for r in rcpts],
            })
        return out
    finally:
        db.close()
