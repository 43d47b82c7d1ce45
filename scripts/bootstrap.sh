#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the extras given as arguments.
# Sourced by the other scripts; safe to run again (pip skips what is already installed).
#
# pip's own output goes to .venv/pip-install.log: only its errors and warnings are shown, less
# the "Location '...' is ignored" lines that a pip configured with local index directories
# (extra-index-url = file:///...) prints for every package those directories do not hold.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
LOG="$ROOT/.venv/pip-install.log"

quiet_pip() {
  if "$ROOT/.venv/bin/python" -m pip install -q "$@" >"$LOG" 2>&1; then
    grep -E '^(ERROR|WARNING)' "$LOG" | grep -v "is ignored: it is neither a file nor a directory" || true
  else
    grep -v "is ignored: it is neither a file nor a directory" "$LOG" >&2 || true
    echo "==> pip install $* failed (full output: $LOG)" >&2
    return 1
  fi
}

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "==> creating $ROOT/.venv"
  "$PY" -m venv "$ROOT/.venv"
  quiet_pip --upgrade pip
fi
EXTRAS="${1:-aggregator,embedded}"
STAMP="$ROOT/.venv/.installed-$(echo "$EXTRAS" | tr ',' '-')"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "==> installing litellm-stream-metrics[$EXTRAS] into .venv (first run takes a minute)"
  quiet_pip -e "$ROOT[$EXTRAS]"
  touch "$STAMP"
fi
