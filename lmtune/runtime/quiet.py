"""Keep the terminal for lmtune's own progress: silence library chatter that is not the user's concern."""

from __future__ import annotations

import warnings

import optuna


def quiet_libraries(transformers: bool = True) -> None:
    """No per-trial weight-loading bars, load reports, experimental-feature notes or Optuna's own trial lines.

    lmtune prints its own line per trial, failures included, so Optuna's INFO log would say everything twice.
    """
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if transformers:
        from transformers.utils import logging as hf_logging

        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
