#!/bin/bash
# The design runs of `--sampler auto` (issue 29; docs/decisions.md): seeds 0-4, budget 30, the candidate plans only.
# Memory off: each table replayed alone (a bench run remembers only the other tables of the run). Memory on: the
# three tables whose searched spaces match, replayed together. Then benchmarks/auto_design.py reads runs.jsonl.
set -eu
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
OUT=${OUT:-benchmarks/results/auto-design}
B=".venv/bin/lmtune bench samplers --seeds 5 --budget 30 --output $OUT"
D=benchmarks/data
for t in arith-sft bbc-minilm arith-mul arith-variants bbc-minilm-l2; do
  $B --table $D/$t.json.gz --samplers gp,tpe,auto-memory-then-gp-5,auto-memory-then-gp-10,language-bo+
done
$B --table $D/arith-sft.json.gz --table $D/bbc-minilm.json.gz --table $D/arith-mul.json.gz \
   --samplers auto-memory-then-gp-5,auto-memory-then-gp-10,language-bo+,language-bo+whole-gate
.venv/bin/python benchmarks/auto_design.py --runs $OUT/runs.jsonl --table $D/*.json.gz | tee $OUT/design.md
