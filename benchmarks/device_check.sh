#!/usr/bin/env bash
# One pass over a GPU machine, in stages that each have a time limit and write their own log, so a stage
# that hangs or fails still leaves the others' results:
#   1. the test suite with the model tests on CUDA (IA2_TEST_DEVICE=cuda, fp32; slow tests left out);
#   2. random-weight models with the presets' shapes and tokenizers (benchmarks/shape_model.py), for
#      machines that cannot receive the GGUFs;
#   3. benchmarks/run.py on those models and the tiny one (the device's default dtype, bf16 on CUDA);
#   4. one study setting (benchmarks/shape-sweep.yaml) through `ia2 sweep`, for the per-unit wall time.
#
#   bash benchmarks/device_check.sh OUT SHAPES [PYTHON]
#
# OUT receives the logs, the JUnit XML, bench-<model>/ (BENCHMARKS.md, benchmarks.json) and sweep/ (the records).
# SHAPES holds one folder per preset with its config.json and tokenizer files (shape_model.py's SRC).
set -u
OUT=${1:?usage: device_check.sh OUT SHAPES [PYTHON]}
SHAPES=${2:?usage: device_check.sh OUT SHAPES [PYTHON]}
PY=${3:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stage() { echo "== $1 $(date -u +%H:%M:%S)"; }

stage "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__)"
  nproc; } 2>&1 | tee "$OUT/machine.txt"

stage "tests on cuda"
IA2_TEST_DEVICE=cuda timeout 150 "$PY" -m pytest -q -rfE -m "not slow" -n 8 -p no:cacheprovider \
  --continue-on-collection-errors --junitxml="$OUT/tests-cuda.xml" >"$OUT/tests-cuda.log" 2>&1
echo "pytest exit $?"; tail -n 25 "$OUT/tests-cuda.log"

stage "shape models"
models=""
for src in "$SHAPES"/*/; do
  name="shape-$(basename "$src")"
  timeout 60 "$PY" benchmarks/shape_model.py "$src" "$name" >>"$OUT/shapes.log" 2>&1 && models="$models $name"
done
echo "models:$models"

stage "benchmarks"  # one run per model, so a model that runs out of time costs only its own report
for m in $models tiny-llama; do
  timeout 75 "$PY" benchmarks/run.py --out "$OUT/bench-$m" --no-sweeps --models "$m" >"$OUT/bench-$m.log" 2>&1
  echo "$m: exit $?"; tail -n 4 "$OUT/bench-$m.log"
done

stage "sweep timing"
timeout 130 "$PY" -m ia2 sweep benchmarks/shape-sweep.yaml --out "$OUT/sweep" >"$OUT/sweep.log" 2>&1
echo "sweep exit $?"; tail -n 12 "$OUT/sweep.log"
stage "done"
