"""Optuna samplers of lmtune. Imported lazily: ``lmtune.samplers.templates`` does not load torch."""

from importlib import import_module
from typing import Any

_EXPORTS = {"LanguageBOSampler": "lmtune.samplers.language_bo", "Template": "lmtune.samplers.templates"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmtune.samplers' has no attribute {name!r}")
