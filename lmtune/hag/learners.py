"""``lmtune hag train``: learn the map from an input to its decoding config, two ways.

* ``adapter``: HAG as in "LLM can Achieve Self-Regulation via Hyperparameter Aware Generation"
  (arXiv:2402.11251): instruction tuning with LoRA (lmtune's own fine-tuning loop, ``lmtune.finetune``) on
  (instruction + input, label string) pairs, so that the model itself emits ``t=.. p=.. k=.. r=..``. The
  adapter touches every linear layer of the base, since the base has never written this format.
* ``head``: a small network (one hidden layer, or linear) on the frozen base model's final-layer hidden state
  at the input's last token that predicts the expected score of each candidate config (the coarse sweep's
  configs and the distinct labels) from what the label search measured; stage 1 takes the best prediction.
  Features are computed once, and training is a few hundred full-batch steps, seconds on a CPU. Stage 1 is
  then one forward pass over the input, with nothing generated.

Both write a HAG model folder (``lmtune.hag.generation``); ``validation_labels`` reports how often the learner
picks the validation label exactly and how often its reply needed the fallback.
"""

from __future__ import annotations

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
from lmtune.hag.head import HEAD_FILE, last_hidden, network
from lmtune.hag.labels import read_labels
from lmtune.hag.search import simplicity
from lmtune.hag.space import Decoding
from lmtune.results import Result

log = logging.getLogger(__name__)
HEAD_STEPS = 400


@dataclass
class HagTrainResult(Result):
    """The HAG model folder written and how well its learner agrees with the labels."""

    output: str
    learner: str
    base_model: str
    train_labels: int
    classes: int | None
    seconds: float
    fallback: dict
    train_agreement: float | None
    validation: dict | None


def read_fallback(path: Path | None) -> Decoding:
    """The best config of a ``lmtune infer`` results.json (API defaults for what it does not set), or the API
    default decoding when there is none."""
    if path is None:
        return Decoding()
    try:
        best = json.loads(Path(path).read_text())["best"]["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise InputError("fallback", f"{path} is not a results.json of lmtune infer with a best config") from None
    return Decoding.filled(best)


def train_hag(config: HagTrainConfig | None = None, **fields: Any) -> HagTrainResult:
    """Train one learner on a label file and write its HAG model folder."""
    cfg = config or build_config(HagTrainConfig, **fields)
    check_writable_folder(cfg.output, "output")
    header, rows = read_labels(cfg.labels)
    validation = read_labels(cfg.validation_labels, "validation_labels")[1] if cfg.validation_labels else None
    if "{input}" not in cfg.instruction:
        raise InputError("instruction", f"must contain {{input}}, got {cfg.instruction!r}")
    fallback = read_fallback(cfg.fallback)
    from lmtune.llm import check_device, resolve_model

    check_device(cfg.device)
    base = resolve_model(header["model"])
    if not Path(base).is_dir():
        raise InputError("labels", f"the labels' model {header['model']!r} is not a local model folder")
    started = time.perf_counter()
    cfg.output.mkdir(parents=True, exist_ok=True)
    meta = {"learner": cfg.learner, "base_model": str(Path(base).resolve()), "instruction": cfg.instruction,
            "space": header["space"], "fallback": fallback.as_dict(), "task": {k: header[k] for k in
            ("task", "metric", "template", "n", "max_tokens")}, "seed": cfg.seed, "labels": str(cfg.labels)}
    classes = None
    if cfg.learner == "adapter":
        _train_adapter(cfg, base, rows)
    else:
        classes = _train_head(cfg, base, rows, meta)
    write_atomic(cfg.output / HAG_FILE, json.dumps(meta, indent=2) + "\n")
    seconds = time.perf_counter() - started
    model = HagModel(cfg.output, device=cfg.device)
    return HagTrainResult(output=str(cfg.output), learner=cfg.learner, base_model=meta["base_model"],
                          train_labels=len(rows), classes=classes, seconds=round(seconds, 1),
                          fallback=fallback.as_dict(), train_agreement=_agreement(model, rows)["agreement"],
                          validation=_agreement(model, validation) if validation else None)


def _agreement(model: HagModel, rows: list[dict]) -> dict:
    choices = model.choose([r["prompt"] for r in rows])
    same = sum(c.config == Decoding.from_dict(r["label"]) for c, r in zip(choices, rows, strict=True))
    return {"inputs": len(rows), "agreement": same / len(rows), "statuses": dict(Counter(c.status for c in choices))}


def _train_adapter(cfg: HagTrainConfig, base: str, rows: list[dict]) -> None:
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
    log.info("adapter: %d steps, final label loss %.4f", result.steps, result.eval_loss)


def score_targets(rows: list[dict]) -> tuple[list[Decoding], list[list[float | None]]]:
    """The head's candidates and, per input, each candidate's measured mean score (None: not measured).

    Candidates are the configs the label search scored on every training input (the coarse sweep) and every
    distinct label. A row without search scores (a label file written by hand) scores its label 1 and every
    other candidate 0, which makes the head a plain classifier over the labels.
    """
    measured = []
    for row in rows:
        scores = {Decoding.from_dict(c): sum(v) / len(v) for c, v in row.get("scores") or [] if v}
        measured.append(scores)
    labels = [Decoding.from_dict(r["label"]) for r in rows]
    shared = set.intersection(*(set(m) for m in measured)) if all(measured) else set()
    candidates = [c for c, _ in Counter(labels).most_common()] + sorted(shared - set(labels), key=simplicity)
    targets = []
    for row, label, scores in zip(rows, labels, measured, strict=True):
        if scores:
            targets.append([scores.get(c) for c in candidates])
        else:
            targets.append([float(row.get("score", 1.0)) if c == label else 0.0 for c in candidates])
    return candidates, targets


def _train_head(cfg: HagTrainConfig, base: str, rows: list[dict], meta: dict) -> int:
    """Features once from the frozen base, then a small network that predicts every candidate's expected score
    (masked squared error on what the label search measured); stage 1 takes the best predicted candidate.

    Regressing scores rather than classifying labels pools evidence: on a task where many configs are about as
    good (the labels of open-ended inputs spread over dozens of nearly tied hot configs), each label is a class
    seen once, while every input's scores of the shared coarse configs say which *kind* of decoding it wants.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).to(cfg.device).eval()
    features, _ = last_hidden(model, tokenizer, [r["prompt"] for r in rows], cfg.device)
    classes, targets = score_targets(rows)
    mask = torch.tensor([[t is not None for t in row] for row in targets], device=cfg.device)
    target = torch.tensor([[0.0 if t is None else t for t in row] for row in targets], device=cfg.device)
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    net = network(features.shape[1], cfg.head_hidden, len(classes)).to(cfg.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-2)
    x = (features - mean) / std
    for _ in range(HEAD_STEPS):
        loss = ((net(x) - target) ** 2)[mask].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    log.info("head: %d candidates, final loss %.4f", len(classes), loss.item())
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file({**tensors, "mean": mean.cpu().contiguous(), "std": std.cpu().contiguous()}, str(cfg.output / HEAD_FILE))
    meta["head"] = {"hidden": cfg.head_hidden, "width": features.shape[1], "target": "score",
                    "classes": [c.as_dict() for c in classes]}
    return len(classes)
