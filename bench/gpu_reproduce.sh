#!/bin/bash
# The 1000-image reproduction tables (reports/fashion-mnist) on one CUDA GPU, as one script.
#
#   OUT=runs/gpu_repro bash bench/gpu_reproduce.sh        # from the repository root
#
# Runs `preempt reproduce` for linf, l2 and smoothing at the same time, one process each: the small
# Fashion-MNIST CNN leaves a GPU launch-bound, so three processes share it with little loss. Every run
# caches finished chunks under OUT/work, so a run stopped by DEADLINE (seconds, default 540) picks up
# where it stopped when the script is run again with the same OUT/work. After the three, if time is
# left, the ResNet-50 pass benchmark with and without BatchNorm folding (issue: performance).
# Writes OUT/reports/{linf,l2,smoothing}.{json,md,png}, OUT/log_*.txt and, with PACK=1, everything
# as OUT/gpu_reproduce.tar.gz (for machines that return few files).
# LINF_MODELS / L2_MODELS: the --models argument of each setting (default: the shipped defaults).
# SEED_WORK: a folder of chunks finished earlier (an earlier OUT/work), copied into OUT/work first;
# reports/fashion-mnist/chunks holds those of the shipped reports.
# SETTINGS: which of linf, l2, smoothing to run (default all three).
# PASS_VARIANTS: the bench.passes variants of the ResNet-50 step (default: the max-autotune ones,
# never run yet, and the best so far, bf16-fold-compile).
set -u
OUT=${OUT:-runs/gpu_repro}
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-540}
N=${N:-1000}
SETTINGS=${SETTINGS:-linf l2 smoothing}
PASS_VARIANTS=${PASS_VARIANTS:-bf16-fold-compile,bf16-compile-max,bf16-fold-compile-max}
mkdir -p "$OUT/reports" "$OUT/work"
[ -n "${SEED_WORK:-}" ] && cp -r "$SEED_WORK/." "$OUT/work/"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd) PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
T0=$(date +%s)
left() { echo $((DEADLINE - ($(date +%s) - T0))); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torchattacks' 2>/dev/null || $PY -m pip install -q --no-deps --no-index ${WHEELS:+--find-links "$WHEELS"} torchattacks
R="$PY -m preempt.cli reproduce -n $N --device cuda -o $OUT/reports --work $OUT/work"
run() {  # run NAME ARGS...: one setting in the background, its log in OUT/log_NAME.txt
    local name=$1; shift
    ( echo "=== $(date +%T) $name: $R $*"; timeout "$(left)" $R "$@"; rc=$?; echo "=== $(date +%T) $name exit $rc (124: stopped at DEADLINE)" ) \
        > "$OUT/log_$name.txt" 2>&1 &
}
for s in $SETTINGS; do
    case $s in
        linf) run linf --norm linf --chunk 250 ${LINF_MODELS:+--models $LINF_MODELS} ;;
        l2) run l2 --norm l2 --chunk 250 ${L2_MODELS:+--models $L2_MODELS} ;;
        smoothing) run smoothing --norm smoothing --chunk 250 ;;
        *) echo "unknown setting $s (linf, l2, smoothing)"; exit 2 ;;
    esac
done
wait
tail -n 3 "$OUT"/log_*.txt
if [ "$(left)" -gt 60 ]; then
    echo "=== $(date +%T) ResNet-50 passes, $(left) s left"
    timeout "$(left)" $PY -m bench.passes --arch resnet50 --device cuda --batch 64,256 --reps 10 --peak \
        --variants "$PASS_VARIANTS" --json "$OUT/passes.jsonl" > "$OUT/log_passes.txt" 2>&1
    cat "$OUT/log_passes.txt"
fi
if [ "${PACK:-0}" = 1 ]; then
    tar -czf /tmp/gpu_reproduce.tar.gz -C "$OUT" . && mv /tmp/gpu_reproduce.tar.gz "$OUT/"
fi
echo "=== $(date +%T) done after $(( $(date +%s) - T0 )) s"
