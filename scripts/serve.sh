#!/usr/bin/env bash
# Install Signet into .venv (with grpcurl) and start the CA. Run from the directory that should
# hold ./ca-data; any extra arguments go to `ca-server serve` (e.g. --listen 127.0.0.1:0).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SIGNET_VENV:-$ROOT/.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[grpcurl]"
exec "$VENV/bin/ca-server" serve "$@"
