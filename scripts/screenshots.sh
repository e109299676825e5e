#!/usr/bin/env bash
# docs/img from scratch: the report of `make demo`'s study and of the README's first `lmtune infer` example, and both
# studies in optuna-dashboard, each page screenshotted in Debian's headless Chromium (scripts/screenshot.py).
#
#   make screenshots        # or: bash scripts/screenshots.sh [OUT]   (default OUT: lmtune-out/screenshots)
#
# The studies go to a storage of their own under OUT, so an earlier `make demo` in lmtune.db is not resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${1:-lmtune-out/screenshots}
IMG=docs/img
rm -rf "$OUT" && mkdir -p "$OUT"
STORAGE="sqlite:///$OUT/lmtune.db"
export HF_HUB_OFFLINE=1
say() { printf '[screenshots] %s\n' "$*"; }

say "make demo's study (7 trials, MiniLM on BBC News, retrained and tested)"
"$BIN/lmtune" lora --trials 7 --max-length 64 --study-name demo --output-dir "$OUT/demo" --storage "$STORAGE"
say "the README's infer example (arith-lm, in process)"
"$BIN/lmtune" infer --local-model arith-lm --inference-budget 0.02 --optimization-budget 12 \
    --output-dir "$OUT/infer" --storage "$STORAGE"
"$BIN/python" scripts/screenshot.py "$OUT/demo/report.html" "$IMG/report-lora.png"
"$BIN/python" scripts/screenshot.py "$OUT/infer/report.html" "$IMG/report-infer.png"

PORT=$("$BIN/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$BIN/optuna-dashboard" "$STORAGE" --host 127.0.0.1 --port "$PORT" >"$OUT/dashboard.log" 2>&1 &
DASHBOARD=$!
trap 'kill $DASHBOARD 2>/dev/null || true' EXIT
for _ in $(seq 60); do "$BIN/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/')" \
    2>/dev/null && break; sleep 1; done
# study ids follow creation: the demo is 1, the inference study 2
"$BIN/python" scripts/screenshot.py "http://127.0.0.1:$PORT/dashboard/studies/1" "$IMG/dashboard-demo.png" --height 1230
"$BIN/python" scripts/screenshot.py "http://127.0.0.1:$PORT/dashboard/studies/2" "$IMG/dashboard-infer-front.png" \
    --height 2400
say "wrote $IMG/report-lora.png, report-infer.png, dashboard-demo.png, dashboard-infer-front.png"
