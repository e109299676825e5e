"""Language-aided Bayesian optimization: the sampler, its text-embedding GP, its acquisition.

"Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization" (under review; no arXiv id).
"""

from lmtune.samplers.language_bo.model import FitReport, TextSurrogate
from lmtune.samplers.language_bo.sampler import LanguageBOSampler

__all__ = ["FitReport", "LanguageBOSampler", "TextSurrogate"]
