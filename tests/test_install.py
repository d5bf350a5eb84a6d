"""scripts/install.sh with DESTDIR: the staged tree is made for its final
prefix, so no file under it names the staging directory (issue 10 item 19:
the venv's #! lines baked the staging path in, so a package built from it
could not run).

Real parts: the real script, the real `python -m venv` and pip (from the
configured index or wheel directory), into a temporary DESTDIR. Runs as any
user (DESTDIR skips everything that needs root); skips when python3-venv is
missing or pip cannot reach mta's dependencies, saying so.
"""

from __future__ import annotations

import marshal
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.staged import run_install


def _files_naming(root: Path, needle: bytes) -> list[str]:
    hits = []
    for top, _dirs, files in os.walk(root):
        for name in files:
            path = Path(top, name)
            if path.is_symlink():
                target = os.readlink(path)
                if os.fsencode(target).find(needle) >= 0:
                    hits.append(f"{path} -> {target}")
                continue
            if needle in path.read_bytes():
                hits.append(str(path))
    return hits


@pytest.mark.parametrize("prefix", [None, "/srv/mta"])
def test_destdir_tree_never_names_the_staging_path(staged_installs, prefix):
    # the staged installs are shared with test_service.py (tests/support/staged.py)
    dest = staged_installs.get(prefix).dest
    final = prefix or "/opt/mta"
    venv = dest / final.lstrip("/") / "venv"
    assert (venv / "bin" / "mta").exists()

    staged = _files_naming(dest, os.fsencode(str(dest)))
    assert staged == [], f"{len(staged)} files name {dest}: {staged[:10]}"

    # the scripts run from the final prefix …
    for script in ("mta", "pip"):
        first = (venv / "bin" / script).read_text().splitlines()[0]
        assert first == f"#!{final}/venv/bin/python", (script, first)
    # … and the staged venv still works in place (python finds its own pyvenv.cfg)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "mta", "--version"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "mta 0.1.0\n"), r.stderr

    # bytecode names the final path (a traceback in production points at real files)
    pyc = next((venv / "lib").rglob("mta/cli/__pycache__/main.*.pyc"))
    code = marshal.loads(pyc.read_bytes()[16:])
    assert code.co_filename.startswith(f"{final}/venv/lib/"), code.co_filename

    if prefix is None:
        # a re-run (an upgrade of the same staging tree: pip writes the
        # scripts with the staging path again) is cleaned the same way
        second = run_install(dest)
        assert "keeping existing" in second.stdout
        assert _files_naming(dest, os.fsencode(str(dest))) == []
