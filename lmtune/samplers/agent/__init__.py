"""``AgentSampler``: Analyzer and Optimizer blocks of a language model over the Trajectory Context Summarizer's
report, with schema-constrained replies, strict validation and a TPE fallback."""

from lmtune.samplers.agent.prompts import Prompts
from lmtune.samplers.agent.sampler import AgentSampler

__all__ = ["AgentSampler", "Prompts"]
