#!/usr/bin/env bash
# Regenerates the pictures the README and docs show, with the product itself:
#   bash docs/figures.sh        (from the repository root, after `pip install -e .`)
# docs/images/before-after.png: a shipped Fashion-MNIST example protected at the defaults by
# `preempt robustify --compare` (original | protected | difference amplified 5x).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
preempt robustify examples/fashion-mnist/01-pullover.png -o "$out" --compare --seed 0
cp "$out/compare/01-pullover.compare.png" docs/images/before-after.png
python3 - "$out/report.json" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))["images"][0]
print(f"label {e['label_name']}, linf {e['linf']:.3f}, PSNR {e['psnr']:.1f} dB, SSIM {e['ssim']:.3f}, scale {e.get('scale', 1)}, verified robust: {e['verified']['robust']}")
PY
echo "wrote docs/images/before-after.png"
