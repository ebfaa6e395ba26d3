#!/usr/bin/env bash
# One-shot GPU check (per-step time limits add up to 470 s, < 8 minutes on one H100/H200, no network): environment report, GPU-marked tests with
# compiled Triton kernels (no interpreter), kernel / patchify / front-end / throughput benchmarks at MaskSpec-base
# shapes, and a summary. Everything is also written under $OUT when it is set.
#   bash benchmarks/gpu_check.sh            (from the repository root; uses python3 or $PYTHON)
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0; fi
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RES=${OUT:-benchmarks/results/gpu}
mkdir -p "$RES"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0 MASKSPEC_TEST_SEED=${MASKSPEC_TEST_SEED:-1234}
LOG="$RES/gpu_check.log"
: > "$LOG"
declare -A STATUS

step() {  # step NAME TIMEOUT_S CMD... : run with a time limit, log everything, remember pass/fail
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "=== $name ($(date +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    STATUS[$name]="rc=$rc $((SECONDS - t0))s"
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
}

step env 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY - <<'PYEOF'
import importlib, platform, torch
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NONE')
for m in ['triton', 'flash_attn', 'nvidia.dali', 'timm', 'safetensors', 'soundfile', 'scipy', 'tqdm', 'matplotlib', 'pybind11']:
    try:
        mod = importlib.import_module(m); print(f'{m:12s}', getattr(mod, '__version__', 'present'))
    except Exception as e:
        print(f'{m:12s} missing ({type(e).__name__})')
import maskspec_fast
from maskspec_fast.backends import format_backends
print(format_backends())
PYEOF"

# The C++ extension is optional on the GPU box (its CUDA path is Triton); build it in place when a compiler exists.
step build_ext 45 $PY setup.py build_ext --inplace

# Only the files holding GPU tests, so that a test module needing a package the GPU image lacks cannot stop them.
GPU_TEST_FILES=$(grep -l "mark.gpu" tests/test_*.py)
step gpu_tests 80 $PY -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors $GPU_TEST_FILES \
    --junitxml="$RES/gpu_tests.xml"
step kernels 40 $PY benchmarks/kernels.py --batch 128 --results-file "$RES/kernels.json"
step patchify 25 $PY benchmarks/patchify.py --results-file "$RES/patchify.json"
step frontend 30 $PY benchmarks/frontend.py --num-files 64 --results-file "$RES/frontend.json"
step throughput_pretrain 170 $PY benchmarks/throughput.py --preset base --batch-size 64 --frames 992 --dtype bf16 \
    --modes pretrain --impls all --num-warm-iter 3 --num-bench-iter 10 --results-file "$RES/throughput_pretrain.json"
step throughput_finetune 60 $PY benchmarks/throughput.py --preset base --batch-size 64 --frames 992 --dtype bf16 \
    --modes finetune --impls ref,fused --num-warm-iter 3 --num-bench-iter 10 --results-file "$RES/throughput_finetune.json"

{
    echo
    echo "=== summary ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
    for k in env build_ext gpu_tests kernels patchify frontend throughput_pretrain throughput_finetune; do
        printf '  %-22s %s\n' "$k" "${STATUS[$k]:-not run}"
    done
    grep -E "passed|failed|error" "$LOG" | grep -E "^[0-9]+ (passed|failed)|= .* (passed|failed)" | tail -1
} | tee -a "$LOG" | tee "$RES/summary.txt"
