"""The LoRA workflow: its run config, the search with a final retrain, the proxy check, results and summary."""

from lmtune._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
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
})
