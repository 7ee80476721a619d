#!/usr/bin/env bash
# Install Signet with its test tools into .venv, then lint, type-check and run the whole suite.
# Extra arguments go to pytest (e.g. -k renew).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SIGNET_VENV:-$ROOT/.venv}"
cd "$ROOT"
command -v openssl >/dev/null || { echo "openssl is required (apt-get install openssl)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
export PATH="$VENV/bin:$PATH"
status=0
echo "== ruff"; ruff check . && ruff format --check . || status=1
echo "== mypy"; mypy || status=1
echo "== pytest"; python -m pytest "$@" || status=1
exit $status
