#!/bin/bash
# ResNet-50's pass against the issue's target (40% of the device's peak at batch 64), as one script
# for a short GPU lease; docs/performance.md has its output.
#
#   OUT=runs/gpu_peak DEADLINE=480 bash bench/gpu_peak.sh        # from the repository root
#
# 1. bench.layers: every convolution of ResNet-50 (and WideResNet-34-10) timed alone in bf16, forward and
#    input gradient, with cuDNN's heuristic and with cudnn.benchmark: the rate a pass built on these
#    kernels cannot exceed.
# 2. bench.passes: the whole pass in bf16 eager, torch.compile and torch.compile + CUDA graphs
#    (reduce-overhead), with and without cudnn.benchmark, next to the measured bf16 matrix peak.
# 3. The 3-channel stem padded to 4, 8 and 16 channels (alone in bench.layers, and the whole pass with
#    8 channels): the stem is ResNet-50's slowest layer per FLOP.
# 4. With the time left before DEADLINE (seconds from the start): torch.compile(mode="max-autotune").
# STEPS=stem runs step 3 alone.
# Writes OUT/layers.jsonl, OUT/passes.jsonl and OUT/log.txt.
set -u
OUT=${OUT:-runs/gpu_peak}
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-480}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd) PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
left() { echo $((DEADLINE - ($(date +%s) - T0))); }
step() { local limit=$1; shift; [ "$(left)" -lt "$limit" ] && limit=$(left); [ "$limit" -le 5 ] && { echo "=== skipped (no time left): $*"; return; }
         echo "=== $(date +%T) ($(left) s left) $*"; timeout "$limit" "$@" || echo "=== exit $? ($*)"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
L="$PY -m bench.layers --device cuda --json $OUT/layers.jsonl"
P="$PY -m bench.passes --arch resnet50 --device cuda --batch 64 --reps 20 --json $OUT/passes.jsonl"
if [ "${STEPS:-all}" = all ]; then
    step 60 $L --arch resnet50 --batch 64 --peak
    step 60 $L --arch resnet50 --batch 64 --cudnn-benchmark
    step 150 $P --peak --variants bf16,bf16-compile,bf16-compile-ro
    step 120 $P --cudnn-benchmark --variants bf16,bf16-compile,bf16-compile-ro
    step 40 $L --arch wrn-34-10 --batch 64 --cudnn-benchmark
fi
for c in 4 8 16; do step 40 $L --arch resnet50 --batch 64 --stem-pad $c --peak; done
step 150 $P --peak --cudnn-benchmark --variants bf16-compile-ro,bf16-pad8-compile-ro
[ "${STEPS:-all}" = all ] && step 400 $P --cudnn-benchmark --variants bf16-compile-max
echo "=== $(date +%T) done after $(( $(date +%s) - T0 )) s"
