#!/usr/bin/env bash
# The main job on a CPU: pre-train MaskSpec-tiny on the built-in synthetic sounds, fine-tune it on a small labeled
# set, and print the accuracy on held-out clips. The encoder is the paper's tiny (192/12/3); the decoder is cut to
# 256 wide x 4 deep so pre-training fits a few CPU minutes (the paper's 512 x 8 is the preset default).
# Usage: bash benchmarks/demo.sh [OUT_DIR]    (PYTHON=... to pick the interpreter; default .venv/bin/python)
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0; fi
set -euo pipefail
OUT=${1:-runs/demo}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
start=$(date +%s)
"$PY" -m maskspec_fast.train pretrain --preset tiny --data synthetic:2000:seed=100 \
    --decoder-dim 256 --decoder-depth 4 --decoder-heads 8 \
    --steps 300 --batch-size 32 --lr 1e-3 --warmup-steps 30 --workers 1 --picture-every 100 --out "$OUT/pretrain"
"$PY" -m maskspec_fast.train finetune --init "$OUT/pretrain/final" --data synthetic:440:seed=1 \
    --eval-data synthetic:440:seed=2 --steps 150 --batch-size 32 --lr 1e-3 --warmup-steps 15 --workers 1 \
    --out "$OUT/finetune"
echo "demo finished in $(( $(date +%s) - start )) s; pictures in $OUT/pretrain/pictures, curves in $OUT/*/curves.png"
