#!/usr/bin/env bash
# Regenerates the web page's screenshots in docs/images (web-*.png) by running the browser test, which walks
# through the page in Debian's chromium against a live `preempt serve` and saves each main state.
set -euo pipefail
cd "$(dirname "$0")/.."
PREEMPT_SCREENSHOTS=docs/images python3 -m pytest -q tests/web
