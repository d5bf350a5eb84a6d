"""Real PostgreSQL and Redis servers for the cluster tests (issue 19).

Debian's `postgresql` and `redis-server` (installed by `scripts/setup.sh
test`) are started here on loopback ports in temporary directories, once
per test run, and stopped at its end. Each test gets a database of its own
(`PostgresServer.new_database`) and a Redis database number of its own
(`RedisServer.new_db`), so tests never see each other's state.

PostgreSQL refuses to run as root: as root the server runs as the
`postgres` user the package creates, in a directory that user owns.

API
    find_postgres() -> bin dir | None     where initdb/pg_ctl live
    PostgresServer(base_dir).start() / .stop() / .restart_after(seconds)
        .url(database) -> "postgresql://…"; await .new_database() -> url
    RedisServer(base_dir).start() / .stop() / .restart()
        .url(db) -> "redis://…"; .new_db() -> url
    MISSING_ENGINES: why the cluster tests cannot run here ("" when they can)
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.mtahelpers import free_port

__all__ = ["MISSING_ENGINES", "PostgresServer", "RedisServer", "find_postgres"]


def find_postgres() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return Path(d)
    return None


def _missing() -> str:
    why = []
    if find_postgres() is None:
        why.append("PostgreSQL's server (Debian package postgresql) is not installed")
    if shutil.which("redis-server") is None:
        why.append("redis-server (Debian package redis-server) is not installed")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            why.append("running as root and there is no postgres user to run PostgreSQL as")
    return "; ".join(why) + ("; scripts/setup.sh test installs them as root" if why else "")


MISSING_ENGINES = _missing()


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, TCP on 127.0.0.1 only,
    trust authentication for the `mta` superuser (loopback, test only)."""

    def __init__(self) -> None:
        bindir = find_postgres()
        assert bindir is not None, MISSING_ENGINES
        self.bindir = bindir
        self.port = free_port()
        # Not under pytest's tmp_path: that is root's 0700 directory, which
        # the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="mta-pg-"))
        self.data = self.root / "data"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._names = itertools.count(1)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], user=self._user,
                              capture_output=True, text=True, check=check, cwd=self.root)

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "mta", "-A", "trust",
                      "-E", "UTF8", "--no-sync")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories= "
                "-c max_connections=300 -c shared_buffers=64MB")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        _wait_port(self.port)
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://mta@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        subprocess.run([str(self.bindir / "psql"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "mta", "-d", "postgres", "-c", f"CREATE DATABASE {name}"],
                       check=True, capture_output=True)
        return self.url(name)


class RedisServer:
    """One redis-server on 127.0.0.1, no persistence (limits are leases and
    windows that rebuild themselves)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mta-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._dbs = itertools.count(0)

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        assert exe is not None, MISSING_ENGINES
        self._proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
             "--save", "", "--appendonly", "no", "--databases", "1000",
             "--protected-mode", "yes"],
            stdout=open(self.root / "log", "ab"), stderr=subprocess.STDOUT)
        _wait_port(self.port)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def new_db(self) -> str:
        return self.url(next(self._dbs) % 1000)
