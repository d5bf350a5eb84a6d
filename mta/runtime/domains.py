"""Sending domains in the running daemon: an in-memory view for the hot path
and the periodic re-check of DNS.

One job: give the submission path two cheap, synchronous lookups —
`state(domain)` for sender enforcement and `sign(message, domain)` for DKIM —
without touching SQLite or key files per message, and keep domain states
fresh by running the checks the domain service says are due.

API
    DomainCache(service, clock, *, observer=None)
      .state(domain) / .registered(domain) / .bounce_domains(subdomain)
      .keys_for(domain) / .sign(message, domain, tail=None)
      await .refresh()                 re-read domains and keys from the store
      await .run_due_checks() -> int   the DNS checks that are due
      await .tick()                    refresh, then the due checks: the
                                       housekeeping job "domains" (runtime/
                                       housekeeping.py, DOMAINS_EVERY)

Invariants
- `refresh()` reads the store and key files in a thread; lookups only read
  the dicts it swapped in whole (no torn view, no I/O on the event loop).
- A message is signed with the keys of its From: domain, or of the closest
  parent domain that has keys (d=example.com signs for news.example.com:
  DMARC relaxed alignment); with no keys it is passed through unsigned.
- `sign` reports each signature's duration to the observer (core.observe);
  it runs in a worker thread, so observers must be thread-safe.
- Checks run one domain at a time, each a handful of DNS queries; a failing
  check is logged and retried on the service's schedule, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator

from mta.config import Config
from mta.core import Clock, Observer
from mta.domains.service import SendingDomains
from mta.mail import dkim
from mta.runtime.logs import event

log = logging.getLogger("mta.domains")


def _parents(domain: str) -> Iterator[str]:
    labels = domain.split(".")
    for i in range(len(labels) - 1):
        yield ".".join(labels[i:])


class DomainCache:
    def __init__(self, service: SendingDomains, clock: Clock, *,
                 observer: Observer | None = None):
        self.service, self.clock, self.observer = service, clock, observer or Observer()
        self._states: dict[str, str] = {}
        self._keys: dict[str, list[dkim.SigningKey]] = {}

    # ---- lookups (event loop or signing thread; no I/O) -----------------
    def state(self, domain: str) -> str | None:
        return self._states.get(domain)

    def registered(self, domain: str) -> str | None:
        """The domain added with `mta domain add` that covers `domain` (itself
        or its closest parent), or None."""
        for d in _parents(domain.lower()):
            if d in self._states:
                return d
        return None

    def bounce_domains(self, subdomain: str) -> set[str]:
        return {f"{subdomain}.{d}" for d in self._states}

    def keys_for(self, domain: str) -> list[dkim.SigningKey]:
        """The keys that sign mail From: `domain` ([] = unsigned)."""
        for d in _parents(domain.lower()):
            keys = self._keys.get(d)
            if keys:
                return keys
        return []

    def sign(self, message: bytes, domain: str, tail: Iterable[bytes] | None = None) -> bytes:
        """`tail`: the message's bytes past `message` (a large message, see
        core.spill); only the signature fields + `message` come back."""
        keys = self.keys_for(domain)
        if not keys:
            return message
        t0 = time.perf_counter()
        signed = dkim.sign(message, keys, now=self.clock.now(), tail=tail)
        self.observer.dkim_signed(time.perf_counter() - t0)   # often from a worker thread
        return signed

    # ---- refresh and checks ----------------------------------------------
    def _load(self) -> tuple[dict[str, str], dict[str, list[dkim.SigningKey]]]:
        states, keys = {}, {}
        for d in self.service.list():
            states[d.name] = d.state.value
            keys[d.name] = self.service.signing_keys(d.name)
        return states, keys

    async def refresh(self) -> None:
        self._states, self._keys = await asyncio.to_thread(self._load)

    async def reconfigure(self, cfg: Config) -> None:
        """A reload: the service reads the new [domains]/[server] keys, and the
        domains and keys are re-read from the store."""
        self.service.reconfigure(cfg)
        await self.refresh()

    async def run_due_checks(self) -> int:
        due = await asyncio.to_thread(self.service.due_checks, self.clock.now())
        for name in due:
            before = self._states.get(name)
            try:
                result = await self.service.check(name)
            except Exception:
                log.exception("event=domain_check_error domain=%s", name)
                continue
            d = await asyncio.to_thread(self.service.get, name)
            event(log, "domain_checked", domain=name, ok=result.ok, state=d.state.value,
                  previous=before, reason=d.failure_reason or None,
                  level=logging.INFO if d.state.value != "failed" else logging.WARNING)
        if due:
            await self.refresh()
        return len(due)

    async def tick(self) -> None:
        await self.refresh()   # picks up `mta domain add/rotate` from the CLI
        await self.run_due_checks()
