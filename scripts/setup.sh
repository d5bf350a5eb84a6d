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
    # package (verifies systemd/mta.service). Root only; the tests that need them say
    # why they skip when they are missing.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null &&
       { ! perl -MMail::DKIM::Verifier -MSisimai -e1 >/dev/null 2>&1 ||
         ! command -v opendkim-testmsg >/dev/null ||
         ! command -v promtool >/dev/null ||
         ! command -v systemd-analyze >/dev/null; }; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            libmail-dkim-perl libsisimai-perl opendkim-tools prometheus systemd >/dev/null
        # We only want promtool: on a host running systemd the package also
        # enables a Prometheus server; switch it off again.
        if [ -d /run/systemd/system ]; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    fi
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
else
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
