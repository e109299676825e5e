"""Optuna samplers of lmtune, and the registry of every sampler name. Imported lazily: the registry and
``templates`` do not load torch."""

from lmtune._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "LanguageBOSampler": "lmtune.samplers.language_bo",
    "AgentSampler": "lmtune.samplers.agent",
    "CentaurSampler": "lmtune.samplers.agent",
    "ShuffledGridSampler": "lmtune.samplers.grid",
    "Template": "lmtune.samplers.templates",
    "make_sampler": "lmtune.samplers.registry",
    "make_pruner": "lmtune.samplers.registry",
    "ObservingSampler": "lmtune.samplers.fidelity",
    "SAMPLERS": "lmtune.samplers.registry",
})
