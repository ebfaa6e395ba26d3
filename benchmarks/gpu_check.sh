#!/usr/bin/env bash
# One-shot GPU check for a short lent window (15 min of device time, start-up included). The step limits add up
# to 300 s, so a rerun still fits after a failure. Order: environment, GPU-marked tests (compiled Triton kernels,
# no interpreter), then the eager benchmarks (kernels, whole training steps vs the timm peer, patchify on CUDA,
# front end), and the torch.compile variants last, in their own steps (compiling is what overruns a limit).
# Each benchmark appends its rows to a JSON-lines file as they finish, so a step cut short keeps what it measured.
# Files under $OUT (at most 8, what the device returns): gpu_check.log, summary.txt, gpu_tests.xml,
# kernels.jsonl, throughput.jsonl, patchify.jsonl, frontend.json. Caches go to $TMPDIR, not $OUT.
#   bash benchmarks/gpu_check.sh              (repository root; python3 or $PYTHON; results in $OUT or benchmarks/results/gpu)
#   bash benchmarks/gpu_check.sh --dry-run    (every step on CPU with tiny shapes, Triton in the interpreter and the
#                                              compiled rows with the aot_eager backend; CI runs this, so a broken
#                                              step is caught before a GPU is lent)
#   bash benchmarks/gpu_check.sh --only kernels,throughput_pretrain   (rerun some steps: log and rows are appended,
#                                              each benchmark run starting with its own "run" record)
# Exit status: 0 when every step run passed, 1 otherwise (the summary names the steps).
DRY=0
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        --dry-run) DRY=1 ;;
        --only) ONLY=",${2:?--only needs a comma list of steps},"; shift ;;
        *) echo "unknown argument $1 (use --dry-run, --only STEPS or --help)" >&2; exit 2 ;;
    esac
    shift
done
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "$DRY" = 1 ]; then RES=${OUT:-benchmarks/results/gpu_dry_run}; else RES=${OUT:-benchmarks/results/gpu}; fi
mkdir -p "$RES"
CACHE=${TMPDIR:-/tmp}/maskspec_gpu_check_cache
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MASKSPEC_TEST_SEED=${MASKSPEC_TEST_SEED:-1234}
export TRITON_CACHE_DIR="$CACHE/triton" TORCHINDUCTOR_CACHE_DIR="$CACHE/inductor"
export TRITON_INTERPRET=$DRY  # dry run: kernels in the interpreter; on the GPU: compiled
export PY DRY
# dry run: one CPU thread per step, quick and steady on a busy 2-core CI box (2 threads on loaded cores spin in
# OpenMP barriers and run several times slower); it checks that every step works, not how fast
[ "$DRY" = 1 ] && export OMP_NUM_THREADS=1
# The limits are the GPU window's; a dry run checks that each step works, not that a CPU meets a GPU's limit, so it
# allows each step SCALE times its limit (a busy CI box must not fail it for being slow)
SCALE=1
[ "$DRY" = 1 ] && SCALE=${GPU_CHECK_DRY_LIMIT_SCALE:-4}
LOG="$RES/gpu_check.log"
[ -n "$ONLY" ] || : > "$LOG"  # a rerun of some steps (--only) appends to the first run's log
declare -A STATUS
STEPS=()
TOTAL_LIMIT=0
FAILED=0

step() {  # step NAME LIMIT_S CMD... : run with a time limit (SIGKILL 5 s after TERM), log everything, record rc
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    TOTAL_LIMIT=$((TOTAL_LIMIT + limit))  # the whole script's budget, whether or not --only selects the step
    if [ -n "$ONLY" ] && [ "$name" != env ] && [[ "$ONLY" != *",$name,"* ]]; then return 0; fi
    STEPS+=("$name")
    echo "=== $name ($(date +%H:%M:%S), limit ${limit}s x $SCALE): $*" | tee -a "$LOG"
    timeout -k 5 $((limit * SCALE)) "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && rc="$rc (time limit)"
    STATUS[$name]="rc=$rc $((SECONDS - t0))s"
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
}

env_check() {  # versions, the card, and what Triton needs to build its launcher: a C compiler and Python headers
    local rc=0
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    else
        echo "nvidia-smi: absent"
    fi
    local cc=${CC:-}
    [ -n "$cc" ] || cc=$(command -v cc || command -v gcc || command -v clang || true)
    if [ -n "$cc" ]; then echo "C compiler: $cc ($("$cc" --version | head -1))"; else echo "C compiler: MISSING (Triton cannot build its launcher; apt-get install gcc)"; rc=1; fi
    "$PY" - <<'PYEOF' || rc=$?
import importlib, os, platform, sys, sysconfig
import torch
inc = sysconfig.get_paths()["include"]
ok = os.path.exists(os.path.join(inc, "Python.h"))
print("python", platform.python_version(), "headers", inc if ok else f"MISSING ({inc}/Python.h; apt-get install python3-dev)")
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
for m in ["triton", "flash_attn", "timm", "nvidia.dali", "safetensors", "soundfile", "scipy", "pybind11"]:
    try:
        mod = importlib.import_module(m); print(f"{m:12s}", getattr(mod, "__version__", "present"))
    except Exception as e:
        print(f"{m:12s} missing ({type(e).__name__})")
from maskspec_fast.backends import format_backends
print(format_backends())
if not torch.cuda.is_available() and os.environ["DRY"] != "1":
    print("no CUDA device: nothing to measure here (use --dry-run on a CPU machine)")
    sys.exit(3)
sys.exit(0 if ok else 1)
PYEOF
    return $rc
}
export -f env_check

step env 15 bash -c env_check
if [ "${STATUS[env]%% *}" = "rc=3" ]; then echo "no CUDA device; stopping" | tee -a "$LOG"; exit 1; fi

# Only the files holding GPU tests, so that a test module needing a package the GPU image lacks cannot stop them.
# (The dry run collects them and skips every test: it checks the selection and collection.)
GPU_TEST_FILES=$(grep -l "mark.gpu" tests/test_*.py)
step gpu_tests 45 "$PY" -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors $GPU_TEST_FILES \
    --junitxml="$RES/gpu_tests.xml"

if [ "$DRY" = 1 ]; then
    KERNELS=(--device cpu --preset tiny --frames 64 --batch 1 --num-warm-iter 1 --num-bench-iter 2)
    THROUGHPUT=(--device cpu --preset tiny --frames 64 --depth 2 --decoder-depth 1 --batch-size 2 --dtype fp32
                --num-warm-iter 1 --num-bench-iter 2)
    PATCHIFY=(--device cpu --batch 2 --shapes 128x992 --dtypes bf16 --threads 1 --no-memory --num-warm-iter 1 --num-bench-iter 2)
    FRONTEND=(--num-files 4 --clip-seconds 1 --batch-size 2 --passes 1 --workers 1)
    COMPILE=(--compile-backend aot_eager)
else
    KERNELS=(--batch 64 --dtype bf16 --num-warm-iter 5 --num-bench-iter 20)
    THROUGHPUT=(--preset base --frames 992 --batch-size 64 --dtype bf16 --num-warm-iter 3 --num-bench-iter 10)
    PATCHIFY=(--device cuda --batch 64 --shapes 128x992,128x1000 --dtypes fp32,bf16 --num-warm-iter 5 --num-bench-iter 20)
    FRONTEND=(--num-files 16 --passes 2)
    COMPILE=(--compile-backend inductor)
fi

# eager rows first: the numbers the window is for
step kernels 25 "$PY" benchmarks/kernels.py "${KERNELS[@]}" --impls ref,triton --rows-file "$RES/kernels.jsonl"
step throughput_pretrain 50 "$PY" benchmarks/throughput.py "${THROUGHPUT[@]}" --modes pretrain --impls ref,fused,timm \
    --rows-file "$RES/throughput.jsonl" --results-file ""
step patchify 15 "$PY" benchmarks/patchify.py "${PATCHIFY[@]}" --rows-file "$RES/patchify.jsonl" --results-file ""
step throughput_finetune 20 "$PY" benchmarks/throughput.py "${THROUGHPUT[@]}" --modes finetune --impls ref,fused,timm \
    --rows-file "$RES/throughput.jsonl" --results-file ""
step frontend 15 "$PY" benchmarks/frontend.py "${FRONTEND[@]}" --results-file "$RES/frontend.json"
# compiled variants last, each in its own step (rows still appended one by one)
step kernels_compile 25 "$PY" benchmarks/kernels.py "${KERNELS[@]}" --impls compiled "${COMPILE[@]}" \
    --rows-file "$RES/kernels.jsonl"
# one model per step: compiling a base model's forward + backward takes tens of seconds, so a slow compile of one
# cannot take the other's row with it
step throughput_ref_compile 45 "$PY" benchmarks/throughput.py "${THROUGHPUT[@]}" --modes pretrain \
    --impls ref_compile "${COMPILE[@]}" --rows-file "$RES/throughput.jsonl" --results-file ""
step throughput_fused_compile 45 "$PY" benchmarks/throughput.py "${THROUGHPUT[@]}" --modes pretrain \
    --impls fused_compile "${COMPILE[@]}" --rows-file "$RES/throughput.jsonl" --results-file ""

NFILES=$(($(find "$RES" -type f ! -name summary.txt | wc -l) + 1))  # + the summary written below
{
    echo
    echo "=== summary ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$([ "$DRY" = 1 ] && echo ', DRY RUN on CPU: times mean nothing'))"
    for k in "${STEPS[@]}"; do
        printf '  %-22s %s\n' "$k" "${STATUS[$k]:-not run}"
    done
    echo "  step limits: ${TOTAL_LIMIT} s in all (budget 300 s; x $SCALE in this run); files under $RES: $NFILES (at most 8)"
    grep -E "^[0-9]+ (passed|failed|skipped)|= .* (passed|failed|skipped)" "$LOG" | tail -1
} | tee -a "$LOG" | tee "$RES/summary.txt"
[ "$FAILED" = 0 ] && [ "$TOTAL_LIMIT" -le 300 ] && [ "$NFILES" -le 8 ]
