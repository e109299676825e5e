"""Choosing which model to fine-tune from cheap small-subset runs: laws, AtS, the NTK term, ranking.

"Selecting Large Language Model to Fine-tune via Rectified Scaling Law" (Lin et al., ICML 2024,
arXiv:2402.02314: the rectified law and Accept-then-Stop) and "LENSLLM: Unveiling Fine-Tuning Dynamics for
LLM Selection" (the NTK term); lmtune's guard around AtS and the leave-one-dataset-out protocol it is designed in.

Names are imported on first use so the CLI starts without scipy, torch or matplotlib.
"""

from lmtune._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "Curves": ".curves", "load_curves": ".curves", "save_curves": ".curves",
    "FitError": ".laws", "PowerLaw": ".laws", "VanillaLaw": ".laws", "RectifiedLaw": ".laws", "NTKLaw": ".laws",
    "transition_index": ".ats", "ats_predict": ".ats", "tail_median_predict": ".ats",
    "all_predictors": ".predictors", "PROPOSED": ".predictors", "DESIGNED": ".predictors", "GuardedAtS": ".predictors",
    "Setting": ".guard", "extrapolations": ".guard", "choose_setting": ".guard",
    "leave_one_out": ".protocol", "design_guard": ".protocol", "design_file": ".protocol",
    "pearcorr": ".metrics", "relacc": ".metrics", "finetune_flops": ".metrics",
    "run_selection": ".evaluate", "sweep": ".evaluate",
    "bench_select": ".bench",
    "select_models": ".select", "choose_model": ".select", "SelectResult": ".select",
    "SelectConfig": ".config", "BenchSelectConfig": ".config",
    "ntk_term": ".ntk",
    "measure_curves": ".measure",
    "plot_curves": ".plot",
})
