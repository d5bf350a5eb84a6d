"""Shared pytest plumbing.

* `report` lets a test print a figure (e.g. the crash test's duplicate count)
  into the terminal summary, where CI logs keep it.
* A hang watchdog: when one test (setup, call and teardown together) runs for
  longer than HANG_AFTER seconds, every running event loop prints the stack of
  each of its tasks to stderr (thread stacks alone do not show where a
  coroutine waits), then the test's loop tasks are cancelled so the run fails
  with a traceback instead of eating CI's time limit; if it still runs a
  minute later, every thread's stack is printed and the run exits with 3.
"""

import asyncio
import gc
import os
import sys
import threading
import time
import traceback

import pytest

# Hermetic: a machine with a real /etc/mta/mta.toml must not leak it into
# tests that run `mta …` without --config (issue 10 item 13's default path).
os.environ.setdefault("MTA_DEFAULT_CONFIG", "")

_REPORT: list[str] = []
HANG_AFTER = float(os.environ.get("MTA_TEST_HANG_AFTER", "240"))


@pytest.fixture
def report():
    return _REPORT.append


@pytest.fixture(scope="session")
def staged_installs(tmp_path_factory):
    """scripts/install.sh into a DESTDIR once per prefix for the whole run
    (tests/support/staged.py): test_install.py and test_service.py share them."""
    from tests.support.staged import StagedInstalls
    return StagedInstalls(tmp_path_factory.mktemp("installs"))


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("mta test figures")
        for line in _REPORT:
            terminalreporter.write_line(line)


def _dump_and_cancel(loop: asyncio.AbstractEventLoop, nodeid: str) -> None:
    print(f"\n=== hang watchdog: {nodeid} still running after {HANG_AFTER:g}s; "
          f"asyncio tasks of {loop!r}:", file=sys.stderr)
    for task in asyncio.all_tasks(loop):
        print(f"--- {task!r}", file=sys.stderr)
        task.print_stack(file=sys.stderr)
    for task in asyncio.all_tasks(loop):
        task.cancel()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    done = threading.Event()

    def watch():
        if done.wait(HANG_AFTER):
            return
        for obj in gc.get_objects():
            if isinstance(obj, asyncio.AbstractEventLoop) and obj.is_running():
                try:
                    obj.call_soon_threadsafe(_dump_and_cancel, obj, item.nodeid)
                except RuntimeError:
                    pass
        if done.wait(60.0):
            return
        # Cancelling did not end it: every thread's stack, then stop the run.
        # pytest captures fds 1 and 2 during a test: give them back first (as
        # its pdb support does), or this would be lost with the process.
        capman = item.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            capman.suspend_global_capture(in_=True)
        err = sys.stderr
        print(f"\n=== hang watchdog: {item.nodeid} ignored cancellation; exiting", file=err)
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            print(f"--- thread {names.get(ident, ident)}", file=err)
            print("".join(traceback.format_stack(frame)).rstrip(), file=err)
        err.flush()
        os._exit(3)

    t = threading.Thread(target=watch, name="hang-watchdog", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()


# A test that fails before closing a spool leaves an aiosqlite worker thread
# (non-daemon) behind; Python then waits for it forever at exit, after pytest
# printed its summary but before the output was flushed: a failure became a
# silent hang. When the run is over, give lingering threads a grace period,
# then name them and exit with pytest's status.
EXIT_GRACE = float(os.environ.get("MTA_TEST_EXIT_GRACE", "30"))


def pytest_unconfigure(config):
    status = getattr(config, "_mta_exitstatus", None)

    def reaper():
        time.sleep(EXIT_GRACE)
        left = [t for t in threading.enumerate()
                if t.is_alive() and not t.daemon and t is not threading.main_thread()]
        if not left:
            return
        sys.stdout.flush()
        print(f"\n=== exit watchdog: {len(left)} thread(s) still running {EXIT_GRACE:g}s after "
              f"the run ended (a test left a resource open): "
              f"{', '.join(t.name for t in left)}", file=sys.stderr, flush=True)
        os._exit(status if status else 3)

    threading.Thread(target=reaper, name="exit-watchdog", daemon=True).start()


def pytest_sessionfinish(session, exitstatus):
    session.config._mta_exitstatus = int(exitstatus)


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL on a loopback port for the whole run (issue 19;
    tests/support/engines.py), started on first use."""
    from tests.support.engines import MISSING_ENGINES, PostgresServer
    if MISSING_ENGINES:
        pytest.skip(MISSING_ENGINES)
    server = PostgresServer().start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server on a loopback port for the whole run (issue 19)."""
    from tests.support.engines import MISSING_ENGINES, RedisServer
    if MISSING_ENGINES:
        pytest.skip(MISSING_ENGINES)
    server = RedisServer().start()
    yield server
    server.destroy()


@pytest.fixture
def pg_url(pg_server):
    """A fresh database of its own on the shared server."""
    return pg_server.new_database()


@pytest.fixture
def redis_url(redis_server):
    """A Redis database number of its own on the shared server."""
    return redis_server.new_db()


@pytest.fixture
def own_pg():
    """A PostgreSQL server of this test's own, to stop and start (failure
    tests): the session's server is shared by every other test."""
    from tests.support.engines import MISSING_ENGINES, PostgresServer
    if MISSING_ENGINES:
        pytest.skip(MISSING_ENGINES)
    server = PostgresServer().start()
    yield server
    server.destroy()


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, to stop and restart."""
    from tests.support.engines import MISSING_ENGINES, RedisServer
    if MISSING_ENGINES:
        pytest.skip(MISSING_ENGINES)
    server = RedisServer().start()
    yield server
    server.destroy()
