"""lmtune: choose LoRA configs, base models and decoding settings with as few expensive runs as possible.

The public API is imported lazily so that ``lmtune --help`` does not load torch.
"""

from lmtune._lazy import lazy_exports
from lmtune.version import __version__

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "tune_lora": "lmtune.lora.tune",
    "LoraRunConfig": "lmtune.lora.config",
    "LoraResult": "lmtune.lora.tune",
    "tune_inference": "lmtune.inference.tuner",
    "InferConfig": "lmtune.inference.config",
    "choose_model": "lmtune.selection.select",
    "SelectConfig": "lmtune.selection.config",
    "label_task": "lmtune.hag.labels",
    "train_hag": "lmtune.hag.learners",
    "evaluate_hag": "lmtune.hag.evaluate",
    "TwoStageGenerator": "lmtune.hag.generation",
    "SearchSpace": "lmtune.space",
    "load_space": "lmtune.space",
    "open_study": "lmtune.runtime.study",
    "run_trials": "lmtune.runtime.loop",
    "run_worker": "lmtune.runtime.worker",
    "study_status": "lmtune.runtime.status",
    "make_sampler": "lmtune.samplers.registry",
    "LanguageBOSampler": "lmtune.samplers.language_bo",
    "LoraObjective": "lmtune.finetune.objective",
    "LoraHyperparams": "lmtune.finetune.hparams",
    "load_dataset": "lmtune.finetune.data",
    "InputError": "lmtune.errors",
    "TrialFailed": "lmtune.errors",
})
__all__ = [*__all__, "__version__"]
