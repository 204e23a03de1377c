#!/bin/bash
# The GPU half of the performance benchmark, as one script (docs/performance.md has its output).
#
#   OUT=runs/gpu bash bench/gpu.sh            # on a machine with a CUDA GPU, from the repository root
#
# Writes OUT/passes.jsonl (pass throughput of every variant: small CNN, WideResNet-34-10 at CIFAR-10
# shape, ResNet-50 at ImageNet shape, random weights for the last two), OUT/robustify_*.json
# (plain Algorithm 1 vs Preempt's robustifier, fp32 and bf16) and OUT/log.txt. Each step has its
# own time limit so that a slow step cannot take the rest with it. PYTHON defaults to python3.
set -u
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
exec > >(tee -a "$OUT/log.txt") 2>&1
step() { local limit=$1; shift; echo "=== $(date +%T) $*"; timeout "$limit" "$@" || echo "=== exit $? ($*)"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
# AutoAttack's components come from torchattacks; WHEELS names a folder of wheels for machines offline.
$PY -c 'import torchattacks' 2>/dev/null || $PY -m pip install -q --no-deps --no-index ${WHEELS:+--find-links "$WHEELS"} torchattacks
$PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
P="$PY -m bench.passes --device cuda --json $OUT/passes.jsonl"
V=nchw,channels_last,tf32,bf16,bf16-graph
step 90 $P --model fmnist-linf-adv --batch 200,1000 --variants $V --peak
step 90 $P --arch wrn-34-10 --batch 64,128 --variants $V --reps 10
step 90 $P --arch resnet50 --batch 64,128 --variants $V --reps 10
step 150 $P --arch resnet50 --batch 64 --variants bf16,bf16-compile,bf16-weights,bf16-weights-compile --reps 10 --peak
step 120 $P --arch wrn-34-10 --batch 64 --variants bf16,bf16-compile,bf16-weights,bf16-weights-compile --reps 10 --peak
R="$PY -m bench.robustify --device cuda --methods plain,preempt-no-stop,preempt-bf16-no-stop,preempt-bf16-compile-no-stop"
step 120 $R --arch wrn-34-10 -n 128 --batch 64 --iterations 3 --json $OUT/robustify_wrn.json
step 120 $R --arch resnet50 -n 128 --batch 64 --iterations 3 --json $OUT/robustify_resnet50.json
step 180 $PY -m bench.robustify --device cuda -n 500 --batch 500 --methods plain,preempt,preempt-bf16 \
    --attacks pgd,aa --json $OUT/robustify_fmnist.json
echo "=== $(date +%T) done"
