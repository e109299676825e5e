#!/usr/bin/env bash
# The design runs of issue 31 behind docs/decisions.md, "Per-input decoding": which per-input learner and which
# feature, compared on validation inputs only (runs whose test inputs nothing here reads).
#   OMP_NUM_THREADS=1 nice -n 10 bash benchmarks/hag_design.sh LABEL_DIR OUT
# LABEL_DIR holds labels-train.jsonl, labels-validation.jsonl and label-train.json of lmtune hag label (hag-mix:
# benchmarks/results/hag-final; hag-spread: the labels of `benchmarks/hag.py --tasks hag-spread --evaluate-on
# validation --task-seed 1`). For each learner (head, neighbours) and pooling (last, mean, last+mean), 3 seeds are
# trained with lmtune hag global's config and evaluated on the validation split; OUT/design.md collects the guard
# lines of hag train and the rows of hag evaluate.
set -euo pipefail
LABELS=$1
OUT=$2
PY=${PYTHON:-python}
mkdir -p "$OUT"
[ -f "$OUT/global/results.json" ] || $PY -m lmtune.cli hag global --labels "$LABELS/labels-train.jsonl" \
    --max-trials 1000 --storage "sqlite:///$OUT/global.db" --output-dir "$OUT/global" > "$OUT/global.log" 2>&1
: > "$OUT/design.md"
for variant in head:last head:mean head:last+mean neighbours:last neighbours:mean neighbours:last+mean; do
  learner=${variant%%:*}
  pooling=${variant##*:}
  folders=()
  for seed in 0 1 2; do
    folder="$OUT/$learner-$pooling-seed$seed"
    [ -f "$folder/hag.json" ] || $PY -m lmtune.cli hag train --labels "$LABELS/labels-train.jsonl" \
        --validation-labels "$LABELS/labels-validation.jsonl" --global-config "$OUT/global/results.json" \
        --output "$folder" --learner "$learner" --pooling "$pooling" --seed "$seed" \
        --cache "$OUT/responses.sqlite" > "$folder.log" 2>&1
    folders+=("$folder")
  done
  $PY -m lmtune.cli hag evaluate --labels "$LABELS/labels-validation.jsonl" --learners "$(IFS=,; echo "${folders[*]}")" \
      --global-config "$OUT/global/results.json" --output-dir "$OUT/eval-$learner-$pooling" \
      --cache "$OUT/responses-eval.sqlite" --random-seeds 0 > "$OUT/eval-$learner-$pooling.log" 2>&1
  {
    echo "## $learner, $pooling pooling"
    echo
    for seed in 0 1 2; do grep -h "^guard:" "$OUT/$learner-$pooling-seed$seed.log" | sed "s/^/- seed $seed: /"; done
    echo
    grep -v "^| stage\|^| --- | ---: | ---: | ---: | --- |" "$OUT/eval-$learner-$pooling/evaluation.md" | sed -n '1,/^Oracle/p'
    echo
  } >> "$OUT/design.md"
done
