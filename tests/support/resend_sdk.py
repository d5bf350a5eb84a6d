"""The official Resend SDKs as test clients of mta's sending API (issue 13).

One job: let a test drive the Python SDK (PyPI `resend`, in-process) and the
Node SDK (npm `resend`, pinned in tests/sdk/node/package.json, run through
tests/sdk/node/run.mjs) against a base URL on loopback, unchanged, the way
an application switches from Resend to mta.

Public API:
    node_available() -> (bool, reason)   node ≥ 18 on PATH and the pinned SDK
                                         installed by `npm ci` (scripts/setup.sh test)
    requires_node                        pytest.mark.skipif(...) with that reason
    run_node(base_url, api_key, ops, timeout=60, via="option") -> list[dict]
        ops   [{"op": "emails.send", "args": {…}, "options": {…}}, …]
              (run.mjs's header lists the ops, the args each takes and the
              {"concurrent": N} wrapper); via "env" switches the SDK with
              RESEND_BASE_URL instead of the constructor's baseUrl
        ->    one dict per op, in order: {"op", "data", "error", "headers"},
              {"op", "concurrent", "results": [...]}, or {"op", …, "exception"}
    python_resend(base_url, api_key)     context manager: the Python SDK's
                                         module-level `resend.api_url` and
                                         `resend.api_key` point at base_url
                                         inside, restored after; yields `resend`
    NODE_DIR                             tests/sdk/node

Both strip a trailing "/" from base_url: each SDK appends its paths ("/emails")
to the base URL as a string, so "http://h:p/" would ask for "//emails".

Invariants: neither helper reaches anything but base_url: run_node gives the
child a copy of the environment without RESEND_* and proxy variables (Node's
fetch ignores proxies anyway); python_resend adds 127.0.0.1 and localhost to
NO_PROXY while it is active, because the SDK's `requests` honours
HTTP(S)_PROXY. The Python SDK reads RESEND_API_URL only when `resend` is
first imported (into `resend.api_url`) and `resend.api_url` / `resend.api_key`
on every call, so python_resend sets the attributes, not the environment.
Neither SDK retries or phones home (docs in /tmp/briefs/sdk_wire.md, issue 13).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "sdk" / "node"
# The SDK's package.json asks for node >= 20, but Debian 12's nodejs (what
# scripts/setup.sh installs) is 18.20: every op run.mjs drives was checked on
# both, so 18 is the floor here (below it there is no global fetch).
_NODE_MAJOR_MIN = 18
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _pinned_version() -> str:
    return json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["resend"]


def node_available() -> tuple[bool, str]:
    """Whether run_node can work here, and if not, why (a skip reason)."""
    node = shutil.which("node")
    if node is None:
        return False, "node is not installed (scripts/setup.sh test installs nodejs and npm)"
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20)
        major = int(out.stdout.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return False, f"cannot run {node} --version: {e}"
    if major < _NODE_MAJOR_MIN:
        return False, (f"node {out.stdout.strip()} is too old: "
                       f"run.mjs needs >= {_NODE_MAJOR_MIN}")
    installed = NODE_DIR / "node_modules" / "resend" / "package.json"
    if not installed.exists():
        return False, f"the Resend Node SDK is not installed: run `npm ci` in {NODE_DIR}"
    version = json.loads(installed.read_text())["version"]
    if version != _pinned_version():
        return False, (f"{NODE_DIR}/node_modules has resend {version}, package.json pins "
                       f"{_pinned_version()}: run `npm ci` there")
    return True, ""


_OK, _WHY = node_available()
requires_node = pytest.mark.skipif(not _OK, reason=_WHY)


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("RESEND_") and k not in _PROXY_VARS}


def run_node(base_url: str, api_key: str, ops: list[dict[str, Any]], timeout: float = 60,
             via: str = "option") -> list[dict[str, Any]]:
    """Run `ops` with the Node SDK against base_url; one result dict per op."""
    if via not in ("option", "env"):
        raise ValueError(f"via must be 'option' or 'env', not {via!r}")
    doc = {"base_url": base_url.rstrip("/"), "api_key": api_key, "via": via, "ops": ops}
    proc = subprocess.run(["node", str(NODE_DIR / "run.mjs")], input=json.dumps(doc),
                          capture_output=True, text=True, timeout=timeout, cwd=NODE_DIR,
                          env=_child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"run.mjs exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if len(results) != len(ops):
        raise RuntimeError(f"run.mjs printed {len(results)} results for {len(ops)} ops: "
                           f"{proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return results


@contextlib.contextmanager
def python_resend(base_url: str, api_key: str) -> Iterator[Any]:
    """The Python SDK pointed at base_url with api_key; both restored on exit."""
    import resend

    saved = (resend.api_url, resend.api_key)
    saved_env = {k: os.environ.get(k) for k in ("NO_PROXY", "no_proxy")}
    for k in saved_env:
        os.environ[k] = ",".join(filter(None, [saved_env[k], "127.0.0.1", "localhost"]))
    resend.api_url, resend.api_key = base_url.rstrip("/"), api_key
    try:
        yield resend
    finally:
        resend.api_url, resend.api_key = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
