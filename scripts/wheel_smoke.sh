#!/usr/bin/env bash
# The wheel alone: build it, install it in a fresh virtualenv outside the checkout (torch==2.13.0 first, from the
# local disk; pip's cache makes the rest quick), and run a tiny case of each command from an empty folder.
#
#   bash scripts/wheel_smoke.sh            # .ci/run calls it after `make test`
#
# First with the base wheel only: `lmtune serve` must refuse with the extra to install (exit 2). Then with the
# extras the remaining commands need. Every step prints one `[wheel-smoke]` line; the last line is the summary.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
BUILD_PYTHON=${BUILD_PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lmtune-wheel-smoke.XXXXXX")
START=$SECONDS
STEPS=0
trap 'status=$?; [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null; [ $status -ne 0 ] && echo "[wheel-smoke] FAILED (log files in $WORK)"; exit $status' EXIT

say() { printf '[wheel-smoke %4ds] %s\n' "$((SECONDS - START))" "$*"; }
ok() { STEPS=$((STEPS + 1)); say "ok: $*"; }
# run NAME CMD...: the command's output goes to $WORK/NAME.log, shown on failure
run() {
    local name=$1; shift
    if ! "$@" >"$WORK/$name.log" 2>&1; then
        say "FAILED: $name: $*"; tail -n 40 "$WORK/$name.log"; exit 1
    fi
}

say "building the wheel of $ROOT in $WORK"
mkdir -p "$WORK/src"  # the files git knows (as a clean clone has them), so the build leaves nothing in the checkout
git -C "$ROOT" ls-files -z --cached --others --exclude-standard | (cd "$ROOT" && tar --null -T - -cf -) \
    | tar -xf - -C "$WORK/src"
run build "$BUILD_PYTHON" -m pip wheel --no-deps --no-build-isolation --wheel-dir "$WORK/dist" "$WORK/src"
WHEEL=$(ls "$WORK"/dist/lmtune-*.whl)
for part in models/arith-lm/model.safetensors models/agent-lm/model.safetensors models/hag-lm/model.safetensors \
        models/hag-lm/tokenizer.json samplers/agent/prompts/optimizer.txt report/templates/page.html.j2 \
        lora/model_card.md inference/prices.yaml; do
    "$BUILD_PYTHON" -c "import sys, zipfile; sys.exit('lmtune/$part' not in zipfile.ZipFile(sys.argv[1]).namelist())" \
        "$WHEEL" || { say "FAILED: lmtune/$part is not in $(basename "$WHEEL")"; exit 1; }
done
ok "$(basename "$WHEEL") holds every bundled model, prompt and template"

VENV=$WORK/venv
"$PYTHON" -m venv "$VENV"
# --no-compile: byte-compiling every module of torch and transformers is CPU the smoke does not need; the modules
# the commands import are compiled when first imported.
PIP=("$VENV/bin/pip" install --quiet --no-compile)
run torch "${PIP[@]}" torch==2.13.0
run base "${PIP[@]}" "$WHEEL"
BASE_PACKAGES=$("$VENV/bin/pip" list --format=freeze | wc -l)
ok "base wheel installed in a fresh virtualenv ($BASE_PACKAGES packages with pip and torch)"

RUN=$WORK/run
mkdir -p "$RUN" && cd "$RUN"  # outside the checkout: only the installed wheel can be imported
export HF_HUB_OFFLINE=1 PATH="$VENV/bin:$PATH"
lmtune --version >"$WORK/version.log"
"$VENV/bin/python" -c "import lmtune, sys; sys.exit(not lmtune.__file__.startswith('$VENV'))" \
    || { say "FAILED: lmtune imports from outside the virtualenv"; exit 1; }
ok "$(cat "$WORK/version.log") runs from $VENV"

set +e
lmtune serve --port 8765 >"$WORK/serve-base.log" 2>&1
status=$?
set -e
if [ "$status" != 2 ] || ! grep -q "^error: serve: pip install 'lmtune\[serve\]'" "$WORK/serve-base.log"; then
    say "FAILED: the base wheel's lmtune serve did not refuse as expected (exit $status)"; cat "$WORK/serve-base.log"
    exit 1
fi
ok "base wheel: lmtune serve refuses: $(head -n 1 "$WORK/serve-base.log")"

"$VENV/bin/python" - <<'EOF'
import csv
import random

random.seed(0)
words = {"sport": "match goal team win", "tech": "chip software phone data", "money": "bank market price rate"}
with open("tiny.csv", "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["text", "label"])
    for i in range(90):
        label = list(words)[i % 3]
        out.writerow([" ".join(random.choices(words[label].split(), k=6)), label])
EOF
run lora lmtune lora --dataset tiny.csv --trials 1 --max-length 16 --study-name smoke-lora --output-dir out/lora
for file in results.json summary.md best.yaml report.html adapter/adapter_model.safetensors adapter/README.md; do
    [ -s "out/lora/$file" ] || { say "FAILED: lmtune lora wrote no out/lora/$file"; exit 1; }
done
ok "lmtune lora: 1 trial on 90 rows, retrained, tested; $(grep -m1 '^test ' "$WORK/lora.log")"

run infer lmtune infer --local-model arith-lm --task-size 30 --inference-budget 0.02 --optimization-budget 0.3 \
    --max-trials 3 --study-name smoke-infer --output-dir out/infer
[ -s out/infer/report.html ] || { say "FAILED: lmtune infer wrote no report.html"; exit 1; }
ok "lmtune infer: $(grep -m1 '^spent ' "$WORK/infer.log")"

run hag lmtune hag label --model hag-lm --task-size 40 --limit 2 --n 2 --max-configs 4 --chunk-size 2 \
    --output-dir out/hag
[ -s out/hag/labels-train.jsonl ] || { say "FAILED: lmtune hag label wrote no labels"; exit 1; }
ok "lmtune hag label on its default model hag-lm: $(wc -l <out/hag/labels-train.jsonl) inputs labelled"

run report lmtune report --storage sqlite:///lmtune.db --output-dir out/reports
ok "lmtune report: $(ls out/reports | tr '\n' ' ')"

run extras "${PIP[@]}" "$WHEEL[serve,select]"
ok "extras serve and select installed ($("$VENV/bin/pip" list --format=freeze | wc -l) packages)"

cp "$ROOT/benchmarks/data/curves/arith-sub3.csv" curves.csv
run select lmtune select --curves curves.csv --plot out/select.png
[ -s out/select.png ] || { say "FAILED: lmtune select wrote no PNG"; exit 1; }
ok "lmtune select: $(grep -m1 -i 'chose\|ranking\|best' "$WORK/select.log" || head -n 1 "$WORK/select.log")"

PORT=$("$VENV/bin/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
lmtune serve --model arith-lm --port "$PORT" >"$WORK/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 120); do grep -qs "ready" "$WORK/serve.log" && break; sleep 1; done
grep -q "ready" "$WORK/serve.log" || { say "FAILED: lmtune serve never said it was ready"; cat "$WORK/serve.log"; exit 1; }
"$VENV/bin/python" - "$PORT" >"$WORK/request.log" <<'EOF'
import json
import sys
import urllib.request

body = json.dumps({"model": "arith-lm", "prompt": "12+34=", "max_tokens": 4, "temperature": 0}).encode()
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/completions", body,
                                 {"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(request, timeout=60))
print(repr(reply["choices"][0]["text"]))
EOF
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
ok "lmtune serve: $(grep -m1 ready "$WORK/serve.log"); 12+34= answered $(cat "$WORK/request.log")"

say "PASSED: $STEPS steps in $((SECONDS - START)) s from $(basename "$WHEEL") (base: $BASE_PACKAGES packages)"
rm -rf "$WORK"
