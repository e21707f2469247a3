#!/usr/bin/env bash
# benchmarks/gpu_throughput.py on a bare GPU machine: Python 3.12 with JAX (CUDA) and numpy, no TensorFlow, no
# Keras, nothing to install from. The wheels `make gpu-wheels` downloaded into .gpu-wheels (keras and what it
# imports, for cp312) are unpacked into a temporary folder on PYTHONPATH; the cxr model code runs from this
# source tree, not installed. Arguments go to gpu_throughput.py (e.g. --concurrent). The output is printed and
# kept in $OUT (a temporary folder when unset) with the GPU's name. docs/performance.md gives the exact command.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=${GPU_WHEELS_DIR:-.gpu-wheels}
if ! ls "$wheels"/keras-*.whl >/dev/null 2>&1; then
  echo "gpu_run.sh: no keras wheel in $wheels; run \`make gpu-wheels\` first" >&2
  exit 2
fi
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
python3 - "$site" "$wheels"/*.whl <<'PY'
import sys
import zipfile

for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
PY
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=${KERAS_BACKEND:-jax} TF_CPP_MIN_LOG_LEVEL=2
out=${OUT:-$(mktemp -d)}
mode=table
[[ " $* " == *" --concurrent "* ]] && mode=concurrent
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: none"
  python3 -c "import sys, jax, keras; print('python', sys.version.split()[0], '| jax', jax.__version__, '| keras', keras.__version__, '|', jax.devices())"
} 2>&1 | tee "$out/machine.txt"
python3 benchmarks/gpu_throughput.py "$@" 2>&1 | tee "$out/gpu_$mode.txt"
echo "gpu_run.sh: output in $out"
