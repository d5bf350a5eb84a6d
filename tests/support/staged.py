"""scripts/install.sh into a DESTDIR, once per prefix for the whole test run.

One job: the staged installs that tests/test_install.py and
tests/test_service.py both inspect. Each install builds a venv and runs pip
(20-35 s on CI's 2 cores); the two modules used to make three of them, two
of which were the same. Tests only read the staged tree, except
test_service's idempotency check, which runs the installer again and
asserts that it changed nothing.

Public API:
    StagedInstalls(base)            base: a directory of the test session
      .get(prefix=None) -> Staged   the install for `prefix` (None: the
                                    default /opt/mta), made on first use
    Staged(dest, env, first)        DESTDIR, the environment install.sh ran
                                    with, its CompletedProcess
    run_install(dest, *args) -> CompletedProcess   one run of install.sh; skips
                                    (saying why) when python3-venv is missing
                                    or pip cannot reach the dependencies
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
INSTALL = ROOT / "scripts" / "install.sh"


@dataclass(frozen=True)
class Staged:
    dest: Path
    env: dict[str, str]
    first: subprocess.CompletedProcess


def run_install(dest: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DESTDIR=str(dest))
    p = subprocess.run(["sh", str(INSTALL), *args], env=env, capture_output=True, text=True,
                       timeout=600)
    out = p.stdout + p.stderr
    if p.returncode != 0 and "python3-venv is missing" in out:
        pytest.skip("python3-venv is missing (apt-get install python3-venv)")
    if p.returncode != 0 and ("No matching distribution" in out
                              or "Could not find a version" in out
                              or "Failed to establish a new connection" in out):
        pytest.skip(f"pip cannot install mta's dependencies here: {out[-300:]}")
    assert p.returncode == 0, out
    return p


class StagedInstalls:
    def __init__(self, base: Path):
        self.base = base
        self._made: dict[str | None, Staged] = {}

    def get(self, prefix: str | None = None) -> Staged:
        if prefix not in self._made:
            dest = self.base / f"stage{len(self._made)}"
            dest.mkdir()
            first = run_install(dest, *(["--prefix", prefix] if prefix else []))
            self._made[prefix] = Staged(dest, dict(os.environ, DESTDIR=str(dest)), first)
        return self._made[prefix]
