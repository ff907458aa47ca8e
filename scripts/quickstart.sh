#!/usr/bin/env bash
# Installs everything (scripts/install.sh) and runs the quickstart sweep on an embedded local Ray, on CPU.
# The sweep runs in the directory you start this from: its results go to ./gapinit_results there (the
# spec's relative storage, resolved against the current directory like every relative path in a spec).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/install.sh" dev
VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$root/$VENV" ;; esac  # install.sh reads a relative VENV from the root
exec "$VENV/bin/gapinit" run "$root/sweeps/quickstart.yaml" "$@"
