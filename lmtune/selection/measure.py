"""Measure learning curves by fine-tuning every candidate on nested, seeded subsets of the user's data.

One cell = one model fine-tuned (LoRA through lmtune's PEFT builder, or all weights) on the first n rows of a
seeded permutation of the training split, for ``settings.epochs`` epochs, then scored by its mean loss on the
test split (validation when the data has no test rows); n = 0 is the untrained model. Subsets are nested, so a
larger subset contains every smaller one, as in the benchmark the selectors were designed on. Every finished cell
is written to the curves CSV at once; running the same command again skips them (resume). The setup (data,
seed, mode, hyperparameters) is kept next to it in ``<file>.json`` and a changed setup is refused.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lmtune.errors import InputError, TrialFailed
from lmtune.finetune.data import DatasetSplits
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.train import TrainSettings
from lmtune.selection.curves import Curves, load_curves, save_curves

MODES = ("lora", "full")


@dataclass
class MeasureSetup:
    """Everything that decides a cell's value, so a resumed run can refuse to mix setups."""

    dataset: str
    mode: str
    seed: int
    hyperparams: dict
    max_length: int
    epochs: float
    ntk_examples: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def nested_order(n_rows: int, seed: int) -> list[int]:
    """A seeded permutation of the training rows; subset n is its first n entries."""
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    return order


def measure_curves(models: list[str], splits: DatasetSplits, sizes: list[int], out: str | Path, *,
                   mode: str = "lora", hp: LoraHyperparams | None = None, settings: TrainSettings | None = None,
                   seed: int = 0, ntk_examples: int = 8,
                   progress: Callable[[str], None] | None = None) -> tuple[Curves, dict]:
    """Fill ``out`` with the loss of every model at every size; returns the curves and the run's metadata.

    ``ntk_examples`` > 0 also computes LENSLLM's F per model (stored as the ``ntk_f`` column) on that many
    training rows, with t = the optimizer steps of the largest subset.
    """
    if mode not in MODES:
        raise InputError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    if not models or len(set(models)) != len(models):
        raise InputError("models", "give two or more distinct models")
    sizes = sorted(set(int(s) for s in sizes))
    if any(s < 0 for s in sizes) or len([s for s in sizes if s > 0]) < 2:
        raise InputError("sizes", f"need two or more positive subset sizes (0 = untrained), got {sizes}")
    if sizes[-1] > len(splits.train):
        raise InputError("sizes", f"largest size {sizes[-1]} exceeds the {len(splits.train)} training rows")
    hp = hp or LoraHyperparams(learning_rate=2e-4 if mode == "lora" else 5e-5)
    # curves compare sizes at the same epochs: no step floor (a 16-row subset at batch 16 is one step)
    settings = replace(settings or TrainSettings(), seed=seed, exact_match=False, eval_points=1, min_steps=1)
    setup = MeasureSetup(splits.name, mode, seed, hp.to_dict(), settings.max_length, settings.epochs, ntk_examples)
    out = Path(out)
    meta_path = out.with_suffix(out.suffix + ".json")
    curves = _resume(out, meta_path, models, sizes, setup, ntk_examples > 0)
    eval_rows = splits.test or splits.validation
    order = nested_order(len(splits.train), seed)
    say = progress or (lambda message: None)
    tokens: list[float] = []
    meta = {"setup": setup.to_dict(), "failures": {}}
    for i, name in enumerate(models):
        for j, size in enumerate(sizes):
            if not math.isnan(curves.losses[i, j]):
                continue
            say(f"{name}: training on {size} examples" if size else f"{name}: zero-shot loss")
            try:
                loss, count, mean_tokens = _cell(name, splits, [splits.train[k] for k in order[:size]],
                                                 eval_rows, mode, hp, settings)
            except TrialFailed as error:
                meta["failures"][f"{name}@{size}"] = str(error)
                say(f"{name} at {size}: failed ({error}); the cell stays empty")
                continue
            curves.losses[i, j], curves.params[i] = loss, count
            if size:
                tokens.append(mean_tokens)
            save_curves(curves, out)
        if ntk_examples > 0 and math.isnan(curves.ntk_f[i]):
            steps = math.ceil(math.ceil(sizes[-1] / hp.batch_size) * settings.epochs)
            say(f"{name}: NTK term on {ntk_examples} examples, t = {steps} steps")
            term = _ntk(name, splits, [splits.train[k] for k in order[:ntk_examples]], mode, hp, settings, steps)
            curves.ntk_f[i] = term.f
            meta.setdefault("ntk", {})[name] = term.to_dict()
            save_curves(curves, out)
    previous = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["tokens_per_sample"] = float(np.mean(tokens)) if tokens else previous.get("tokens_per_sample")
    meta["ntk"] = {**previous.get("ntk", {}), **meta.get("ntk", {})}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return curves, meta


def _resume(out: Path, meta_path: Path, models, sizes, setup: MeasureSetup, with_ntk: bool) -> Curves:
    """The curves measured so far (a new, empty table when ``out`` does not exist)."""
    losses = np.full((len(models), len(sizes)), np.nan)
    params = np.ones(len(models))
    ntk = np.full(len(models), np.nan) if with_ntk else None
    if out.exists():
        if not meta_path.exists():
            raise InputError("out", f"{out} exists but was not written by lmtune select (no {meta_path.name}); "
                                    "choose another `out`")
        stored = json.loads(meta_path.read_text()).get("setup", {})
        if stored != setup.to_dict():
            changed = sorted(k for k in setup.to_dict() if stored.get(k) != setup.to_dict()[k])
            raise InputError("out", f"{out} was measured with a different {', '.join(changed)}; use another `out`")
        old = load_curves(out, partial=True)
        for i, name in enumerate(models):
            if name in old.names:
                k = old.names.index(name)
                params[i] = old.params[k]
                if ntk is not None and old.ntk_f is not None:
                    ntk[i] = old.ntk_f[k]
                for j, size in enumerate(sizes):
                    hits = np.flatnonzero(old.sizes == size)
                    if hits.size:
                        losses[i, j] = old.losses[k, hits[0]]
    else:
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps({"setup": setup.to_dict()}, indent=2) + "\n")
    return Curves(list(models), np.array(sizes), losses, params, ntk_f=ntk)


def _build(name: str, splits: DatasetSplits, mode: str, hp: LoraHyperparams, seed: int):
    """A fresh copy of the candidate: LoRA-wrapped, or the whole model trainable."""
    import torch

    from lmtune.finetune.peft_model import build_peft_model, load_base_model
    from lmtune.llm import resolve_model

    name = resolve_model(name)  # an alias (arith-lm, minilm) as a folder; the curves keep the name given
    num_labels = len(splits.label_names) if splits.task == "classification" else None
    if mode == "lora":
        model, tokenizer = build_peft_model(name, hp, task=splits.task, num_labels=num_labels, seed=seed)
    else:
        torch.manual_seed(seed)
        model, tokenizer = load_base_model(name, splits.task, num_labels)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise InputError("model", f"{name}: the tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return model, tokenizer


def _cell(name, splits, train_rows, eval_rows, mode, hp, settings) -> tuple[float, int, float]:
    """(test loss after training on ``train_rows``, parameter count, mean tokens per training example)."""
    from lmtune.finetune.train import TrainingRun

    model, tokenizer = _build(name, splits, mode, hp, settings.seed)
    count = sum(p.numel() for p in (model.get_base_model() if mode == "lora" else model).parameters())
    run = TrainingRun(model, tokenizer, splits.task, "eval_loss", settings)
    evaluation = run.encode(eval_rows)
    if not train_rows:
        return run.evaluate(evaluation)["eval_loss"], count, float("nan")
    train = run.encode(train_rows)
    trajectory, _ = run.fit(train, evaluation, hp, None, None)
    mean_tokens = float(np.mean([len(_flat(example)) for example in train]))
    return trajectory[-1]["eval_loss"], count, mean_tokens


def _flat(example) -> list[int]:
    """An encoded example's tokens: a causal one's ``ids`` (prompt and reply), a classifier's (ids, label) pair's
    ids."""
    if hasattr(example, "ids"):
        return list(example.ids)
    first, second = example
    return list(first) + (list(second) if isinstance(second, list) else [])


def _ntk(name, splits, rows, mode, hp, settings, steps):
    from lmtune.selection.ntk import ntk_term

    model, tokenizer = _build(name, splits, mode, hp, settings.seed)
    return ntk_term(model, tokenizer, rows, task=splits.task, steps=steps, max_length=settings.max_length)
