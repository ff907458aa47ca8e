#!/usr/bin/env bash
# Installs everything (scripts/install.sh) and runs the quickstart sweep on an embedded local Ray, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
VENV=${VENV:-.venv}
exec "$VENV/bin/gapinit" run sweeps/quickstart.yaml "$@"
