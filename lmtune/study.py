"""Moved: studies to ``lmtune.runtime``, samplers and pruners to ``lmtune.samplers.registry``.

Importing from here still works and warns.
"""

import warnings
from typing import Any

_MOVED = {
    "open_study": "lmtune.runtime.study", "find_study": "lmtune.runtime.study", "publish_job": "lmtune.runtime.study",
    "run_trials": "lmtune.runtime.loop", "Interrupted": "lmtune.runtime.loop",
    "sigterm_as_interrupt": "lmtune.runtime.loop", "counted_trials": "lmtune.runtime.trials",
    "describe_failure": "lmtune.runtime.trials", "budget": "lmtune.runtime.trials", "Budget": "lmtune.runtime.trials",
    "make_sampler": "lmtune.samplers.registry", "make_pruner": "lmtune.samplers.registry",
    "make_storage": "lmtune.runtime.storage",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from importlib import import_module

        warnings.warn(f"lmtune.study.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
