"""The admin listing's JSON is built by SQLite (`Spool.list_page_json`): it
must equal `list_page` → `to_dict()` exactly, page by page, cursor included."""

from __future__ import annotations

import json

from mta.core import QUEUED, Reply, RecipientUpdate
from mta.spool import MessageFilter, NewMessage, Spool

NOW = 1_700_000_000.0


async def test_json_pages_equal_the_views(tmp_path):
    spool = await Spool.open(tmp_path, now=NOW)
    try:
        ids = []
        for i in range(23):
            rcpts = tuple(f"u{i}-{k}@d{i % 3}.test" for k in range(1 + i % 3))
            ids.append(await spool.enqueue(NewMessage(
                sender=f"s{i % 2}@sender.test", recipients=rcpts, credential=None if i % 4 else "app",
                body=b"Subject: x\r\n\r\nbody \xc3\xa9 \"quoted\" \\ back\r\n"), NOW + i))
        leased = await spool.lease_due(NOW + 100, 5)
        await spool.record([RecipientUpdate(q.queue_id, q.rcpt_idx, QUEUED, next_attempt=NOW + 500,
                                            reply=Reply(451, "4.7.1", 'greylisted "try" later'),
                                            attempted_at=NOW + 100, remote_host="mx.d.test",
                                            tls="TLSv1.3") for q in leased])
        for f in (MessageFilter(), MessageFilter(domain="d1.test"),
                  MessageFilter(sender="s1@sender.test"), MessageFilter(state="deferred"),
                  MessageFilter(include_done=True)):
            cv = cj = None
            pages = 0
            while True:
                views, cv = await spool.list_page(f, 4, cv)
                text, cj = await spool.list_page_json(f, 4, cj)
                assert json.loads(text) == [v.to_dict() for v in views], f
                assert cj == cv
                pages += 1
                if cv is None:
                    break
            assert pages >= 1
        text, nxt = await spool.list_page_json(MessageFilter(domain="none.test"), 10, None)
        assert (text, nxt) == (b"[]", None)
    finally:
        await spool.close()
