"""Why a selection method fails where it fails: per-model residuals at the target, per file and budget ratio.

    python benchmarks/select_residuals.py --curves ../shared/data/finetune-scaling/flan.csv \
        --curves benchmarks/data/curves/arith-sub3.csv --methods ats,ats-median

For each method, file and ratio: the residual log(predicted / true) at the target of every model, summarised as
its median and its largest absolute value (and which model), the model picked first with its residual and its
RelAcc, and PearCorr. A method whose median residual is small but whose worst one is large fails through single
curves extrapolated far off; a method whose pick has a large negative residual picked a model because it
over-extrapolated that model's curve. This is a diagnosis of methods already fixed; nothing here chooses a setting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lmtune.selection.curves import load_curves
from lmtune.selection.evaluate import PAPER_RATIOS, evaluate_methods
from lmtune.selection.predictors import all_predictors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", action="append", type=Path, required=True)
    parser.add_argument("--methods", default="ats,ats-median")
    parser.add_argument("--ratios", default=",".join(map(str, PAPER_RATIOS)))
    args = parser.parse_args()
    methods = args.methods.split(",")
    predictors = [p for p in all_predictors() if p.name in methods]
    print("| file | ratio | method | PearCorr | median abs log residual | worst model (log residual) | "
          "pick (log residual) | RelAcc |")
    print("| --- " * 8 + "|")
    for path in args.curves:
        curves = load_curves(path)
        target = int(curves.sizes.max())
        truth = curves.loss_at(target)
        for ratio in map(int, args.ratios.split(",")):
            if (curves.positive_sizes <= target / ratio).sum() < 2:
                continue
            selection = evaluate_methods(curves, target, ratio, predictors=predictors)
            for name in methods:
                result = selection.results[name]
                residual = np.log(result.prediction.scores / truth)
                worst = int(np.argmax(np.abs(residual)))
                pick = int(result.prediction.ranking()[0])
                print(f"| {path.stem} | 1/{ratio} | {name} | {result.pearcorr:.1f} | "
                      f"{np.median(np.abs(residual)):.3f} | {curves.names[worst][-24:]} ({residual[worst]:+.3f}) | "
                      f"{curves.names[pick][-24:]} ({residual[pick]:+.3f}) | {result.relacc:.1f} |")


if __name__ == "__main__":
    main()
