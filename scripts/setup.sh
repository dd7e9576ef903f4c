#!/usr/bin/env bash
# Set up everything flashstock needs on Debian 12: the Debian packages of the
# servers it runs (redis-server; etcd-server for the cluster's coordination;
# postgresql, whose server binaries the tests start a throw-away cluster
# with; prometheus, for the promtool that checks deploy/prometheus/'s alert
# rules; chromium, the headless browser the board's browser tests drive),
# a virtual environment in .venv, and the
# package installed editable with its stubs generated from protos/.
# Idempotent: run it again and it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
APT_PACKAGES=(redis-server etcd-server postgresql prometheus chromium)

missing=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || missing+=(etcd-server)
command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ] || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "flashstock needs Python 3.11 or newer as '$PYTHON' (set PYTHON=...)." >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "flashstock needs these Debian packages: ${missing[*]}" >&2
    echo "install them as root:  apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating the virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.flashstock-installed"
if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml setup.py protos scripts/gen_protos.py -newer "$stamp" -print -quit)" ]; then
  echo "==> installing flashstock (editable) with the server, postgres, test and lint extras; generating stubs from protos/"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[server,postgres,test,lint]'
  touch "$stamp"
fi
