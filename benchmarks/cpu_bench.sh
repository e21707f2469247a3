#!/usr/bin/env bash
# `make bench`: the CPU benchmarks in one go, each printing its ratio against a baseline measured in the same run
# (docs/performance.md): draft vs full JPEG decoding; the cached reader vs the seed's loader and raw-JPEG tf.data;
# kfp.local's orchestration vs the library calls it runs; `cxr train`'s epoch on JAX vs TensorFlow.
# 298 s on the 2-core development machine.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
# The local runner starts `python3` for each task: the venv's, importing this tree's cxr.
export PATH="$PWD/$venv/bin:$PATH" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=2
started=$SECONDS
for bench in decode_speed input_pipeline orchestration_overhead backend_epoch_time; do
  printf '\n== benchmarks/%s.py\n' "$bench"
  start=$SECONDS
  python3 "benchmarks/$bench.py"
  echo "($((SECONDS - start)) s)"
done
echo "make bench: $((SECONDS - started)) s in all"
