"""/verifications over a real aiohttp app on loopback (mta.api.verifications
+ mta.runtime.api_verifications): real API keys in a real index, the real
verifications table; the sending path is an in-test recorder (a seam we
own) and the backend's clock a FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import asdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mta.api.http import ApiError, create_app
from mta.api.keys import ApiKey, KeyCache, StoreKeys
from mta.api.verifications import verification_routes
from mta.config.sections import ApiConfig
from mta.core.clock import FakeClock, SystemClock
from mta.core.envelope import LedgerEvent
from mta.policy.otp import OtpPolicy
from mta.runtime.api_verifications import SUBJECT, RuntimeVerifications
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.verifications import SqliteVerifications

SECRET = b"the daemon's verification secret"
TENANTS = {"api:admin": "acme", "api:sender": "acme", "api:other": "beta"}
TEMPLATES = {("acme", "otp-welcome"): {"id": "otp-welcome", "from": "Acme <hi@acme.test>"},
             ("acme", "no-from"): {"id": "no-from"}}


class World:
    def __init__(self, tmp_path: Path):
        self.clock = FakeClock()
        self.policy = OtpPolicy()
        self.sent: list[tuple[ApiKey, dict[str, Any]]] = []
        self.events: list[LedgerEvent] = []
        self.fail_send: ApiError | None = None
        self.store = SqliteVerifications(tmp_path)
        keys = StoreKeys(SqliteApiKeys(tmp_path))
        now = time.time()
        self.admin = keys.create("admin", rate_limit=10_000, now=now)[1]
        self.sender = keys.create("sender", permission="sending_access", rate_limit=10_000,
                                  now=now)[1]
        self.other = keys.create("other", rate_limit=10_000, now=now)[1]
        self.backend = RuntimeVerifications(
            self.store, tenant_of=self._tenant_of, policy_of=lambda _t: self.policy,
            secret=SECRET, clock=self.clock, send=self._send, append_events=self._append,
            template_of=self._template)
        self.app = create_app(verification_routes(self.backend), settings_of=ApiConfig,
                              keys=KeyCache(keys, SystemClock()), clock=SystemClock())
        self.url = ""

    async def _tenant_of(self, credential: str) -> str:     # as TenantService.resolve
        return TENANTS[credential]

    async def _send(self, key: ApiKey, doc: dict[str, Any]) -> str:
        if self.fail_send is not None:
            raise self.fail_send
        self.sent.append((key, doc))
        return f"em{len(self.sent)}"

    async def _append(self, events: list[LedgerEvent]) -> None:
        self.events.extend(events)

    async def _template(self, credential: str, ref: str) -> dict[str, Any] | None:
        return TEMPLATES.get((TENANTS[credential], ref))

    def code(self, n: int = -1) -> str:
        """The code in the n-th email sent (its text part, or its template variables)."""
        doc = self.sent[n][1]
        if "template" in doc:
            return str(doc["template"]["variables"]["code"])
        m = re.search(r"code is (\d+)", doc["text"])
        assert m is not None
        return m.group(1)

    async def call(self, method: str, path: str, body: object = None, *,
                   key: str | None = None) -> tuple[int, dict[str, Any], Any]:
        headers = {"Authorization": f"Bearer {key or self.admin}"}
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, headers=headers,
                                 data=None if body is None else json.dumps(body)) as r:
                return r.status, await r.json(), r.headers

    async def start(self, to: str = "user@example.com", **extra: object
                    ) -> tuple[int, dict[str, Any], Any]:
        return await self.call("POST", "/verifications",
                               {"to": to, "from": "app@acme.test", **extra}, key=self.sender)

    async def check(self, vid: str, code: object) -> tuple[int, dict[str, Any], Any]:
        return await self.call("POST", f"/verifications/{vid}/check", {"code": code},
                               key=self.sender)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    runner = web.AppRunner(w.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    w.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield w
    finally:
        await runner.cleanup()


def other_code(code: str) -> str:
    return str((int(code) + 1) % 10 ** len(code)).zfill(len(code))


async def test_send_then_check(tmp_path: Path) -> None:
    async with serving(tmp_path) as w:
        status, doc, _ = await w.start()
        assert status == 200, doc
        assert doc["object"] == "verification" and re.fullmatch(r"vrf_[0-9a-f]{20}", doc["id"])
        assert (doc["to"], doc["channel"], doc["status"], doc["sends"], doc["email_id"]) == \
            ("user@example.com", "email", "pending", 1, "em1")
        assert doc["expires_at"].startswith("2023-11-14T22:23:20")      # FakeClock + 600 s
        key, mail = w.sent[0]
        code = w.code()
        assert key.credential == "api:sender" and len(code) == 6
        assert mail["subject"] == SUBJECT and code not in mail["subject"]
        assert mail["from"] == "app@acme.test" and mail["to"] == "user@example.com"
        assert code in mail["html"] and "10 minutes" in mail["text"]

        status, res, _ = await w.check(doc["id"], other_code(code))
        assert (status, res) == (200, {"object": "verification_check", "id": doc["id"],
                                       "status": "pending", "valid": False,
                                       "attempts_remaining": 4})
        status, res, _ = await w.check(doc["id"], code)
        assert (status, res["valid"], res["status"]) == (200, True, "verified")
        status, res, _ = await w.check(doc["id"], code)              # a code works once
        assert (res["valid"], res["status"]) == (False, "verified")


async def test_resend_is_the_same_code_after_the_cooldown(tmp_path: Path) -> None:
    async with serving(tmp_path) as w:
        _, first, _ = await w.start()
        w.clock.advance(10)
        status, doc, headers = await w.start()
        assert (status, doc["name"]) == (429, "rate_limit_exceeded")
        assert headers["retry-after"] == "20" and "resend in 20 seconds" in doc["message"]
        assert len(w.sent) == 1
        w.clock.advance(20)
        status, again, _ = await w.start()
        assert status == 200 and again["id"] == first["id"] and again["sends"] == 2
        assert again["expires_at"] == first["expires_at"] and again["email_id"] == "em2"
        assert w.code(1) == w.code(0)
        w.clock.advance(30)
        status, third, _ = await w.call("POST", f"/verifications/{first['id']}/resend",
                                        key=w.sender)
        assert status == 200 and third["sends"] == 3 and w.code(2) == w.code(0)
        status, res, _ = await w.check(first["id"], w.code(0))
        assert res["valid"] is True


async def test_max_sends_then_a_new_one_after_expiry(tmp_path: Path) -> None:
    async with serving(tmp_path) as w:
        w.policy = OtpPolicy(max_sends=2, resend_cooldown=0)
        _, first, _ = await w.start()
        assert (await w.start())[0] == 200
        status, doc, headers = await w.start()
        assert status == 429 and doc["name"] == "rate_limit_exceeded"
        assert headers["retry-after"] == "600" and "sent 2 times" in doc["message"]
        w.clock.advance(600)
        status, new, _ = await w.start()
        assert status == 200 and new["id"] != first["id"] and new["sends"] == 1
        status, old, _ = await w.call("GET", f"/verifications/{first['id']}")
        assert old["status"] == "expired"


async def test_sixth_check_refused_even_with_the_right_code(tmp_path: Path) -> None:
    async with serving(tmp_path) as w:
        _, doc, _ = await w.start()
        code = w.code()
        answers = [(await w.check(doc["id"], other_code(code)))[1] for _ in range(5)]
        assert [a["attempts_remaining"] for a in answers] == [4, 3, 2, 1, 0]
        assert [a["status"] for a in answers] == ["pending"] * 4 + ["failed"]
        status, sixth, _ = await w.check(doc["id"], code)
        assert (status, sixth["valid"], sixth["status"]) == (200, False, "failed")
        assert w.store.get("acme", doc["id"]).attempts == 5
        status, err, _ = await w.call("POST", f"/verifications/{doc['id']}/resend",
                                      key=w.sender)
        assert (status, err["name"]) == (409, "conflict")


async def test_parallel_wrong_checks_over_http(tmp_path: Path) -> None:
    async with serving(tmp_path) as w:
        _, doc, _ = await w.start()
        bad = other_code(w.code())
        answers = await asyncio.gather(*(w.check(doc["id"], bad) for _ in range(20)))
        assert all(a[0] == 200 and a[1]["valid"] is False for a in answers)
        assert w.store.get("acme", doc["id"]).attempts == 5
        checked = [e for e in w.events if e.type == "verification_checked"]
        assert sorted(e.detail["result"] for e in checked) == ["failed"] * 16 + \
            ["wrong_code"] * 4


async def test_expiry(tmp_path: Path) -> None:
    async with serving(tmp_path) as w:
        _, doc, _ = await w.start()
        w.clock.advance(600)
        status, res, _ = await w.check(doc["id"], w.code())
        assert (res["valid"], res["status"], res["attempts_remaining"]) == \
            (False, "expired", 0)
        status, err, _ = await w.call("POST", f"/verifications/{doc['id']}/resend",
                                      key=w.sender)
        assert status == 409 and "expired" in err["message"]


async def test_no_code_in_ledger_or_logs(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(tmp_path) as w:
        _, doc, _ = await w.start()
        w.clock.advance(30)
        await w.start()
        code = w.code()
        await w.check(doc["id"], other_code(code))
        await w.check(doc["id"], code)
        _, got, _ = await w.call("GET", f"/verifications/{doc['id']}")
    types = [(e.type, e.detail.get("resend"), e.detail.get("result")) for e in w.events]
    assert types == [("verification_sent", False, None), ("verification_sent", True, None),
                     ("verification_checked", None, "wrong_code"),
                     ("verification_checked", None, "verified")]
    sent = w.events[0]
    assert (sent.queue_id, sent.recipient, sent.credential) == ("em1", "user@example.com",
                                                                "api:sender")
    assert w.events[3].detail == {"verification_id": doc["id"], "result": "verified",
                                  "attempts": 2}
    ledger = json.dumps([asdict(e) for e in w.events])
    assert doc["id"] in ledger and code not in ledger
    assert "event=verification_checked" in caplog.text and code not in caplog.text
    assert code not in json.dumps(got) and "hash" not in json.dumps(got)
    assert set(got) == {"object", "id", "to", "channel", "status", "created_at",
                        "expires_at", "sends", "email_id"}


async def test_access_tenants_and_ids(tmp_path: Path) -> None:
    async with serving(tmp_path) as w:
        _, doc, _ = await w.start()
        path = f"/verifications/{doc['id']}"
        status, err, _ = await w.call("GET", path, key=w.sender)
        assert (status, err["name"]) == (403, "restricted_api_key")
        assert (await w.call("GET", path, key=w.other))[0] == 404
        status, _, _ = await w.call("POST", path + "/check", {"code": w.code()}, key=w.other)
        assert status == 404
        assert w.store.get("acme", doc["id"]).attempts == 0       # nothing counted
        for bad in ("/verifications/vrf_nope", "/verifications/vrf_" + "0" * 20):
            assert (await w.call("GET", bad))[0] == 404
            assert (await w.call("POST", bad + "/check", {"code": "123456"}))[0] == 404


@pytest.mark.parametrize("body, status, field", [
    ({"from": "app@acme.test"}, 422, "to"),
    ({"to": "not an address", "from": "app@acme.test"}, 422, "to"),
    ({"to": ["a@example.com", "b@example.com"], "from": "app@acme.test"}, 422, "to"),
    ({"to": "u@example.com", "from": "app@acme.test", "channel": "sms"}, 422, "channel"),
    ({"to": "u@example.com"}, 422, "from"),
    ({"to": "u@example.com", "template": "no-from"}, 422, "from"),
    ({"to": "u@example.com", "template": "missing"}, 422, "template"),
    ({"to": "u@example.com", "from": 7}, 422, "from"),
    (["u@example.com"], 422, "body"),
])
async def test_validation_names_the_field(tmp_path: Path, body: object, status: int,
                                          field: str) -> None:
    async with serving(tmp_path) as w:
        got, err, _ = await w.call("POST", "/verifications", body, key=w.sender)
        assert got == status and err["message"].startswith(f"{field}: "), err
        assert w.sent == []


async def test_check_needs_a_string_code(tmp_path: Path) -> None:
    async with serving(tmp_path) as w:
        _, doc, _ = await w.start()
        for body, name in (({}, "missing_required_field"), ({"code": 123456},
                                                            "validation_error")):
            status, err, _ = await w.call("POST", f"/verifications/{doc['id']}/check", body,
                                          key=w.sender)
            assert (status, err["name"]) == (422, name) and err["message"].startswith("code:")
        status, res, _ = await w.check(doc["id"], "12 34 56")       # malformed: counted
        assert (status, res["attempts_remaining"]) == (200, 4)


async def test_template_send(tmp_path: Path) -> None:
    async with serving(tmp_path) as w:
        status, doc, _ = await w.call("POST", "/verifications",
                                      {"to": ["U@Example.COM"], "template": "otp-welcome",
                                       "locale": "fr"}, key=w.sender)
        assert status == 200 and doc["to"] == "U@example.com"
        mail = w.sent[0][1]
        assert set(mail) == {"to", "template"} and mail["to"] == "U@example.com"
        assert mail["template"] == {"id": "otp-welcome",
                                    "variables": {"code": w.code(), "minutes": 10}}
        assert (await w.check(doc["id"], w.code()))[1]["valid"] is True


async def test_a_failed_first_send_cancels(tmp_path: Path) -> None:
    async with serving(tmp_path) as w:
        w.fail_send = ApiError(403, "validation_error", "from: domain not allowed")
        status, err, _ = await w.start()
        assert (status, err["message"]) == (403, "from: domain not allowed")
        w.fail_send = None
        status, doc, _ = await w.start()                 # no cooldown: a new one
        assert status == 200 and doc["sends"] == 1
        assert [e.type for e in w.events] == ["verification_sent"]
