"""Search spaces: typed parameters, the same-value rule, discrete pools and their indexing, presets."""

from lmtune.space.params import (
    Categorical,
    Float,
    Int,
    Listed,
    Ordered,
    Param,
    Scalar,
    canonical_value,
    config_key,
    same_value,
)
from lmtune.space.presets import PAPER_LEARNING_RATES, PRESETS, load_space
from lmtune.space.search_space import SearchSpace

__all__ = ["PAPER_LEARNING_RATES", "PRESETS", "Categorical", "Float", "Int", "Listed", "Ordered", "Param", "Scalar",
           "SearchSpace", "canonical_value", "config_key", "load_space", "same_value"]
