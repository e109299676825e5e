"""Decoding settings under a cost budget, after EcoOptiGen ("Cost-Effective Hyperparameter Optimization for Large
Language Model Generation Inference"): ``tune_inference`` in ``tuner.py``, its config in ``config.py``.

A regular package (not a namespace one) so that import-linter sees its modules; nothing is imported here, so the
CLI starts without the package's dependencies.
"""
