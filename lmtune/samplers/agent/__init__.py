"""``AgentSampler``: Analyzer and Optimizer blocks of a language model over the Trajectory Context Summarizer's
report, with schema-constrained replies, strict validation and a TPE fallback (``--agent-mode lead``);
``CentaurSampler``: the same model as a bounded advisor of a classical sampler (``--agent-mode centaur``)."""

from lmtune.samplers.agent.centaur import CentaurSampler
from lmtune.samplers.agent.prompts import Prompts
from lmtune.samplers.agent.sampler import AgentSampler

__all__ = ["AgentSampler", "CentaurSampler", "Prompts"]
