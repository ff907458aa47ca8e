#!/usr/bin/env bash
# Creates .venv (or uses $VENV) and installs gapinit-ray with pinned dependencies.
#
# torch: on a machine without an NVIDIA GPU the CPU build torch==2.13.0 is installed FIRST, so that no
# other package can pull a multi-GB CUDA torch. On a GPU machine an existing torch is kept; if there is
# none, install the torch build for your CUDA first (https://pytorch.org), then run this script.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
extras=${1:-dev}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
pip_q() { "$py" -m pip install --disable-pip-version-check -q "$@"; }
pip_q --upgrade pip

if ! "$py" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install.sh: a GPU is present but torch is not installed in $VENV;" \
         "install the torch build for your CUDA into it first (https://pytorch.org), then rerun." >&2
    exit 2
  fi
  pip_q "torch==2.13.0"
fi
torch_version=$("$py" -c "import torch; print(torch.__version__.split('+')[0])")
pip_q -c constraints.txt -c <(echo "torch==$torch_version") -e ".[$extras]"
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  # CPU machine: compile DeepSpeed's CPU collective op now (about a minute, once per user) rather than
  # in the first trials of the first sweep
  echo "install.sh: DeepSpeed CPU comm op: $("$py" -c "from gapinit_ray.train import build_cpu_comm_op; print(build_cpu_comm_op())" 2>/dev/null | tail -1)"
fi
echo "install.sh: gapinit-ray installed in $VENV (torch $torch_version)"
