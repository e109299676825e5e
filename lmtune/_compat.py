"""Every use of another library's private or version-dependent API, in one place, each with a test.

When Optuna or transformers changes one of these, one function here changes and ``tests/test_compat.py``
says which. Nothing else in lmtune reaches into a library's private names.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

# -- Optuna ------------------------------------------------------------------------------------------------
# Samplers get a study and a FrozenTrial; writing to that trial (a claim, a grid index) needs the storage and
# the trial's id, which Optuna keeps in private attributes. The Optuna-facing sampler API has no public way.


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (not its number)."""
    return trial._trial_id


def set_trial_system_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str, value: Any) -> None:
    """Write a system attribute of a running trial from a sampler, where only a FrozenTrial is at hand."""
    storage_of(study).set_trial_system_attr(trial_id(trial), key, value)


def set_trial_user_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str, value: Any) -> None:
    """Write a user attribute of a running trial from a sampler (what the agent sampler records per trial)."""
    storage_of(study).set_trial_user_attr(trial_id(trial), key, value)


def discard_session(study: optuna.Study) -> None:
    """Drop this thread's database session of a study's storage (RDB storages; others have none).

    A KeyboardInterrupt raised in the middle of a query leaves that session's transaction open, and with SQLite
    its lock then refuses the writes that record the interrupted trial ("database is locked").
    """
    storage = storage_of(study)
    storage = getattr(storage, "_backend", storage)  # Optuna's cache in front of an RDBStorage passes nothing on
    remove = getattr(storage, "remove_session", None)
    if remove is not None:
        remove()


def stored_trial(trial: optuna.Trial) -> FrozenTrial:
    """The trial as stored now, with the system attributes Optuna wrote when it was enqueued or retried."""
    return storage_of(trial.study).get_trial(trial_id(trial))


def queued_params(trial: FrozenTrial) -> dict[str, Any] | None:
    """The parameters ``Study.enqueue_trial`` fixed for a trial (retries keep their config this way)."""
    return trial.system_attrs.get("fixed_params")


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats when the study's storage records them (RDB with heartbeats on), else None."""
    storage = storage_of(study)
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    return interval if isinstance(interval, int) and interval > 0 else None


class TrialsView:
    """A study as a sampler should see it: every trial list it reads passes through ``transform`` first.

    Optuna's samplers read trials through ``Study._get_trials`` (TPE, GPSampler) or ``Study.get_trials``
    (optuna-integration's BoTorchSampler); everything else is the study's own. Used to show samplers a pruned
    trial as the observation it is (``lmtune.samplers.fidelity``).
    """

    def __init__(self, study: optuna.Study, transform):
        self._study = study
        self._transform = transform

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _select(self, trials: list[FrozenTrial], states) -> list[FrozenTrial]:
        shown = self._transform(trials)
        return shown if states is None else [t for t in shown if t.state in states]

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        return self._select(self._study.get_trials(deepcopy=deepcopy), states)

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False) -> list[FrozenTrial]:
        return self._select(self._study._get_trials(deepcopy=deepcopy, use_cache=use_cache), states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def stale_retry_callback(max_retry: int) -> RetryHeartbeatStaleTrialCallback:
    """Optuna's callback that queues a trial failed by a stale heartbeat again, at most ``max_retry`` times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # an experimental class
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def stale_retry_of(trial: FrozenTrial) -> int | None:
    """The trial this one retries after a stale heartbeat (the latest of its series), or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # a public, experimental method
        history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return history[-1] if history else None


# -- transformers ------------------------------------------------------------------------------------------
# lmtune's frozen encoder feeds fixed keys/values to a model through a cache layer that never grows
# (``lmtune.samplers.language_bo.encoder``), and its local generator steps a KV cache by hand. transformers 5
# renamed the forward argument ``past_key_values`` to ``cache`` (the old name still works with a FutureWarning)
# and its outputs' field likewise.


def cache_classes() -> tuple[type, type]:
    """(``Cache``, ``DynamicLayer``) of ``transformers.cache_utils`` (layered caches: transformers >= 4.56)."""
    from transformers.cache_utils import Cache, DynamicLayer

    return Cache, DynamicLayer


@functools.cache
def _cache_argument(forward: Any) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword argument that passes ``cache`` to ``model``'s forward, named as this transformers names it."""
    return {_cache_argument(type(model).forward): cache}


def output_cache(output: Any) -> Any:
    """The cache a forward pass returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def is_masked_lm_type(model_type: str) -> bool:
    """Whether a model type has a masked-LM head, i.e. is a bidirectional encoder (BERT, MiniLM), not a causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether a causal LM's forward takes ``logits_to_keep`` (positions at which to apply the output head;
    transformers >= 4.50 names it so), so that a loss over a few response tokens need not project every
    position onto the vocabulary."""
    return "logits_to_keep" in inspect.signature(type(model).forward).parameters


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass (non-reentrant, so frozen inputs need no gradient hook).
    transformers 5.x renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_activation_checkpointing(model: Any) -> bool:
    """Whether ``enable_activation_checkpointing`` is in effect on ``model``."""
    name = "is_activation_checkpointing" if hasattr(model, "activation_checkpointing_enable") else (
        "is_gradient_checkpointing")
    return bool(getattr(model, name))


# -- PEFT ----------------------------------------------------------------------------------------------------
# lmtune keeps one base model per process and swaps adapters on it between trials. ``PeftModel.unload()``
# removes the LoRA layers but keeps the trained copy of every ``modules_to_save`` module (a classification head)
# in place of the original; the untouched original is the wrapper's ``original_module`` attribute.


def unload_adapter(peft_model: Any) -> Any:
    """The base model as it was before ``get_peft_model``: LoRA layers removed (not merged) and every
    ``modules_to_save`` module (e.g. a classification head trained as a copy) back to its untouched original."""
    from peft.utils import ModulesToSaveWrapper

    root = peft_model.get_base_model()
    originals = {name: module.original_module for name, module in root.named_modules()
                 if isinstance(module, ModulesToSaveWrapper)}
    base = peft_model.unload()
    for name, module in originals.items():
        base.set_submodule(name, module)
    return base


# -- BoTorch -------------------------------------------------------------------------------------------------
# Language-BO scores a whole pool with the fitted GP's posterior written out in closed form (one Cholesky factor
# for tens of thousands of candidates), so it needs log EI as a function of the standardized improvement alone.
# BoTorch computes exactly that inside ``LogExpectedImprovement`` with a private helper.


def log_ei(u: Any) -> Any:
    """log(φ(u) + u Φ(u)) of a float tensor: log Expected Improvement per unit of posterior σ at standardized
    improvement u, accurate far into negative u where EI itself underflows ("Unexpected Improvements to Expected
    Improvement for Bayesian Optimization", Ament et al., NeurIPS 2023). BoTorch's ``_log_ei_helper``."""
    from botorch.acquisition.analytic import _log_ei_helper

    return _log_ei_helper(u)


# -- torch -------------------------------------------------------------------------------------------------
# ``nn.Module.compile`` compiles a module in place; torch has no public way to undo it, so a kept base whose layers
# a trial compiled is given back plain by clearing the compiled call that ``compile`` stored.


def uncompile(module: Any) -> None:
    """Undo ``module.compile()``: calls run the module's plain forward again."""
    module._compiled_call_impl = None


# -- transformers' attention implementation ----------------------------------------------------------------
# A model's config records which attention kernels it runs (``eager``, ``sdpa``, ``flash_attention_2``, ...) in an
# attribute transformers keeps private; ``set_attn_implementation`` is public, reading it back is not.


def attention_implementation(model: Any) -> str:
    """The attention implementation a built model runs (``sdpa``, ``eager``, ``flash_attention_2``, ...)."""
    return str(getattr(model.config, "_attn_implementation", None) or "eager")


# -- Typer / click -----------------------------------------------------------------------------------------
# Typer 0.2x runs on a copy of click of its own (``typer._click``), earlier Typer on click itself; it exports
# BadParameter, Abort and Exit but not the classes above them. Their bases are read off BadParameter's MRO, so the
# CLI catches the usage errors of whichever click parsed the command line.


def click_errors() -> tuple[type[Exception], type[Exception]]:
    """(ClickException, UsageError) of the click that Typer parses with."""
    import typer

    by_name = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
    return by_name["ClickException"], by_name["UsageError"]


def is_help_instead(error: Exception) -> bool:
    """Whether a usage error is click's way of showing the help of a group called with no arguments."""
    return type(error).__name__ == "NoArgsIsHelpError"


def rejected_input(error: Exception) -> tuple[Any, str] | None:
    """(the value typed, pydantic's error type such as ``int_parsing``) behind a BadParameter of Typer's own
    conversion, which Typer 0.2x does with pydantic; None where the conversion was click's."""
    from pydantic import ValidationError

    cause = error.__cause__
    if isinstance(cause, ValidationError) and cause.errors():
        first = cause.errors()[0]
        return first.get("input"), first.get("type", "")
    return None
