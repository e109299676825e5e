"""The Trajectory Context Summarizer (TCS): a study's trials, curves, failures and untried regions as one
deterministic report, in JSON (``summarize_study``), compact text for a model's prompt (``report_text``) and
plain sentences for people (``learned_sentences``). From "Small LLMs with Expert Blocks Are Good Enough for
Hyperparameter Tuning" (arXiv:2509.15561); used by ``AgentSampler`` and by ``lmtune lora``'s summary.
"""

from lmtune.trajectory.curves import FLAGS, CurveSummary, summarize_curve
from lmtune.trajectory.report import space_of, summarize_study
from lmtune.trajectory.text import learned_sentences, report_text

__all__ = ["FLAGS", "CurveSummary", "learned_sentences", "report_text", "space_of", "summarize_curve",
           "summarize_study"]
