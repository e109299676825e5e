#!/usr/bin/env bash
# The model-selection results of docs/benchmarks.md: leave-one-dataset-out over every curves file (its last lines:
# the guard's setting chosen on all of them, what lmtune.selection.predictors.DESIGNED holds), and the residuals.
#   OMP_NUM_THREADS=1 nice -n 10 bash benchmarks/select_lodo.sh
# Writes benchmarks/results/select_{lodo,residuals}.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RES=benchmarks/results
SHARED=${SHARED:-../shared/data/finetune-scaling}
mkdir -p "$RES"
files=()
for f in "$SHARED"/*.csv benchmarks/data/curves/*.csv; do files+=(--curves "$f"); done
stamp() { echo "[$(date -u +%FT%TZ)] $*"; }
stamp "lodo: ${files[*]}"
$PY -m lmtune.cli bench select --protocol lodo "${files[@]}" > "$RES/select_lodo.md.tmp"
mv "$RES/select_lodo.md.tmp" "$RES/select_lodo.md"
stamp residuals  # why ats-median fails where it fails: per-model residuals at the target (no law fits: fast)
$PY benchmarks/select_residuals.py "${files[@]}" --methods ats,ats-median > "$RES/select_residuals.md"
stamp done
