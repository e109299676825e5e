"""Per-input decoding hyperparameters, after "LLM can Achieve Self-Regulation via Hyperparameter Aware
Generation" (arXiv:2402.11251): label each input's best decoding, learn to choose it, answer in two stages.

Names are imported on first use so that the CLI starts without loading torch.
"""

from lmtune._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "HagLabelConfig": ".config",
    "HagTrainConfig": ".config",
    "HagEvaluateConfig": ".config",
    "HagGlobalConfig": ".config",
    "find_global_config": ".global_config",
    "load_hag_task": ".task",
    "Decoding": ".space",
    "DecodingSpace": ".space",
    "SearchSettings": ".search",
    "search_input": ".search",
    "label_task": ".labels",
    "train_hag": ".learners",
    "HagModel": ".generation",
    "TwoStageGenerator": ".generation",
    "evaluate_hag": ".evaluate",
})
