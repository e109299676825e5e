"""Wrap a base model in a PEFT LoRA adapter for one of the four supported variants."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, get_peft_model_state_dict
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lmtune.errors import InputError
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.llm import default_encoder_path

TASK_TYPES = {"classification": TaskType.SEQ_CLS, "causal": TaskType.CAUSAL_LM}
# Exact SVD of every target matrix is slow past this width; PEFT's fast randomized SVD is close enough there.
PISSA_EXACT_MAX_WIDTH = 2048


def check_model(model: str, task: str | None = None, target_modules: list[str] | None = None) -> None:
    """Fail early, before a study is opened, when ``model`` has no loadable config, or when a name in
    ``target_modules`` matches none of its modules (PEFT would fail every trial on it)."""
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise InputError("model", f"cannot load {model!r}: {str(error).splitlines()[0]}") from error
    if not target_modules or task not in TASK_TYPES:
        return
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    with torch.device("meta"):  # the module tree without allocating weights
        network = auto.from_config(config)
    names = [name for name, _ in network.named_modules()]
    for target in target_modules:
        if not any(name == target or name.endswith("." + target) for name in names):
            linear = sorted({name.rsplit(".", 1)[-1] for name, module in network.named_modules()
                             if isinstance(module, torch.nn.Linear)})
            raise InputError("target_modules", f"{target!r} matches no module of {model}; its linear layers: "
                             f"{', '.join(linear[:12])}")


def build_peft_model(
    model: str | PreTrainedModel | None,
    hp: LoraHyperparams,
    *,
    task: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    num_labels: int | None = None,
    target_modules: list[str] | None = None,
    seed: int = 0,
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Load (or copy) the base model and attach a fresh LoRA adapter configured from ``hp``.

    ``model`` is a local path or hub id, ``None`` for the bundled MiniLM encoder, or an already built
    ``PreTrainedModel`` (then ``tokenizer`` is required). A built model is deep-copied first because PEFT
    injects layers in place and PiSSA rewrites base weights, and callers reuse the base across trials.
    Torch is seeded first so the classifier head and the LoRA matrices start the same for a given seed.
    """
    if task not in TASK_TYPES:
        raise InputError("task", f"must be one of {', '.join(TASK_TYPES)}, got {task!r}")
    if task == "classification" and num_labels is None:
        raise InputError("num_labels", "classification needs the number of labels")
    torch.manual_seed(seed)
    if isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise InputError("tokenizer", "pass the tokenizer together with a built model")
        base = copy.deepcopy(model)
    else:
        base, tokenizer = load_base_model(model or default_encoder_path(), task, num_labels)

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InputError("model", "the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if task == "causal" and tokenizer.eos_token_id is None:
        raise InputError("model", "causal fine-tuning needs a tokenizer with an eos token to end responses")
    base.config.pad_token_id = tokenizer.pad_token_id

    config = LoraConfig(
        task_type=TASK_TYPES[task],
        r=hp.rank,
        lora_alpha=hp.alpha,
        lora_dropout=hp.dropout,
        target_modules=target_modules,
        use_rslora=hp.variant == "rslora",
        use_dora=hp.variant == "dora",
        init_lora_weights=_pissa_init(base) if hp.variant == "pissa" else True,
    )
    try:
        return get_peft_model(base, config), tokenizer
    except ValueError as error:
        message = str(error).replace("_", " ").lower()
        if "target modules" not in message:
            raise
        if target_modules is None:
            raise InputError("target_modules", f"PEFT has no default for {type(base).__name__}; "
                                               "name the modules to adapt") from error
        raise InputError("target_modules", str(error)) from error


def save_adapter(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    directory: Path,
    *,
    initial_adapter: Path | None = None,
    label_names: list[str] | None = None,
) -> None:
    """Save adapter weights (safetensors), tokenizer and class names to ``directory``.

    For PiSSA pass ``initial_adapter`` (saved by :func:`save_initial_adapter` before training): the trained
    adapter is converted to a plain LoRA of twice the rank that applies to the unmodified base model.
    """
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(
        str(directory),
        path_initial_model_for_weight_conversion=str(initial_adapter) if initial_adapter else None,
    )
    if initial_adapter is not None:
        _restore_modules_to_save(model, directory / SAFETENSORS_WEIGHTS_NAME)
    tokenizer.save_pretrained(str(directory))
    if label_names is not None:
        (directory / "labels.json").write_text(json.dumps(label_names, indent=2) + "\n")


def save_initial_adapter(model: PeftModel, directory: Path) -> None:
    """Save a PiSSA adapter as initialised, marked as a plain LoRA init as PEFT's conversion requires."""
    model.peft_config["default"].init_lora_weights = True
    model.save_pretrained(str(directory))


def _restore_modules_to_save(model: PeftModel, weights: Path) -> None:
    """PEFT's PiSSA-to-LoRA conversion keeps only LoRA matrices and drops fully trained modules such as the
    classifier head; put them back so the converted adapter is complete."""
    saved = load_file(str(weights))
    dropped = {key: value for key, value in get_peft_model_state_dict(model).items() if key not in saved}
    if dropped:
        save_file({**saved, **dropped}, str(weights), metadata={"format": "pt"})


def load_base_model(path: str, task: str, num_labels: int | None):
    """The base model (a fresh classification head for encoders) and its tokenizer, from a folder or hub id."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if task == "classification":  # a checkpoint head of another size is replaced by a new one
            return AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, ignore_mismatched_sizes=True), tokenizer
        return AutoModelForCausalLM.from_pretrained(path), tokenizer
    except OSError as error:
        raise InputError("model", f"cannot load {path!r}: {str(error).splitlines()[0]}") from error


def _pissa_init(model: PreTrainedModel) -> str:
    """Exact SVD for small models, PEFT's 4-iteration fast SVD for wide ones."""
    width = getattr(model.config.get_text_config(), "hidden_size", 0) or 0
    return "pissa" if width <= PISSA_EXACT_MAX_WIDTH else "pissa_niter_4"
