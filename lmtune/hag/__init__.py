"""Per-input decoding hyperparameters, after "LLM can Achieve Self-Regulation via Hyperparameter Aware
Generation" (arXiv:2402.11251): label each input's best decoding, learn to choose it, answer in two stages.

Names are imported on first use so that the CLI starts without loading torch.
"""

from importlib import import_module

_EXPORTS = {
    "HagLabelConfig": "config",
    "HagTrainConfig": "config",
    "HagEvaluateConfig": "config",
    "load_hag_task": "task",
    "Decoding": "space",
    "DecodingSpace": "space",
    "SearchSettings": "search",
    "search_input": "search",
    "label_task": "labels",
    "train_hag": "learners",
    "HagModel": "generation",
    "TwoStageGenerator": "generation",
    "evaluate_hag": "evaluate",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
