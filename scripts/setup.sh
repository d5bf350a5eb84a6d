#!/bin/sh
# Set up mta in ./.venv on a fresh Debian machine with Python 3.11.
#   scripts/setup.sh          runtime dependencies (to run the daemon)
#   scripts/setup.sh test     plus the test dependencies
# Debian splits venv out of python3; when it is missing and we are root,
# install it (apt-get update first, as on a fresh machine).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
        echo "setup: python3-venv is missing; run: sudo apt-get install python3-venv" >&2
        exit 1
    fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if [ "${1:-}" = test ]; then
    # Independent verifiers the tests use: Perl Mail::DKIM (DKIM signatures)
    # and opendkim-testmsg (DKIM signatures), Sisimai (our DSNs must parse
    # there too) and promtool from Debian's prometheus package (`promtool
    # check metrics` on /metrics), systemd-analyze from Debian's systemd
    # package (verifies systemd/mta.service), and Node.js with npm (the official
    # Resend Node SDK is a test client of the sending API), Chromium and its
    # WebDriver (the console's browser tests, driven by Selenium; nothing is
    # downloaded at test time), PostgreSQL and Redis (the cluster tests start
    # their own servers on loopback ports in temporary directories). Root only; the tests that need them say why
    # they skip when they are missing.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null &&
       { ! perl -MMail::DKIM::Verifier -MSisimai -e1 >/dev/null 2>&1 ||
         ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ] ||
         ! command -v opendkim-testmsg >/dev/null ||
         ! command -v promtool >/dev/null ||
         ! command -v systemd-analyze >/dev/null ||
         ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ||
         ! command -v redis-server >/dev/null ||
         ! command -v node >/dev/null || ! command -v npm >/dev/null; }; then
        apt-get update -qq
        # Node.js only when missing: a machine may carry a newer one than
        # Debian's (e.g. NodeSource's, which bundles npm and conflicts with
        # Debian's npm package).
        node_pkgs=
        if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
            node_pkgs="nodejs npm"
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            libmail-dkim-perl libsisimai-perl opendkim-tools prometheus systemd \
            chromium chromium-driver fonts-dejavu-core postgresql redis-server \
            $node_pkgs >/dev/null
        # We only want promtool: on a host running systemd the package also
        # enables a Prometheus server; switch it off again.
        if [ -d /run/systemd/system ]; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
            # Likewise the system's own PostgreSQL and Redis: the tests start theirs.
            systemctl disable --now postgresql redis-server >/dev/null 2>&1 || true
        fi
    fi
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    # The Resend Node SDK, at the version package-lock.json pins (its tests
    # skip, saying why, when this could not run).
    if ! command -v npm >/dev/null; then
        echo "setup: npm is missing; the Resend Node SDK tests will skip" >&2
    elif ! (cd tests/sdk/node && npm ci --silent --no-audit --no-fund); then
        echo "setup: npm ci failed in tests/sdk/node; the Resend Node SDK tests will skip" >&2
    fi
else
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
