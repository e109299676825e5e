"""What ``lmtune select`` does between parsing flags and printing: pick the curves source, validate, run, plot."""

from __future__ import annotations

from pathlib import Path

from lmtune.errors import InputError


def parse_ints(text: str, field: str) -> list[int]:
    """'200,400,800' -> [200, 400, 800]; anything else is an InputError naming ``field``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(field, f"must be comma-separated integers, got {text!r}") from None
    if not values:
        raise InputError(field, "needs at least one value")
    return values


def run_select(*, curves: Path | None, models: list[str], dataset: str | None, sizes: str | None,
               target_size: int | None, budget_ratio: float | None, plot: Path | None,
               tokens_per_sample: float | None, out: Path, mode: str, learning_rate: float | None,
               batch_size: int, max_length: int, ntk_examples: int, seed: int, epochs: float = 1.0,
               console=None) -> str:
    """Rank from ``--curves`` or from curves measured for ``--models``; returns the text to print."""
    from lmtune.selection.curves import load_curves
    from lmtune.selection.evaluate import tokens_for
    from lmtune.selection.select import format_selection, select_models

    if (curves is None) == (not models):
        raise InputError("curves", "give either --curves FILE or --models A B C (with --dataset and --sizes)")
    if curves is not None:
        if dataset or sizes:
            raise InputError("dataset", "--dataset and --sizes go with --models, not --curves")
        table = load_curves(curves)
        target = int(target_size or table.sizes.max())
        ratio = 8.0 if budget_ratio is None else budget_ratio
        tokens, note = tokens_for(curves, tokens_per_sample)
        source = Path(curves)
    else:
        table, target, ratio, tokens, note = _measure(models, dataset, sizes, target_size, budget_ratio,
                                                      tokens_per_sample, out, mode, learning_rate, batch_size,
                                                      max_length, epochs, ntk_examples, seed, console)
        source = out
    plot_path = plot or source.with_name(source.stem + "-select.png")
    selection = select_models(table, target, ratio, tokens_per_sample=tokens, plot_path=plot_path)
    text = format_selection(selection, table)
    if note:
        text += f"\n{note}.\n"
    return text + f"plot: {plot_path}\n"


def _measure(models, dataset, sizes, target_size, budget_ratio, tokens_per_sample, out, mode, learning_rate,
             batch_size, max_length, epochs, ntk_examples, seed, console):
    from lmtune.finetune.data import load_dataset
    from lmtune.finetune.hparams import LoraHyperparams
    from lmtune.finetune.train import TrainSettings
    from lmtune.selection.measure import MODES, measure_curves

    if sizes is None:
        raise InputError("sizes", "--models needs --sizes, e.g. 0,50,100,200,400")
    if mode not in MODES:
        raise InputError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    if ntk_examples < 0:
        raise InputError("ntk_examples", f"must be >= 0, got {ntk_examples}")
    splits = load_dataset(dataset, seed=seed)
    hp = LoraHyperparams(learning_rate=learning_rate or (2e-4 if mode == "lora" else 5e-5), batch_size=batch_size)
    settings = TrainSettings(max_length=max_length, epochs=epochs)
    say = (lambda message: console.print(message)) if console is not None else None
    table, meta = measure_curves(models, splits, parse_ints(sizes, "sizes"), out, mode=mode, hp=hp,
                                 settings=settings, seed=seed, ntk_examples=ntk_examples, progress=say)
    target = int(target_size or len(splits.train))
    # default: every measured size is visible, i.e. the budget is the largest measured size
    ratio = budget_ratio if budget_ratio is not None else target / max(float(table.sizes.max()), 1.0)
    if budget_ratio is None and target <= table.sizes.max():
        ratio = 1.0
    tokens = tokens_per_sample or meta.get("tokens_per_sample") or 1.0
    note = None if (tokens_per_sample or meta.get("tokens_per_sample")) else "FLOPs counted per token"
    return table, target, ratio, tokens, note
