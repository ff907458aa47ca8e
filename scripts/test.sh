#!/usr/bin/env bash
# Installs everything (scripts/install.sh) and runs the lint and the test suite: the command CI runs.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check gapinit_ray tests benchmarks
"$VENV/bin/ruff" format --check gapinit_ray tests benchmarks
exec "$VENV/bin/python" -m pytest -m "not gpu" --durations=25 "$@"
