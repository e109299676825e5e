"""Optuna samplers of lmtune, and the registry of every sampler name. Imported lazily: the registry and
``templates`` do not load torch."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "LanguageBOSampler": "lmtune.samplers.language_bo",
    "AgentSampler": "lmtune.samplers.agent",
    "CentaurSampler": "lmtune.samplers.agent",
    "ShuffledGridSampler": "lmtune.samplers.grid",
    "Template": "lmtune.samplers.templates",
    "make_sampler": "lmtune.samplers.registry",
    "make_pruner": "lmtune.samplers.registry",
    "ObservingSampler": "lmtune.samplers.fidelity",
    "SAMPLERS": "lmtune.samplers.registry",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmtune.samplers' has no attribute {name!r}")
