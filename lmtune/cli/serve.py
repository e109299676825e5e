"""``lmtune serve``: a local causal LM behind an OpenAI-compatible API."""

from __future__ import annotations

from typing import Any

from lmtune.cli.app import app
from lmtune.cli.options import config_options
from lmtune.config import build_config
from lmtune.extras import require
from lmtune.llm.config import ServeConfig
from lmtune.runtime.quiet import quiet_libraries


@app.command("serve")
@config_options(ServeConfig)
def serve_command(values: dict[str, Any] | None = None) -> None:
    """Serve a local causal LM, or a HAG model folder (lmtune hag train), on an OpenAI-compatible API
    (/v1/completions, /v1/chat/completions, /v1/models)."""
    cfg = build_config(ServeConfig, **values)
    require("serve", "serve")  # before the model loads
    from lmtune.hag.generation import TwoStageGenerator, is_hag_model
    from lmtune.llm import check_device
    from lmtune.llm.server import serve

    quiet_libraries()
    generator = None
    if is_hag_model(cfg.model):  # chooses each request's decoding, then answers with it
        generator = TwoStageGenerator(cfg.model, device=check_device(cfg.device))
    serve(cfg, generator=generator)
