"""Language-aided Bayesian optimization (seed 003): the sampler, its text-embedding GP, its acquisition."""

from lmtune.samplers.language_bo.model import FitReport, TextSurrogate
from lmtune.samplers.language_bo.sampler import LanguageBOSampler

__all__ = ["FitReport", "LanguageBOSampler", "TextSurrogate"]
