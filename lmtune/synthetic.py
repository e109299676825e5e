"""Moved to ``lmtune.runtime.synthetic``; this name keeps ``--objective lmtune.synthetic:...`` working."""

import warnings

from lmtune.runtime.synthetic import position, sleepy_quadratic

warnings.warn("lmtune.synthetic moved to lmtune.runtime.synthetic", DeprecationWarning, stacklevel=2)

__all__ = ["position", "sleepy_quadratic"]
