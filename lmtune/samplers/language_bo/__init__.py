"""Language-aided Bayesian optimization: the sampler, its surrogate over text (and numbers), its acquisition.

"Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization" (under review; no arXiv id).
"""

from lmtune.samplers.language_bo.sampler import LanguageBOSampler
from lmtune.samplers.language_bo.surrogate import FitReport, Surrogate

__all__ = ["FitReport", "LanguageBOSampler", "Surrogate"]
