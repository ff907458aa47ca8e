#!/usr/bin/env bash
# Downloads what benchmarks/gpu_check.py needs on the lent GPU machine and that machine lacks (it has
# Python 3.12, torch, transformers, peft, pyarrow, ... but no DeepSpeed, hjson, pydantic): DeepSpeed's
# source archive and the small wheels, into .gpu_wheels/ (git-ignored), checks they fit the 64 MiB that
# travels with the working tree, and prints the one command line that installs them there and runs the
# check. Run it here (with network access to PyPI), then carry .gpu_wheels/ with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu_wheels
rm -rf "$out" && mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
pins=$(grep -E '^(deepspeed|hjson|pydantic|pydantic_core|pydantic-core|annotated-types|annotated_types|typing-inspection|typing_inspection|ninja|py-cpuinfo|msgpack)==' constraints.txt || true)
# binary wheels for the GPU machine's Python; DeepSpeed only ships a source archive
"$py" -m pip download --disable-pip-version-check -q --no-deps -d "$out" \
  --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --python-version 3.12 --implementation cp \
  $(echo "$pins" | grep -viE '^deepspeed' | grep -iE '^(hjson|pydantic|pydantic_core|pydantic-core|annotated|typing)')
"$py" -m pip download --disable-pip-version-check -q --no-deps --no-binary=:all: -d "$out" \
  $(echo "$pins" | grep -iE '^deepspeed')
size=$(du -sm "$out" | cut -f1)
echo "gpu_wheels.sh: $(ls "$out" | wc -l) files, ${size} MiB in $out" >&2
if [ "$size" -gt 48 ]; then
  echo "gpu_wheels.sh: $out is ${size} MiB; with the working tree it must stay under 64 MiB" >&2
  exit 1
fi
cat <<'CMD'
python -m pip install --no-index --no-deps --no-build-isolation .gpu_wheels/* && DS_BUILD_OPS=0 python -m benchmarks.gpu_check --out benchmarks/results
CMD
