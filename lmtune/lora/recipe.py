"""The best config as a recipe: everything needed to train it again, with lmtune or with plain transformers + PEFT.

``results.json`` holds the recipe; ``best.yaml`` is the same run as a ``lmtune lora --config`` file (the space
fixed to the best config, the same data, proxy subset and seed, so its one trial scores what the best trial
scored); the saved adapter names its base model by hub id, carries the class names in a model config and a
model card saying what was trained, on what, with which config and scores.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from lmtune.files import write_atomic
from lmtune.finetune.chat import chat_template, describe_template
from lmtune.finetune.data import DatasetSplits
from lmtune.finetune.encode import loss_tokens
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.train import TrainSettings
from lmtune.version import __version__

#: Config fields that only steer the search; a run of one fixed config does not need them.
SEARCH_FIELDS = ("sampler", "startup_trials", "pruner", "template", "encoder", "projection", "learnable_token",
                 "shortlist_k", "variant", "memory")
#: PEFT task types by lmtune task.
PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "causal": "CAUSAL_LM"}
#: The adapter's model card, a Jinja template for ``huggingface_hub.ModelCard``.
MODEL_CARD_TEMPLATE = Path(__file__).with_name("model_card.md")


def rerun_config(job: dict[str, Any], hp: LoraHyperparams, study_name: str) -> dict[str, Any]:
    """The ``lmtune lora --config`` fields that train ``hp`` exactly as the study's trial did, then retrain it.

    ``job`` is the run's config without per-process fields (``lmtune.lora.search.job_config``: paths absolute).
    The space is fixed to ``hp``; the study gets its own name so it never resumes the search it came from.
    """
    fields = {k: v for k, v in job.items() if k not in SEARCH_FIELDS}
    return {**fields, "space": {"name": f"best-of-{study_name}", "params": hp.to_dict()}, "sampler": "random",
            "trials": 1, "study_name": f"{study_name}-best", "final_train": True}


def peft_lora_config(hp: LoraHyperparams, task: str, target_modules: list[str] | None) -> dict[str, Any]:
    """``peft.LoraConfig`` keyword arguments for ``hp`` (as ``lmtune.finetune.peft_model`` builds it)."""
    return {"task_type": PEFT_TASK_TYPES[task], "r": hp.rank, "lora_alpha": hp.alpha, "lora_dropout": hp.dropout,
            "target_modules": target_modules, "use_rslora": hp.variant == "rslora", "use_dora": hp.variant == "dora",
            "init_lora_weights": "pissa" if hp.variant == "pissa" else True}


def build_recipe(*, rerun: dict[str, Any], model: str | None, model_path: str, base_id: str | None,
                 splits: DatasetSplits, settings: TrainSettings, hp: LoraHyperparams, proxy_fraction: float,
                 proxy_examples: int, target_modules: list[str] | None) -> dict[str, Any]:
    """Everything to train the best config again: the lmtune config, the base model, the data, PEFT's LoRA config,
    the training schedule (AdamW without weight decay, linear warmup then cosine decay) and which tokens carried the
    loss (for chat data, under which chat template)."""
    fingerprint = splits.fingerprint()
    template = _template_of(model_path) if splits.format == "chat" else None
    training = {"optimizer": "AdamW", "weight_decay": 0.0, "learning_rate": hp.learning_rate,
                "batch_size": hp.batch_size, "lr_scheduler": "cosine", **dataclasses.asdict(settings)}
    return {
        "lmtune": rerun,
        "command": "lmtune lora --config best.yaml",
        "base_model": {"hub_id": base_id, "path": model_path, "as_given": model},
        "data": {"dataset": splits.name, "task": splits.task, "labels": splits.label_names,
                 "rows": dict(zip(("train", "validation", "test"), fingerprint["rows"], strict=True)),
                 "sha256": fingerprint["sha256"], "split_seed": settings.seed,
                 "proxy_fraction": proxy_fraction, "proxy_examples": proxy_examples},
        "lora": {**peft_lora_config(hp, splits.task, target_modules), "variant": hp.variant},
        "training": training,
        "loss": {"format": splits.format, "on": settings.loss_on if splits.task == "causal" else "label",
                 "tokens": loss_tokens(splits.task, splits.format, settings.loss_on, template),
                 "chat_template": template},
    }


def _template_of(model_path: str) -> dict[str, Any]:
    """The chat template the run rendered its rows with, described (``lmtune.finetune.chat.describe_template``)."""
    from transformers import AutoTokenizer

    return describe_template(chat_template(AutoTokenizer.from_pretrained(model_path), model_path))


def finish_adapter(adapter_dir: Path, *, base_id: str | None, model_path: str, task: str,
                   label_names: list[str] | None) -> list[str]:
    """Make the saved adapter stand alone: name the base model by hub id (not a path inside this machine's
    virtualenv), and for classifiers save the base config with the class names (``id2label``/``label2id``) so
    the head predicts names. Returns the adapter's target modules as PEFT resolved them."""
    config_path = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = base_id or str(Path(model_path).resolve())
    write_atomic(config_path, json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    if task == "classification" and label_names:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path)
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
        config.problem_type = "single_label_classification"
        config.architectures = [f"{type(config).__name__.removesuffix('Config')}ForSequenceClassification"]
        if base_id:
            config._name_or_path = base_id
        write_atomic(adapter_dir / "config.json", config.to_json_string())
    modules = adapter_config.get("target_modules")
    return sorted(modules) if isinstance(modules, list) else modules


def model_card(result: dict[str, Any]) -> str:
    """The adapter's README.md: what was trained, on what, with which config and scores, and how to load it.

    ``huggingface_hub.ModelCard`` fills in ``model_card.md`` (a Jinja template, as the hub's own cards are made)
    with ``result`` (``results.json``); its YAML header is the hub's ``ModelCardData``.
    """
    recipe = result["recipe"]
    base, data, lora = recipe["base_model"], recipe["data"], recipe["lora"]
    base_name = base["hub_id"] or base["path"]
    classification = data["task"] == "classification"
    card_data = ModelCardData(base_model=base["hub_id"], library_name="peft",
                              pipeline_tag="text-classification" if classification else "text-generation",
                              tags=list(dict.fromkeys(["lora", lora["variant"], "lmtune"])))
    targets = lora["target_modules"]
    card = ModelCard.from_template(
        card_data, template_path=str(MODEL_CARD_TEMPLATE), **result, **recipe, version=__version__,
        base=base, base_name=base_name, base_literal=repr(base_name), classification=classification,
        targets=", ".join(targets) if isinstance(targets, list) else str(targets),
        proxy_rule=(result.get("proxy") or {}).get("rule") or f"{data['proxy_fraction']:.0%} of the training split")
    return str(card) + "\n"


def _loss_fields(loss: dict[str, Any]) -> dict[str, Any]:
    """Which tokens TRL puts the loss on, as lmtune did: the completion of prompt/completion rows; for chat rows the
    assistant's turns (TRL's ``assistant_only_loss``, which needs a template with generation markers) or every
    token."""
    if loss.get("format") != "chat":
        return {"completion_only_loss": True}
    return {"assistant_only_loss": loss.get("on") != "all", "completion_only_loss": False}


def trl_config(results: dict[str, Any], data_dir: Path, output_dir: Path, *, cuda: bool,
               bf16: bool) -> tuple[str, dict[str, Any]]:
    """The best config as a TRL SFT run (``trl sft --config best.trl.yaml``): a header saying what it reproduces
    and what differs, and the fields of TRL's ``ScriptArguments``, ``ModelConfig`` and ``SFTConfig``.

    ``data_dir`` holds lmtune's training split as ``train.jsonl`` of ``prompt``/``completion`` rows (the same seeded
    split), so TRL trains on what the search's final run trained on. Training is the recipe's: AdamW without weight
    decay, the learning rate and batch size found, cosine decay after warmup (transformers 5 reads a
    ``warmup_steps`` below 1 as a share of the steps, what ``warmup_ratio`` was), the loss on the completion only.
    ``cuda``/``bf16``: what this machine has (TRL defaults to bf16 and refuses it on a CPU), as lmtune's
    ``precision auto`` chose.
    """
    recipe = results["recipe"]
    base, lora, training = recipe["base_model"], recipe["lora"], recipe["training"]
    model = base["path"] if Path(base["path"]).exists() else base["hub_id"] or base["path"]
    targets = lora["target_modules"]
    fields = {
        "model_name_or_path": model, "dataset_name": str(data_dir), "dataset_train_split": "train",
        "use_peft": True, "lora_r": lora["r"], "lora_alpha": lora["lora_alpha"], "lora_dropout": lora["lora_dropout"],
        "lora_target_modules": targets if isinstance(targets, list) else None,
        "use_rslora": lora["use_rslora"], "use_dora": lora["use_dora"],
        "learning_rate": training["learning_rate"], "per_device_train_batch_size": training["batch_size"],
        "num_train_epochs": training["epochs"], "lr_scheduler_type": training["lr_scheduler"],
        "warmup_steps": training["warmup_ratio"], "weight_decay": training["weight_decay"],
        "max_length": training["max_length"], **_loss_fields(recipe.get("loss") or {}), "seed": training["seed"],
        "output_dir": str(output_dir), "report_to": "none", "bf16": cuda and bf16, "use_cpu": not cuda,
    }
    notes = [f"trl sft --config best.trl.yaml: trial {results['best']['trial']} of study {results['study_name']} "
             "with TRL's SFTTrainer + PEFT,",
             f"on lmtune's training split ({data_dir}/train.jsonl, seed {training['seed']}); TRL batches its own "
             "way, so its scores are close to lmtune's, not equal."]
    if lora["variant"] == "pissa":
        notes.append("PiSSA: TRL's ModelConfig has no init_lora_weights, so this trains a LoRA-initialised adapter.")
    if base["hub_id"] and model != base["hub_id"]:
        notes.append(f"The base model's hub id is {base['hub_id']} (the local copy is named so it loads offline).")
    return "".join(f"# {line}\n" for line in notes), fields
