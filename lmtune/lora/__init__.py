"""The LoRA workflow: its run config, the search with a final retrain, the proxy check, results and summary."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "LoraRunConfig": "lmtune.lora.config",
    "LoraResult": "lmtune.lora.tune",
    "PublishedStudy": "lmtune.lora.tune",
    "tune_lora": "lmtune.lora.tune",
    "LoraSearch": "lmtune.lora.search",
    "build_search": "lmtune.lora.search",
    "prepare_run": "lmtune.lora.search",
    "resolve_space": "lmtune.lora.search",
    "proxy_check": "lmtune.lora.proxy_check",
    "ProxyCheckResult": "lmtune.lora.proxy_check",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
