"""The owner's side of a listener (issue 12, ARCHITECTURE §3): with a
hand-off it accepts, asks its gate and passes each connection on with the
gate's verdict; the gate counts until the owner releases; an accept error
pauses accepting instead of spinning; a receiver-side listener runs a
session on an adopted socket."""

from __future__ import annotations

import asyncio
import errno
import socket

from mta.config.sections import ListenerConfig
from mta.core import FakeClock
from mta.server import CredentialStore, SubmissionListener
from mta.server import replies


class _Spool:
    async def enqueue(self, msg, now):  # pragma: no cover - no mail in these tests
        raise AssertionError("no enqueue expected")

    async def append_events(self, events):  # pragma: no cover
        pass


def _listener(tmp_path, **cfg) -> SubmissionListener:
    cfg.setdefault("address", "127.0.0.1:0")
    cfg.setdefault("tls", "none")
    return SubmissionListener(ListenerConfig(**cfg), hostname="mx.test", spool=_Spool(),
                              credentials=CredentialStore(tmp_path / "c.json"),
                              tls_context=None, clock=FakeClock(1_700_000_000.0))


async def test_handoff_passes_the_gates_verdict_and_counts_until_released(tmp_path):
    lst = _listener(tmp_path, max_sessions_per_ip=2)
    handed = []
    got = asyncio.Event()

    def handoff(listener, sock, stand_in, refusal):
        handed.append((sock, stand_in, refusal))
        got.set()

    await lst.start(handoff)
    try:
        host, port = lst.sockname
        clients = []
        for _ in range(3):
            got.clear()
            clients.append(socket.create_connection((host, port)))
            await asyncio.wait_for(got.wait(), 5)
        assert [r for _, _, r in handed] == [None, None, replies.TOO_MANY_FROM_IP]
        assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s, _, _ in handed)
        lst.gate.release(handed[0][1])               # the receiver said: session over
        got.clear()
        clients.append(socket.create_connection((host, port)))
        await asyncio.wait_for(got.wait(), 5)
        assert handed[-1][2] is None                 # room again
    finally:
        for s, _, _ in handed:
            s.close()
        for c in clients:
            c.close()
        await lst.stop()


class _FailingSocket(socket.socket):
    calls = 0

    def accept(self):
        type(self).calls += 1
        raise OSError(errno.EMFILE, "Too many open files")


async def test_an_accept_error_pauses_accepting_instead_of_spinning(tmp_path):
    lst = _listener(tmp_path)
    lsock = _FailingSocket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.setblocking(False)
    client = socket.create_connection(lsock.getsockname())   # readable from now on
    lst._lsocks = [lsock]
    loop = asyncio.get_running_loop()
    loop.add_reader(lsock.fileno(), lst._accept, lsock, lambda *a: None)
    try:
        await asyncio.sleep(0.5)
        assert _FailingSocket.calls == 1        # not retried while the socket stays readable
        await asyncio.sleep(0.8)
        assert _FailingSocket.calls >= 2        # tried again after the pause
    finally:
        await lst.stop()
        client.close()


async def test_an_adopted_socket_runs_a_session_with_the_gates_verdict(tmp_path):
    class Gate:
        sessions: set = set()
        released = 0

        def admit(self, proto):
            return None if proto.handoff_tag == "ok" else replies.TOO_MANY_SESSIONS

        def release(self, proto):
            Gate.released += 1

        def limit_hit(self, proto, reason):
            pass

    lst = SubmissionListener(ListenerConfig(address="127.0.0.1:0", tls="none"),
                             hostname="mx.test", spool=_Spool(),
                             credentials=CredentialStore(tmp_path / "c.json"),
                             tls_context=None, clock=FakeClock(1_700_000_000.0), gate=Gate())
    try:
        for tag, want in (("ok", b"220 "), ("no", b"421 ")):
            ours, theirs = socket.socketpair()
            await lst.adopt(ours, tag)
            theirs.settimeout(5)
            assert theirs.recv(200).startswith(want)
            theirs.close()
        for _ in range(50):
            if Gate.released:
                break
            await asyncio.sleep(0.02)
        assert Gate.released == 1                     # only the admitted one
    finally:
        await lst.stop(grace=0.1)
