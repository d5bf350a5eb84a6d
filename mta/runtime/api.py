"""The sending API in the running daemon: its backend and its server.

One job: accept what mta.api.routes hands over through the same policy,
signing, suppression, spool and ledger as an SMTP submission, and answer
its reads (emails, events, keys) from the spool. It runs in the owner
process (the one that owns the spool), like the admin API.

Public API:
    RuntimeSending(…)            an mta.api.routes.SendingBackend (started by
                                 runtime/api_start.py)

Tenants (issue 14): a key acts for the tenant owning its credential
("api:NAME"; runtime/tenants.py). A request's emails are admitted together
by the tenant's guardrails before any is queued (paused or another
tenant's domain: 403; over a quota: 429 with retry-after); reads (emails,
events, keys) see only the key's tenant: another tenant's id is a 404. A
key made through the API belongs to its maker's tenant.

Acceptance of one email (the order is the order of the checks; 1–3 are
runtime/api_build.py, run by a receiver process when there is one — the CPU
work leaves the owner as an SMTP session's does — else here):
  1. the From: domain against the key's domains and the sender policy
     (policy.senders: verified domains) → 403 naming the domain;
  2. MIME built by mail.compose; Received:/Message-ID/Date as an SMTP
     submission gets them (mail.headers.prepare_submission, protocol HTTP or
     HTTPS); DKIM-signed (off the loop) when the From: domain has keys;
  3. recipients on the suppression list are accepted and recorded as
     suppressed (never attempted), as SMTP's `on_rcpt = "accept"` does
     (the owner's list);
  4. enqueued with the key's credential ("api:NAME"), listener "api", the
     test flag of a test key, the schedule, and the `received` detail
     (api_key prefix, tags, the envelope as given, the request fingerprint).
A batch's messages are submitted together: the spool's writer commits them
in one transaction and one fsync (unless the batch is larger than the
writer's group).

Idempotency-Key: scoped to the key's credential; each item of a batch uses
"<key>#<n>". A repeat within `[ledger] idempotency_window` answers the
original ids, nothing queued; the same key with another body is 409
`invalid_idempotent_request`; a repeat while the first is still being
accepted is 409 `concurrent_idempotent_requests` (one process owns the
spool, so an in-memory set sees every request). In a cluster `shared_keys`
(runtime/cluster_idempotency.py) makes the decision for every node after
the local check: a key used on another node answers that node's ids.

Test keys see only test messages and live keys only live ones (a 404
otherwise); a test key's mail is captured (state_dir/sandbox), never
delivered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from mta.api.http import ApiError, json_of, refused_error
from mta.api.keys import ApiKey, KeyCache, KeyNameTaken, StoreKeys
from mta.api.routes import fingerprint
from mta.config import Config
from mta.core import Clock, LedgerEvent, Refused, Reply, StorageError
from mta.policy.senders import SenderPolicy
from mta.runtime.api_build import BuildKey, BuildRefused, build, key_fields
from mta.runtime.channel import ChannelClosed, RemoteError
from mta.runtime.logs import event
from mta.runtime.tenants import TenantService
from mta.spool import MessageFilter, NewMessage, Spool
from mta.spool.tenants import TenantError
from mta.spool.views import MessageView

__all__ = ["RuntimeSending", "REMOTE_BUILD_MAX"]

log = logging.getLogger("mta.api")
# A request body larger than this is built in the owner: a channel frame
# (runtime/channel.py MAX_FRAME, 64 MiB) carries the body there and the
# message back.
REMOTE_BUILD_MAX = 16 * 1024 * 1024

_LAST_EVENT = {"delivered": "delivered", "bounced": "bounced", "expired": "failed",
               "deleted": "canceled", "suppressed": "suppressed", "held": "queued"}


class _Signer(Protocol):
    def keys_for(self, domain: str) -> Sequence[object]: ...
    def sign(self, message: bytes, domain: str) -> bytes: ...
    def registered(self, domain: str) -> str | None: ...
    def state(self, domain: str) -> str | None: ...


class _Enqueue(Protocol):
    async def enqueue(self, msg: NewMessage, now: float, **kw: Any) -> str: ...
    async def admit(self, credential: str | None, messages: Sequence[NewMessage], now: float,
                    *, test: bool = False) -> str: ...


_RcptCheck = Callable[[str, str | None], Awaitable[Reply | None]]


class _SharedKeys(Protocol):
    async def once(self, scope: str, key: str, fp: str,
                   accept: Callable[[], Awaitable[list[str]]]) -> list[str]: ...


_Theirs = Callable[[str | None], bool]     # a credential's rows are the asking key's tenant's


class _Elsewhere(Protocol):    # a cluster's shared ledger (runtime/cluster_ledger.py)
    async def email(self, key: ApiKey, email_id: str, theirs: _Theirs) -> dict[str, Any] | None: ...
    async def email_events(self, key: ApiKey, email_id: str,
                           theirs: _Theirs) -> dict[str, Any] | None: ...


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


Remote = Callable[..., Awaitable[Any]]     # Receivers.call_any: None when no receiver


def _text_parts(raw: bytes) -> tuple[str | None, str | None]:
    """The html and text bodies of a MIME message, as given to the API."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = []
    for kind in ("html", "plain"):
        part = msg.get_body((kind,)) if hasattr(msg, "get_body") else None
        try:
            # the MIME part ends its last line; the text as given may not
            parts.append(_unended(part.get_content()) if part is not None else None)
        except (LookupError, ValueError, AttributeError):
            parts.append(None)
    return parts[0], parts[1]


def _unended(text: str) -> str:
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


class RuntimeSending:
    def __init__(self, *, cfg_of: Callable[[], Config], spool: Spool, enqueue: _Enqueue,
                 clock: Clock, keys: KeyCache, store: StoreKeys,
                 sender_policy: Callable[[], SenderPolicy], signer: _Signer | None,
                 rcpt_check: _RcptCheck | None, secure: bool, remote: Remote | None = None,
                 tenants: TenantService | None = None):
        self.cfg_of, self.spool, self._enqueue, self.clock = cfg_of, spool, enqueue, clock
        self.keys, self.store, self.sender_policy = keys, store, sender_policy
        self.signer, self.rcpt_check, self.secure = signer, rcpt_check, secure
        self.remote, self.tenants = remote, tenants
        self._inflight: set[tuple[str, str]] = set()
        self.shared_keys: _SharedKeys | None = None     # a cluster's (set when it is wired)
        self.elsewhere: _Elsewhere | None = None        # a cluster's shared ledger (likewise)

    def now(self) -> float:
        return self.clock.now()

    # -- sending ------------------------------------------------------------

    async def send(self, key: ApiKey, raw: bytes, *, batch: bool, idempotency_key: str | None,
                   client_ip: str) -> list[str]:
        if idempotency_key is None:
            return await self._accept(key, raw, batch, None, None, client_ip)
        doc = json_of(raw)
        fp, count = fingerprint(doc), (len(doc) if batch and isinstance(doc, list) else 1)
        slot = (key.credential, idempotency_key)
        if slot in self._inflight:
            raise ApiError(409, "concurrent_idempotent_requests",
                           "Another request with this Idempotency-Key is in progress; "
                           "retry once it has finished")
        self._inflight.add(slot)
        try:
            earlier = await self._earlier(key, idempotency_key, count, fp)
            if earlier is not None:
                return earlier
            if self.shared_keys is not None:
                return await self.shared_keys.once(key.credential, idempotency_key, fp, lambda: (
                    self._accept(key, raw, batch, idempotency_key, fp, client_ip)))
            return await self._accept(key, raw, batch, idempotency_key, fp, client_ip)
        finally:
            self._inflight.discard(slot)

    @staticmethod
    def _item_key(idempotency_key: str, n: int, count: int) -> str:
        return idempotency_key if count == 1 else f"{idempotency_key}#{n}"

    async def _earlier(self, key: ApiKey, idempotency_key: str, count: int,
                       fp: str) -> list[str] | None:
        """The ids an earlier request with this key made (same body), None
        when there was none in the window; 409 when its body differed."""
        found = await self.spool.ledger.idempotent_id(
            key.credential, self._item_key(idempotency_key, 0, count))
        window = self.cfg_of().ledger.idempotency_window
        if found is None or found[1] < self.now() - window:
            return None
        differs = ApiError(409, "invalid_idempotent_request",
                           "This Idempotency-Key was already used with a different request "
                           "body")
        if await self._fingerprint_of(found[0]) != fp:
            raise differs
        ids = [found[0]]
        for n in range(1, count):
            hit = await self.spool.ledger.idempotent_id(
                key.credential, self._item_key(idempotency_key, n, count))
            if hit is None:
                raise differs
            ids.append(hit[0])
        return ids

    async def _fingerprint_of(self, queue_id: str) -> str | None:
        value = (await self._received(queue_id)).get("fingerprint")
        return value if isinstance(value, str) else None

    async def _build(self, key: ApiKey, raw: bytes, batch: bool, client_ip: str,
                     now: float) -> list[dict[str, Any]]:
        """The messages of a request, built by a receiver process when one
        is up (api_build.py), else here."""
        bkey = BuildKey(key.prefix, key.credential, key.domains, key.test)
        if self.remote is not None and len(raw) <= REMOTE_BUILD_MAX:
            try:
                got = await self.remote("api_build", raw, batch, key_fields(bkey), client_ip,
                                        now, self.secure)
            except (ChannelClosed, RemoteError) as exc:   # a receiver died: build here
                event(log, "api_build_remote_failed", level=logging.WARNING, error=exc)
                got = None
            if got is not None:
                if got[0] == "error":
                    raise ApiError(int(got[1]), str(got[2]), str(got[3]))
                return list(got[1])
        try:
            return await build(raw, batch=batch, key=bkey, client_ip=client_ip, now=now,
                               cfg=self.cfg_of(), secure=self.secure,
                               sender_policy=self.sender_policy(), signer=self.signer)
        except BuildRefused as exc:
            raise ApiError(exc.status, exc.name, exc.message) from None

    async def _accept(self, key: ApiKey, raw: bytes, batch: bool, idempotency_key: str | None,
                      fp: str | None, client_ip: str) -> list[str]:
        now = self.now()
        built = await self._build(key, raw, batch, client_ip, now)
        return await self.commit(key, built, client_ip, idempotency_key, fp, now=now)

    async def commit(self, key: ApiKey, built: list[dict[str, Any]], client_ip: str,
                     idempotency_key: str | None = None, fp: str | None = None, *,
                     now: float | None = None) -> list[str]:
        """Enqueue built messages (api_build.py; a receiver's come over the
        channel: api_remote.py) together: one writer batch, one fsync."""
        now = self.now() if now is None else now
        messages = []
        for n, b in enumerate(built):
            item_key = (None if idempotency_key is None
                        else self._item_key(idempotency_key, n, len(built)))
            messages.append(await self._message(key, b, item_key, fp, client_ip))
        try:
            await self._enqueue.admit(key.credential, messages, now, test=key.test)
            return list(await asyncio.gather(*(self._enqueue.enqueue(m, now, gate=False)
                                               for m in messages)))
        except Refused as exc:          # recorded like an SMTP refusal (the tenant's)
            await self.spool.ledger.append_events([LedgerEvent(
                "rejected", now, credential=key.credential,
                detail={"reply": str(exc.reply), "stage": "API", "listener": "api",
                        "sender": messages[0].sender if messages else ""})])
            raise refused_error(exc) from None
        except StorageError as exc:
            raise ApiError(503, "service_unavailable",
                           f"The mail server cannot take mail now ({exc.reply}); retry later",
                           {"retry-after": "30"}) from None

    async def _message(self, key: ApiKey, b: dict[str, Any], idempotency_key: str | None,
                       fp: str | None, client_ip: str) -> NewMessage:
        """A built message with what only the owner knows: the suppression
        list's verdict per recipient, the idempotency key, the fingerprint."""
        rcpts = tuple(str(r) for r in b["recipients"])
        suppressed: list[tuple[int, str]] = []
        if self.rcpt_check is not None:
            for i, rcpt in enumerate(rcpts):
                reply = await self.rcpt_check(rcpt, key.credential)
                if reply is not None:
                    suppressed.append((i, str(reply)))
        detail = dict(b["detail"])
        if fp is not None:
            detail["fingerprint"] = fp
        not_before = b.get("not_before")
        return NewMessage(sender=str(b["sender"]), recipients=rcpts, body=bytes(b["body"]),
                          credential=key.credential, listener="api", client_ip=client_ip,
                          queue_id=str(b["queue_id"]), suppressed=tuple(suppressed),
                          idempotency_key=idempotency_key, detail=detail, test=key.test,
                          not_before=None if not_before is None else float(not_before))

    # -- reads and moves ------------------------------------------------------

    def tenant(self, key: ApiKey) -> str | None:
        return None if self.tenants is None else self.tenants.tenant_of(key.credential)

    def _theirs(self, key: ApiKey, credential: str | None) -> bool:
        """Whether a row made by `credential` is in `key`'s tenant."""
        return self.tenants is None or (self.tenants.tenant_of(credential)
                                        == self.tenants.tenant_of(key.credential))

    async def _view(self, key: ApiKey, email_id: str) -> MessageView:
        view = await self.spool.get_message(email_id)
        if view is None or view.test != key.test or view.is_dsn \
                or not self._theirs(key, view.credential):
            raise ApiError(404, "not_found", "Email not found")
        return view

    async def _received(self, email_id: str) -> dict[str, Any]:
        return (await self.spool.ledger.received_details([email_id])).get(email_id, {})

    def _last_event(self, view: MessageView) -> str:
        states = [r.state for r in view.recipients]
        if view.not_before is not None and view.not_before > self.now() \
                and all(s == "queued" for s in states):
            return "scheduled"
        for state in ("bounced", "expired", "delivered", "deleted", "suppressed", "held"):
            if state in states and (state != "delivered" or all(
                    s in ("delivered", "suppressed") for s in states)):
                return _LAST_EVENT[state]
        if any(r.attempts for r in view.recipients):
            return "delivery_delayed"
        return "queued"

    def _shape(self, view: MessageView, detail: dict[str, Any]) -> dict[str, Any]:
        given = detail.get("email")
        env: dict[str, Any] = given if isinstance(given, dict) else {}
        return {"object": "email", "id": view.id,
                "from": env.get("from", view.sender),
                "to": env.get("to", [r.address for r in view.recipients]),
                "cc": env.get("cc", []), "bcc": env.get("bcc", []),
                "reply_to": env.get("reply_to", []), "subject": env.get("subject"),
                "created_at": _iso(view.received_at), "scheduled_at": _iso(view.not_before),
                "last_event": self._last_event(view), "tags": detail.get("tags", []),
                "test": view.test}

    async def _other_node(self, key: ApiKey, email_id: str,
                          events: bool) -> dict[str, Any] | None:
        """A cluster: another node's message (None: this node's, or unknown)."""
        if self.elsewhere is None or await self.spool.get_message(email_id) is not None:
            return None
        read = self.elsewhere.email_events if events else self.elsewhere.email
        return await read(key, email_id, lambda credential: self._theirs(key, credential))

    async def get_email(self, key: ApiKey, email_id: str) -> dict[str, Any]:
        if (other := await self._other_node(key, email_id, False)) is not None:
            return other
        view = await self._view(key, email_id)
        out = self._shape(view, await self._received(email_id))
        out["html"], out["text"] = await self._bodies(email_id)
        return out

    async def _bodies(self, email_id: str) -> tuple[str | None, str | None]:
        """The html and text parts of a stored message (its first 2 MiB)."""
        try:
            raw = await self.spool.read_body(email_id, limit=2 * 1024 * 1024)
        except (KeyError, OSError, StorageError):
            return None, None
        # Parsing up to 2 MiB of MIME is CPU work: off the owner's loop.
        return await asyncio.to_thread(_text_parts, raw)

    async def list_emails(self, key: ApiKey, limit: int, after: str | None) -> dict[str, Any]:
        views, more = await self.spool.email_page(key.test, limit, after, self.tenant(key))
        details = await self.spool.ledger.received_details([v.id for v in views])
        data = [self._shape(v, details.get(v.id, {})) for v in views]
        return {"object": "list", "has_more": more, "data": data}

    async def reschedule(self, key: ApiKey, email_id: str, at: float) -> dict[str, Any]:
        await self._view(key, email_id)
        moved = await self.spool.reschedule_messages(MessageFilter(ids=(email_id,)),
                                                     self.now(), at)
        if not moved:
            raise ApiError(409, "invalid_state",
                           "Only an email that has not been sent yet can be rescheduled")
        self._poke()
        return {"object": "email", "id": email_id}

    async def cancel(self, key: ApiKey, email_id: str) -> dict[str, Any]:
        await self._view(key, email_id)
        moved = await self.spool.delete_messages(MessageFilter(ids=(email_id,)), self.now())
        if not moved:
            raise ApiError(409, "invalid_state",
                           "Only an email that has not been sent yet can be canceled")
        return {"object": "email", "id": email_id}

    def _poke(self) -> None:
        poke = getattr(self._enqueue, "poke", None)
        if callable(poke):
            poke()

    async def email_events(self, key: ApiKey, email_id: str) -> dict[str, Any]:
        if (other := await self._other_node(key, email_id, True)) is not None:
            return other
        await self._view(key, email_id)
        events = await self.spool.ledger.message_events(email_id)
        data = [{"seq": e.seq, "type": e.type, "at": _iso(e.at), "recipient": e.recipient,
                 "detail": {k: v for k, v in (e.detail if isinstance(e.detail, dict)
                                               else {}).items() if k != "fingerprint"}}
                for e in events]
        return {"object": "list", "data": data}

    # -- keys ---------------------------------------------------------------

    async def create_key(self, key: ApiKey, name: str, *, permission: str,
                         domains: tuple[str, ...], rate_limit: float) -> dict[str, Any]:
        try:
            made, token = await asyncio.to_thread(
                self.store.create, name, permission=permission, domains=domains,
                test=key.test, rate_limit=rate_limit, now=self.now())
        except KeyNameTaken:
            raise ApiError(409, "invalid_parameter",
                           f"name: an API key named {name!r} exists") from None
        tenant = self.tenant(key)
        if self.tenants is not None and tenant is not None:
            try:
                await self.tenants.own("credential", made.credential, tenant)
            except TenantError:
                # The name is another tenant's credential: the key must not
                # exist (its token was never shown), and the client hears 409.
                await asyncio.to_thread(self.store.revoke, made.id, self.now())
                raise ApiError(409, "invalid_parameter",
                               f"name: {name!r} is taken; choose another name") from None
        return {"id": made.id, "token": token, **made.as_json()}

    async def list_keys(self, key: ApiKey) -> dict[str, Any]:
        keys = await asyncio.to_thread(self.store.list)
        return {"object": "list", "data": [k.as_json() for k in keys if k.test == key.test
                                           and self._theirs(key, k.credential)]}

    async def revoke_key(self, key: ApiKey, key_id: str) -> dict[str, Any]:
        found = await asyncio.to_thread(self.store.get, key_id)
        if found is None or found[0].test != key.test or found[0].revoked_at is not None \
                or not self._theirs(key, found[0].credential):
            raise ApiError(404, "not_found", "API key not found")
        await asyncio.to_thread(self.store.revoke, key_id, self.now())
        self.keys.forget(key_id)
        return {"object": "api_key", "id": key_id, "deleted": True}
