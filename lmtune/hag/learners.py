"""``lmtune hag train``: learn the map from an input to its decoding config, three ways.

* ``adapter``: HAG as in "LLM can Achieve Self-Regulation via Hyperparameter Aware Generation"
  (arXiv:2402.11251): instruction tuning with LoRA (lmtune's own fine-tuning loop, ``lmtune.finetune``) on
  (instruction + input, label string) pairs, so that the model itself emits ``t=.. p=.. k=.. r=..``. The
  adapter touches every linear layer of the base, since the base has never written this format.
* ``head`` and ``neighbours`` (``lmtune.hag.head``): from a feature of the frozen base model's hidden states,
  predict each candidate config's margin over the global config (``global_config``, the baseline a user would
  otherwise run); the candidates are the configs the label search scored on every training input. The global
  config is measured on the training inputs with the label search's own seeded requests, so a margin compares
  two configs on the same draws. Features are computed once; fitting takes seconds on a CPU, and stage 1 is one
  forward pass over the input, with nothing generated.

Learning margins rather than scores takes each input's own difficulty out of the targets: what is left is what
decoding changes. Every candidate is measured on every training input, so no prediction is an extrapolation to a
config seen on one input only. The guard (``lmtune.hag.guard``) then decides, with validation inputs and
out-of-fold training inputs, how large a predicted gain must be before the input leaves the global config.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.config import build_config, check_writable_folder
from lmtune.errors import InputError
from lmtune.files import write_atomic
from lmtune.hag.config import HagTrainConfig
from lmtune.hag.generation import HAG_FILE, HagModel
from lmtune.hag.global_config import read_global_config
from lmtune.hag.guard import best, calibrate, candidates_and_margins, out_of_fold
from lmtune.hag.head import PREDICTOR_FILES, fit_head, fit_neighbours, hidden_features, save_predictor
from lmtune.hag.labels import local_generator, mean_scores, read_labels, task_of_header
from lmtune.hag.space import Decoding
from lmtune.llm.cache import CachedGenerator, ResponseStore
from lmtune.llm.generation import BackgroundLoop
from lmtune.results import Result

log = logging.getLogger(__name__)
LOSSES = {"adapter": "cross-entropy per token of the label text on (up to 64) training inputs",
          "head": "mean squared error of the predicted margins over the global config on the training inputs"}


@dataclass
class HagTrainResult(Result):
    """The HAG model folder written, its training loss (and what it measures), its guard, and how often its
    choice is exactly the label search's label."""

    output: str
    learner: str
    base_model: str
    train_labels: int
    candidates: int | None
    seconds: float
    global_config: dict
    loss: dict | None
    guard: dict | None
    train_agreement: float | None
    validation: dict | None


def train_hag(config: HagTrainConfig | None = None, **fields: Any) -> HagTrainResult:
    """Train one learner on a label file and write its HAG model folder."""
    cfg = config or build_config(HagTrainConfig, **fields)
    check_writable_folder(cfg.output, "output")
    header, rows = read_labels(cfg.labels)
    validation = read_labels(cfg.validation_labels, "validation_labels")[1] if cfg.validation_labels else None
    if "{input}" not in cfg.instruction:
        raise InputError("instruction", f"must contain {{input}}, got {cfg.instruction!r}")
    reference = read_global_config(cfg.global_config, header, "global_config")
    if cfg.learner != "adapter" and not all(r.get("scores") for r in rows):
        raise InputError("labels", f"{cfg.labels} has inputs without the label search's scores; the {cfg.learner} "
                         "learns from them (label the inputs with lmtune hag label)")
    from lmtune.llm import check_device, resolve_model

    check_device(cfg.device)
    base = resolve_model(header["model"])
    if not Path(base).is_dir():
        raise InputError("labels", f"the labels' model {header['model']!r} is not a local model folder")
    started = time.perf_counter()
    cfg.output.mkdir(parents=True, exist_ok=True)
    meta = {"learner": cfg.learner, "base_model": str(Path(base).resolve()), "instruction": cfg.instruction,
            "space": header["space"], "fallback": reference.as_dict(), "task": {k: header[k] for k in
            ("task", "metric", "template", "n", "max_tokens")}, "seed": cfg.seed, "labels": str(cfg.labels)}
    if cfg.learner == "adapter":
        loss = _train_adapter(cfg, base, rows)
    else:
        loss = _train_predictor(cfg, header, rows, validation, reference, meta)
    write_atomic(cfg.output / HAG_FILE, json.dumps(meta, indent=2) + "\n")
    seconds = time.perf_counter() - started
    model = HagModel(cfg.output, device=cfg.device)
    return HagTrainResult(
        output=str(cfg.output), learner=cfg.learner, base_model=meta["base_model"], train_labels=len(rows),
        candidates=len(meta["predictor"]["candidates"]) if "predictor" in meta else None, seconds=round(seconds, 1),
        global_config=reference.as_dict(), loss=None if loss is None else {"value": loss, "what": LOSSES[cfg.learner]},
        guard=meta.get("guard"), train_agreement=_agreement(model, rows)["agreement"],
        validation=_agreement(model, validation) if validation else None)


def _agreement(model: HagModel, rows: list[dict]) -> dict:
    choices = model.choose([r["prompt"] for r in rows])
    same = sum(c.config == Decoding.from_dict(r["label"]) for c, r in zip(choices, rows, strict=True))
    return {"inputs": len(rows), "agreement": same / len(rows), "statuses": dict(Counter(c.status for c in choices))}


def _train_adapter(cfg: HagTrainConfig, base: str, rows: list[dict]) -> float:
    import math

    from lmtune.finetune.hparams import LoraHyperparams
    from lmtune.finetune.train import TrainSettings, train_and_evaluate

    pairs = [{"prompt": cfg.instruction.format(input=r["prompt"]), "response": Decoding.from_dict(r["label"]).text()}
             for r in rows]
    hp = LoraHyperparams(rank=cfg.rank, alpha=cfg.alpha, learning_rate=cfg.learning_rate, batch_size=cfg.batch_size)
    settings = TrainSettings(max_length=256, epochs=cfg.epochs, eval_points=1, exact_match=False, seed=cfg.seed,
                             min_steps=max(cfg.min_steps, math.ceil(len(pairs) / cfg.batch_size)))
    result = train_and_evaluate(hp, pairs, pairs[:64], task="causal", model=base, settings=settings,
                                target_modules="all-linear", save_adapter_to=cfg.output / "adapter")
    log.info("adapter: %d steps", result.steps)
    return result.eval_loss


class _Measure:
    """Mean metric of configs on labelled inputs over the label search's own seeded requests (its salt, seed and
    repeats), through a response cache: a config the search already scored costs nothing."""

    def __init__(self, header: dict, generator, cache: ResponseStore | None):
        self.header, self.generator = header, generator
        self.loop = BackgroundLoop()
        self.cached = CachedGenerator(generator, cache)

    def __call__(self, rows: list[dict], configs: list[Decoding]) -> list[float]:
        task = task_of_header(self.header, [r["instance"] for r in rows])
        return self.loop.run(mean_scores(task, rows, configs, self.cached, self.generator.name, "label",
                                         self.header["seed"], self.header["search"]["repeats"]))

    def close(self) -> None:
        self.loop.run(self.cached.aclose())
        self.loop.close()


def _train_predictor(cfg: HagTrainConfig, header: dict, rows: list[dict], validation: list[dict] | None,
                     reference: Decoding, meta: dict) -> float | None:
    """Fit the head or neighbours on measured margins, calibrate its guard, save both; the head's final loss."""
    import torch

    generator = local_generator(header["model"], cfg.device)
    cache = None if cfg.cache == "none" else ResponseStore(cfg.cache or Path(cfg.labels).parent / "responses.sqlite")
    measure = _Measure(header, generator, cache)

    def features(inputs: list[dict]):
        return hidden_features(generator.model, generator.tokenizer, [r["prompt"] for r in inputs], cfg.pooling,
                               cfg.device)[0]

    def fit(x, y):
        if cfg.learner == "head":
            return fit_head(x, y, hidden=cfg.head_hidden, learning_rate=cfg.learning_rate, seed=cfg.seed)
        return fit_neighbours(x, y, k=cfg.neighbours), None

    with contextlib.closing(measure):
        candidates, margins = candidates_and_margins(rows, measure(rows, [reference] * len(rows)))
        x, y = features(rows), torch.tensor(margins, device=cfg.device)
        predictor, loss = fit(x, y)
        gains, realized = out_of_fold(lambda a, b: fit(a, b)[0], x, y, cfg.seed)
        if validation:
            picks, predicted = best(predictor(features(validation)))
            used = [i for i, gain in enumerate(predicted) if gain > 0]
            chosen = measure([validation[i] for i in used], [candidates[picks[i]] for i in used])
            against = measure([validation[i] for i in used], [reference] * len(used))
            measured = dict(zip(used, (c - a for c, a in zip(chosen, against, strict=True)), strict=True))
            gains += predicted
            realized += [measured.get(i, 0.0) for i in range(len(validation))]
    guard = calibrate(gains, realized)
    save_predictor(predictor, cfg.output / PREDICTOR_FILES[cfg.learner])
    meta["predictor"] = {"target": "margin over the global config", "pooling": cfg.pooling, "width": x.shape[1],
                         "hidden": cfg.head_hidden, "neighbours": cfg.neighbours,
                         "candidates": [c.as_dict() for c in candidates]}
    meta["guard"] = {**guard.to_dict(), "validation_inputs": len(validation or []), "training_inputs": len(rows)}
    return loss
