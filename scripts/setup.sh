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
    # and opendkim-testmsg (DKIM signatures), and Sisimai (our DSNs must parse there too). Root only; the tests that
    # need them say why they skip when they are missing.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null &&
       { ! perl -MMail::DKIM::Verifier -MSisimai -e1 >/dev/null 2>&1 ||
         ! command -v opendkim-testmsg >/dev/null; }; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            libmail-dkim-perl libsisimai-perl opendkim-tools >/dev/null
    fi
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
else
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
