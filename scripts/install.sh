#!/bin/sh
# Install mta as a systemd service. Idempotent: run it again to upgrade.
#
#   scripts/install.sh [--prefix DIR]        (as root)
#   DESTDIR=/tmp/pkg scripts/install.sh      (staging for a package, or a test)
#
# What it does
#   * a venv with mta in  $DESTDIR$PREFIX/venv   (PREFIX default /opt/mta)
#   * the `mta` system user and group             (only as root without DESTDIR)
#   * conf/mta.toml as $DESTDIR/etc/mta/mta.toml  (only when absent: never
#     overwrites an operator's config)
#   * systemd/mta.service as $DESTDIR/etc/systemd/system/mta.service, with
#     ExecStart pointing into the venv of this prefix
# It never starts, enables or reloads anything; it prints those steps.
#
# With DESTDIR the venv is built at $DESTDIR$PREFIX/venv but made for
# $PREFIX/venv: the scripts' #! lines, pyvenv.cfg and the activate scripts
# are rewritten to $PREFIX, and every .pyc is compiled with its $PREFIX path,
# so no file of the staged tree names $DESTDIR (checked at the end; the run
# fails otherwise). The staged venv's own scripts then only run once copied
# to $PREFIX; `$DESTDIR$PREFIX/venv/bin/python -m mta` works in place.
set -eu

usage() { echo "usage: $0 [--prefix DIR]   (env: DESTDIR, PYTHON)" >&2; exit 2; }
PREFIX=/opt/mta
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || usage; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#--prefix=}; shift ;;
        -h|--help) usage ;;
        *) usage ;;
    esac
done
case "$PREFIX" in /*) ;; *) echo "install: --prefix must be absolute: $PREFIX" >&2; exit 2 ;; esac
PREFIX=${PREFIX%/}
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
SRC=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
VENV=$DESTDIR$PREFIX/venv
ETC=$DESTDIR/etc
UNIT=$ETC/systemd/system/mta.service
say() { echo "install: $*"; }

# 1. The venv. Python's venv module is split out on Debian (python3-venv).
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "install: python3-venv is missing; run: apt-get install python3-venv" >&2
    exit 1
fi
mkdir -p "$DESTDIR$PREFIX"
[ -x "$VENV/bin/python" ] || { say "creating venv $VENV"; "$PY" -m venv "$VENV"; }
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip \
    >/dev/null 2>&1 || true
say "installing mta from $SRC into $VENV"
# Not editable: the service must not run code out of a source checkout.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-warn-script-location \
    --upgrade "$SRC"
# ProtectSystem=strict makes the venv read-only at run time: byte-compile now.
if [ -n "$DESTDIR" ]; then
    # pip wrote #!$DESTDIR$PREFIX/venv/bin/python and .pyc files naming
    # $DESTDIR: recompile every .pyc with the final path, rewrite the rest.
    say "making the staged venv refer to $PREFIX/venv, not $VENV"
    find "$VENV" -depth -type d -name __pycache__ -exec rm -rf {} +
    "$VENV/bin/python" -m compileall -q -f -s "$DESTDIR" -p / "$VENV/lib" >/dev/null 2>&1 || true
    "$VENV/bin/python" - "$DESTDIR$PREFIX" "$PREFIX" "$VENV" <<'PY'
import os, sys
old, new, root = (os.fsencode(a) for a in sys.argv[1:])
for top, _dirs, files in os.walk(root):
    for name in files:
        path = os.path.join(top, name)
        if os.path.islink(path) or name.endswith(b".pyc"):
            continue
        with open(path, "rb") as fh:
            data = fh.read()
        if old in data:
            with open(path, "r+b") as fh:       # in place: keeps the mode
                fh.write(data.replace(old, new))
                fh.truncate()
PY
    left=$(grep -rlF -- "$DESTDIR$PREFIX" "$DESTDIR$PREFIX" || true)
    if [ -n "$left" ]; then
        echo "install: these staged files still name $DESTDIR$PREFIX:" >&2
        echo "$left" >&2
        exit 1
    fi
else
    "$VENV/bin/python" -m compileall -q "$VENV/lib" >/dev/null 2>&1 || true
fi
install -m 0644 "$SRC/README.md" "$DESTDIR$PREFIX/README.md"

# 2. The system user (the unit runs as User=mta, Group=mta).
if [ -z "$DESTDIR" ] && [ "$(id -u)" = 0 ]; then
    if ! getent group mta >/dev/null; then
        say "creating group mta"
        groupadd --system mta
    fi
    if ! getent passwd mta >/dev/null; then
        say "creating system user mta"
        useradd --system --gid mta --home-dir /var/lib/mta --no-create-home \
            --shell /usr/sbin/nologin --comment "mta mail transfer agent" mta
    fi
else
    say "skipping the mta user (DESTDIR set or not root)"
fi

# 3. The configuration, only when absent.
install -d -m 0755 "$ETC"
install -d -m 0750 "$ETC/mta"
if [ -e "$ETC/mta/mta.toml" ]; then
    say "keeping existing $ETC/mta/mta.toml"
else
    install -m 0640 "$SRC/conf/mta.toml" "$ETC/mta/mta.toml"
    say "installed $ETC/mta/mta.toml (edit it: server.hostname, certificates, mode)"
fi
if [ -z "$DESTDIR" ] && [ "$(id -u)" = 0 ] && getent group mta >/dev/null; then
    chgrp mta "$ETC/mta" "$ETC/mta/mta.toml"   # readable by the service, not the world
fi

# 4. The unit, with ExecStart into this prefix's venv.
install -d -m 0755 "$ETC/systemd/system"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
sed -e "s|^ExecStart=/opt/mta/venv/bin/mta |ExecStart=$PREFIX/venv/bin/mta |" \
    -e "s|file:///opt/mta/README.md|file://$PREFIX/README.md|" \
    "$SRC/systemd/mta.service" >"$tmp"
if [ -e "$UNIT" ] && cmp -s "$tmp" "$UNIT"; then
    say "unit $UNIT is up to date"
else
    install -m 0644 "$tmp" "$UNIT"
    say "installed unit $UNIT"
fi

cat <<EOF

Next steps:
  1. edit /etc/mta/mta.toml (server.hostname, certificates, mode), then check it:
       $PREFIX/venv/bin/mta config check --config /etc/mta/mta.toml
  2. start it now and at every boot:
       systemctl daemon-reload && systemctl enable --now mta
  3. add a credential for an application (as the service user, so the
     store in /var/lib/mta stays private to it):
       runuser -u mta -- env MTA_STATE_DIR=/var/lib/mta $PREFIX/venv/bin/mta user add app1 --config /etc/mta/mta.toml
  After editing the config: systemctl reload mta   (journalctl -u mta shows
  event=reloaded, or event=reload_refused with each error)
EOF
