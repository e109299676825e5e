"""A package's public names, imported on first use (PEP 562's module ``__getattr__``).

``lmtune --help`` and the light modules of a package must start without torch, transformers or scipy, yet
``from lmtune.finetune import LoraObjective`` should work. A package lists each name with the module that
defines it and calls ``lazy_exports`` once, as ``lazy_loader.attach`` does for scientific Python packages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``, whose names are in ``exports``.

    ``exports`` maps each name to its module: absolute (``lmtune.lora.tune``) or relative to the package
    (``.data``). A name outside ``exports`` raises ``AttributeError`` as a module without it would.
    """
    names = dict(exports)

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(names[name], package), name)

    def __dir__() -> list[str]:
        return sorted({*names, *vars(import_module(package))})

    return __getattr__, __dir__, list(names)
