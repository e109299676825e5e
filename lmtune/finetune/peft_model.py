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

from lmtune._compat import enable_activation_checkpointing
from lmtune.errors import InputError
from lmtune.finetune.device import Precision, quantization_config
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.llm import default_encoder_path

TASK_TYPES = {"classification": TaskType.SEQ_CLS, "causal": TaskType.CAUSAL_LM}
# Exact SVD of every target matrix is slow past this width; PEFT's fast randomized SVD is close enough there.
PISSA_EXACT_MAX_WIDTH = 2048
#: Names PEFT gives a sequence classifier's head (trained as a full copy, never quantized).
CLASSIFIER_HEADS = ("classifier", "score")


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
    base, tokenizer = prepare_base(model, task=task, tokenizer=tokenizer, num_labels=num_labels, seed=seed)
    return attach_adapter(base, hp, task=task, target_modules=target_modules), tokenizer


def prepare_base(
    model: str | PreTrainedModel | None,
    *,
    task: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    num_labels: int | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    precision: Precision | None = None,
    quantize: str = "none",
    gradient_checkpointing: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model of a run, seeded, on ``device``, ready for an adapter (see ``build_peft_model``).

    Under 16-bit ``precision`` the base is held in that type (its trainable copies go back to float32 in
    ``attach_adapter``); ``quantize="4bit"`` loads it in NF4 through bitsandbytes (QLoRA) and prepares it with
    PEFT's ``prepare_model_for_kbit_training``. ``gradient_checkpointing`` recomputes activations in the
    backward pass instead of storing them (non-reentrant, so frozen inputs need no gradient hook).
    """
    if task not in TASK_TYPES:
        raise InputError("task", f"must be one of {', '.join(TASK_TYPES)}, got {task!r}")
    if task == "classification" and num_labels is None:
        raise InputError("num_labels", "classification needs the number of labels")
    precision = precision or Precision("fp32")
    torch.manual_seed(seed)
    if isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise InputError("tokenizer", "pass the tokenizer together with a built model")
        if quantize != "none":
            raise InputError("quantize", "a 4-bit base is loaded from a folder or hub id; pass the model's path")
        base = copy.deepcopy(model)
        if precision.autocast is not None:  # parameters only: buffers such as rotary frequencies stay float32
            for parameter in base.parameters():
                if parameter.is_floating_point():
                    parameter.data = parameter.data.to(precision.autocast)
    else:
        base, tokenizer = load_base_model(model or default_encoder_path(), task, num_labels, device=device,
                                          precision=precision, quantize=quantize)

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InputError("model", "the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if task == "causal" and tokenizer.eos_token_id is None:
        raise InputError("model", "causal fine-tuning needs a tokenizer with an eos token to end responses")
    base.config.pad_token_id = tokenizer.pad_token_id
    if quantize != "none":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        if device is not None:
            base.to(device)
        if gradient_checkpointing:
            if not base.supports_gradient_checkpointing:
                raise InputError("gradient_checkpointing", f"{type(base).__name__} does not support it")
            enable_activation_checkpointing(base)
    return base, tokenizer


def attach_adapter(base: PreTrainedModel, hp: LoraHyperparams, *, task: str,
                   target_modules: list[str] | None = None) -> PeftModel:
    """Wrap ``base`` in a fresh LoRA adapter of ``hp`` (PEFT injects its layers in place).

    Every trainable parameter is float32 even on a 16-bit base: PEFT upcasts the adapter itself, and a
    classification head's trainable copy is upcast here, so the optimizer updates float32 master weights.
    """
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
        peft_model = get_peft_model(base, config)
    except ValueError as error:
        message = str(error).replace("_", " ").lower()
        if "target modules" not in message:
            raise
        if target_modules is None:
            raise InputError("target_modules", f"PEFT has no default for {type(base).__name__}; "
                                               "name the modules to adapt") from error
        raise InputError("target_modules", str(error)) from error
    for parameter in peft_model.parameters():
        if parameter.requires_grad and parameter.dtype in (torch.bfloat16, torch.float16):
            parameter.data = parameter.data.float()
    return peft_model


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


def load_base_model(path: str, task: str, num_labels: int | None, *, device: torch.device | None = None,
                    precision: Precision | None = None, quantize: str = "none"):
    """The base model (a fresh classification head for encoders) and its tokenizer, from a folder or hub id.

    float32 unless ``precision`` holds the base in 16 bits; on an accelerator the weights load straight onto
    ``device``; ``quantize="4bit"`` loads them in NF4 (a fresh head stays unquantized, to be trained).
    """
    options = {}
    if precision is not None:
        options["dtype"] = precision.base_dtype
    if device is not None and device.type != "cpu":
        options["device_map"] = {"": str(device)}
    if quantize != "none":
        skip = list(CLASSIFIER_HEADS) if task == "classification" else None
        options["quantization_config"] = quantization_config(precision or Precision("fp32"), skip)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if task == "classification":  # a checkpoint head of another size is replaced by a new one
            return AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, ignore_mismatched_sizes=True, **options), tokenizer
        return AutoModelForCausalLM.from_pretrained(path, **options), tokenizer
    except OSError as error:
        raise InputError("model", f"cannot load {path!r}: {str(error).splitlines()[0]}") from error


def _pissa_init(model: PreTrainedModel) -> str:
    """Exact SVD for small models, PEFT's 4-iteration fast SVD for wide ones."""
    width = getattr(model.config.get_text_config(), "hidden_size", 0) or 0
    return "pissa" if width <= PISSA_EXACT_MAX_WIDTH else "pissa_niter_4"
