#!/usr/bin/env bash
# Build the aggregator image (deploy/Dockerfile) for real and run it: tests/test_image.py with a
# container engine required. Without LSM_IMAGE_BASE the base is a local Debian bookworm with
# Python (scripts/image_base.sh: debootstrap, cached). Engines: podman (Debian: apt-get install
# podman runc debootstrap) or docker with a running daemon; LSM_CONTAINER_ENGINE picks one.
# Set LSM_REQUIRE_CONTAINER_ENGINE=0 to skip instead of failing where no engine can run.
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" "aggregator,embedded,test,dev"
cd "$ROOT"
export LITELLM_LOCAL_MODEL_COST_MAP=True
export LSM_REQUIRE_CONTAINER_ENGINE="${LSM_REQUIRE_CONTAINER_ENGINE:-1}"
exec "$ROOT/.venv/bin/python" -m pytest -q -s -rs tests/test_image.py "$@"
