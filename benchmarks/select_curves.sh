#!/usr/bin/env bash
# Measure the fine-tuning curves in benchmarks/data/curves/ (README.md there says what each file is).
# Resumable: a trained candidate is kept, and `lmtune select` skips every cell its CSV already holds.
#   OMP_NUM_THREADS=1 nice -n 10 bash benchmarks/select_curves.sh [arith|bbc|all]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-lmtune-out/select-curves}
DATA=benchmarks/data/curves
FAMILY=$OUT/arith-family
mkdir -p "$OUT" "$DATA"
stamp() { echo "[$(date -u +%FT%TZ)] $*"; }
# the committed copy names each model by its folder name, not by the path it was measured from
publish() {
  sed -E "s#^$OUT/[a-z-]+-family/##" "$OUT/$1.csv" > "$DATA/$1.csv"
  sed -E "s#\"$OUT/[a-z-]+-family/#\"#" "$OUT/$1.csv.json" > "$DATA/$1.csv.json"
}

arith_family() {
  # four widths/depths, each saved after 200 and 800 steps of the arith-lm recipe (seed 0)
  for spec in 32:2 64:2 96:3 128:4; do
    h=${spec%%:*}; l=${spec##*:}
    dir=$FAMILY/h$h-l$l
    if [ ! -f "$dir/training.json" ]; then
      stamp "train $dir"
      $PY scripts/train_arith_lm.py --hidden-size "$h" --layers "$l" --steps 800 --checkpoints 200 --threads 1 \
        --seed 0 --output "$dir"
    fi
  done
}

arith_data() {
  # 2,500 seeded problems each; lmtune's loader splits them 70/10/20 (seed 0)
  $PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
from lmtune.arithmetic import make_problems
out = Path(sys.argv[1])
for name, op, digits in (("arith-mul2", "*", 2), ("arith-add4", "+", 4)):
    rows = make_problems(2500, op=op, digits=digits, seed=0)
    (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
PYEOF
}

arith_curves() {
  models=(arith-lm)
  for spec in h32-l2 h64-l2 h96-l3 h128-l4; do models+=("$FAMILY/$spec-step200" "$FAMILY/$spec"); done
  for task in arith-sub3 arith-mul2 arith-add4; do
    data=$task
    [ "$task" = arith-sub3 ] || data=$OUT/$task.jsonl
    stamp "curves $task"
    $PY -m lmtune.cli select --models "${models[@]}" --dataset "$data" --sizes 0,6,12,25,50,100,200,400,800,1600 \
      --mode lora --learning-rate 2e-3 --batch-size 8 --max-length 24 --ntk-examples 8 --seed 0 \
      --out "$OUT/$task.csv" --plot "$OUT/$task-select.png"
    publish "$task"
  done
}

bbc_curves() {
  # MiniLM truncated to 1..6 layers and two untrained encoders (scripts/make_minilm_family.py), LoRA on BBC News
  [ -f "$OUT/minilm-family/random-l6/config.json" ] || $PY scripts/make_minilm_family.py --output "$OUT/minilm-family"
  models=()
  for name in minilm-l1 minilm-l2 minilm-l3 minilm-l4 minilm-l5 minilm-l6 random-l2 random-l6; do
    models+=("$OUT/minilm-family/$name")
  done
  stamp "curves bbc-minilm"
  $PY -m lmtune.cli select --models "${models[@]}" --dataset bbc-news --sizes 0,11,22,44,88,175,350,700 \
    --mode lora --learning-rate 5e-3 --batch-size 4 --max-length 32 --ntk-examples 8 --seed 0 \
    --out "$OUT/bbc-minilm.csv" --plot "$OUT/bbc-minilm-select.png"
  publish bbc-minilm
}

case "${1:-all}" in
  arith) arith_family; arith_data; arith_curves ;;
  bbc) bbc_curves ;;
  all) arith_family; arith_data; arith_curves; bbc_curves ;;
esac
stamp done
