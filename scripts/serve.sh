#!/usr/bin/env bash
# Install Signet into .venv (with grpcurl) and start the CA in ./ca-data of the directory it is run
# from: `bash scripts/serve.sh` at the repository root, or `bash /path/to/signet/scripts/serve.sh`
# from anywhere else. Any extra arguments go to `ca-server serve` (e.g. --listen 127.0.0.1:0).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SIGNET_VENV:-$ROOT/.venv}"
say() { echo "serve.sh: $*" >&2; }
if [ ! -x "$VENV/bin/python" ]; then
  say "creating a virtualenv in $VENV"
  python3 -m venv "$VENV"
fi
# pip install -e costs seconds on every start even when nothing changed: run it only when the
# checkout or its pyproject.toml differ from what the stamp says was installed last.
STAMP="$VENV/.signet-serve-stamp"
want="$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$ROOT/pyproject.toml") $ROOT"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$have" != "$want" ]; then
  if [ -z "$have" ]; then
    say "installing Signet and grpcurl into $VENV with pip (about 20 s the first time)..."
  else
    say "pyproject.toml changed since the last install: reinstalling Signet into $VENV..."
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[grpcurl]"
  echo "$want" >"$STAMP"
  say "installed; starting the CA"
fi
exec "$VENV/bin/ca-server" serve "$@"
