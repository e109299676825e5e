"""LoRA fine-tuning: data loading, PEFT model building, the training loop and the Optuna objective.

Names are imported on first use so that ``lmtune.finetune.hparams`` and the CLI start without loading
torch and transformers.
"""

from lmtune._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "DatasetSplits": ".data",
    "load_dataset": ".data",
    "proxy_subset": ".data",
    "LoraHyperparams": ".hparams",
    "build_peft_model": ".peft_model",
    "prepare_base": ".peft_model",
    "attach_adapter": ".peft_model",
    "ReusableBase": ".reuse",
    "choose_precision": ".device",
    "resolve_device": ".device",
    "default_encoder_path": ".peft_model",
    "save_adapter": ".peft_model",
    "TrainResult": ".train",
    "TrainSettings": ".train",
    "train_and_evaluate": ".train",
    "LoraObjective": ".objective",
    "ProxyPlan": ".proxy",
    "plan_proxy": ".proxy",
})
