"""Samplers and pruners by name: the one list of what ``--sampler`` and ``--pruner`` accept.

``make_sampler`` is the one function that builds a sampler by name: ``lmtune lora``, ``lmtune worker`` and the
benchmark's replays (``lmtune bench samplers``) all call it the same way for the same method, so a replay runs the
search a user runs. Each sampler gets the encoding of the space it can use: Optuna's samplers see every ordered
parameter as its index (``lmtune.samplers.encoding``); language-BO and the agent read the values and their text.

On a discrete space every sampler lmtune hands out proposes only configs no trial holds yet, finished or
running, across workers and resumed runs: language-BO by itself, Optuna's samplers through
``DistinctSampler``, which also seeds them per trial (from the study seed and the trial number). Every sampler
lmtune hands out sees a pruned trial as an observation at its fidelity (``lmtune.samplers.fidelity``), not as
a failure or as nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.samplers import BaseSampler

from lmtune.errors import InputError
from lmtune.extras import require
from lmtune.samplers.auto import PLANS as AUTO_PLANS
from lmtune.space import SearchSpace


@dataclass(frozen=True)
class SamplerEntry:
    """One sampler name: its family (how ``make_sampler`` builds it), its options for that family, the CLI's help
    text for the names ``--sampler`` offers (None: a benchmark ablation), and whether it uses transferred
    observations (``transfer=``; the ``memory`` of ``lmtune lora``)."""

    family: str  # "optuna", "language-bo" (the paper's sampler), "language-bo+", "agent" or "auto"
    options: dict[str, Any] = field(default_factory=dict)
    help: str | None = None
    transfer: bool = False


#: Every sampler name lmtune knows, once. The language-BO paper's Table 6 ablations are cumulative: none,
#: +projection, +domain prompt, +token; ``language-bo+`` and each of its three ideas alone on top of the paper's
#: sampler (``language_bo.plus``).
REGISTRY: dict[str, SamplerEntry] = {
    "auto": SamplerEntry(
        "auto", help="the default: Optuna's GP, or with memory of earlier studies language-bo+ for the first 5 "
                     "trials and then the GP (a rule chosen on lmtune's replay tables)", transfer=True),
    "random": SamplerEntry("optuna", help="uniform random configs (Optuna's RandomSampler)"),
    "tpe": SamplerEntry("optuna", help="Tree-structured Parzen Estimator (Optuna's TPESampler)"),
    "gp": SamplerEntry("optuna", help="Gaussian process with log EI on the numbers (Optuna's GPSampler)"),
    "botorch": SamplerEntry("optuna", help="BoTorch qLogEI through optuna-integration's BoTorchSampler"),
    "language-bo": SamplerEntry(
        "language-bo", {"template": "domain", "use_projection": True, "use_learnable_token": True},
        help="language-aided BO: configs as text, embedded by a frozen LM, deep-kernel GP"),
    "language-bo-no-token": SamplerEntry(
        "language-bo", {"template": "domain", "use_projection": True, "use_learnable_token": False}),
    "language-bo-plain": SamplerEntry(
        "language-bo", {"template": "plain", "use_projection": True, "use_learnable_token": False}),
    "language-bo-none": SamplerEntry(
        "language-bo", {"template": "plain", "use_projection": False, "use_learnable_token": False}),
    "agent": SamplerEntry(
        "agent", help="a language model at --endpoint advises the default sampler on a bounded share of trials "
                      "(centaur), or proposes every config itself with a TPE fallback (lead)"),
    "language-bo+": SamplerEntry(
        "language-bo+", {"numeric": True, "start": "space-filling", "use_learnable_token": False},
        help="language-BO with a numeric kernel beside the text one, memory of past studies (--memory) and a "
             "space-filling start", transfer=True),
    "language-bo+numeric": SamplerEntry("language-bo+", {"numeric": True, "start": "random"}),
    "language-bo+transfer": SamplerEntry(
        "language-bo+", {"numeric": False, "start": "random", "lbfgs": False}, transfer=True),
    "language-bo+start": SamplerEntry("language-bo+", {"numeric": False, "start": "space-filling", "lbfgs": False}),
    "language-bo+no-transfer": SamplerEntry(
        "language-bo+", {"numeric": True, "start": "space-filling", "use_learnable_token": False}),
    "language-bo+parameter-gate": SamplerEntry(
        "language-bo+", {"numeric": True, "start": "space-filling", "use_learnable_token": False,
                         "memory_gate": "parameter"}, transfer=True),
    **{f"auto-{plan}": SamplerEntry("auto", {"plan": plan}, transfer=True) for plan in AUTO_PLANS},
}
#: The names ``--sampler`` accepts, with what each is (the CLI's help text).
SAMPLERS: dict[str, str] = {name: entry.help for name, entry in REGISTRY.items() if entry.help}
#: The sampler a study gets when none is named, and the one the agent advises in centaur mode.
DEFAULT_SAMPLER = "auto"
#: How the agent works with a classical sampler (``--agent-mode``; ``lmtune.samplers.agent``).
AGENT_MODES: dict[str, str] = {
    "centaur": "the default sampler proposes every trial; the model may replace a bounded share of its proposals",
    "lead": "the model proposes every trial after the start-up ones; TPE when it gives no usable config",
}
#: In centaur mode, the most trials (a share of the study's trials so far) whose config the model may set: the share
#: the Centaur paper used (arXiv:2603.24647), where larger shares did worse.
AGENT_OVERRIDE_SHARE = 0.3
#: The language-BO paper's sampler and its ablations, with their options.
LANGUAGE_BO_ABLATIONS: dict[str, dict[str, Any]] = {
    name: entry.options for name, entry in REGISTRY.items() if entry.family == "language-bo"}
#: ``language-bo+`` and its ablations, with their options.
LANGUAGE_BO_PLUS: dict[str, dict[str, Any]] = {
    name: entry.options for name, entry in REGISTRY.items() if entry.family == "language-bo+"}
#: ``auto`` and its plans (the design candidates of its rule), with their options.
AUTO: dict[str, dict[str, Any]] = {name: entry.options for name, entry in REGISTRY.items() if entry.family == "auto"}
#: The names that take ``language-bo+``'s options (description, encoder, template, fit threads): it and ``auto``.
PLUS_OPTIONS = (*LANGUAGE_BO_PLUS, *AUTO)
#: The names that use transferred observations.
TRANSFER_SAMPLERS = tuple(name for name, entry in REGISTRY.items() if entry.transfer)

PRUNERS: dict[str, str] = {
    "none": "no pruning",
    "median": "stop a trial below the median of earlier trials at the same step (after 5 trials)",
    "successive-halving": "asynchronous successive halving over training steps (keep the best 1/3 at each rung)",
    "hyperband": "Hyperband over training steps: successive halving in several brackets of aggressiveness",
}
#: Successive halving keeps the best 1/REDUCTION_FACTOR of the trials at each rung.
REDUCTION_FACTOR = 3


def make_sampler(name: str, *, space: SearchSpace | None = None, seed: int | None = None, n_startup_trials: int = 5,
                 **language_bo: Any) -> BaseSampler:
    """An Optuna sampler by name; ``n_startup_trials`` random trials precede model-based ones.

    Optuna's samplers (random, tpe, gp, botorch) see each ``Ordered`` parameter of ``space`` as its index and pruned
    trials as observations (``model_sampler``); on a discrete ``space`` no config is proposed twice
    (``DistinctSampler``, which keeps that rule over the values). ``language-bo`` (and its ablation names) searches
    the discrete pool of ``space``; ``language_bo`` holds its options (template, encoder, use_projection,
    use_learnable_token, shortlist_k, ...), or for ``agent`` ``mode`` (``AGENT_MODES``; centaur by default) and the
    ``AgentSampler``'s options (endpoint, model, prompts, temperature, ...; centaur's ``override_share``): in lead
    mode its fallback is this registry's TPE, in centaur mode the sampler it advises is this registry's
    ``DEFAULT_SAMPLER`` (or ``fallback``, when given). ``language-bo+`` (and its ablations) also takes
    ``transfer`` (``TransferSource``s: the memory) and ``description``.
    """
    if name in LANGUAGE_BO_PLUS:
        if space is None:
            raise InputError("sampler", f"{name} needs the search space whose pool it ranks")
        if language_bo.get("transfer") and name not in TRANSFER_SAMPLERS:  # configs refuse it with advice
            raise ValueError(f"{name} does not use transferred observations")
        from lmtune.samplers.language_bo.plus import LanguageBOPlusSampler

        return LanguageBOPlusSampler(space, seed=seed, n_startup_trials=n_startup_trials,
                                     **{**LANGUAGE_BO_PLUS[name], **language_bo})
    if name in AUTO:
        if space is None:
            raise InputError("sampler", "auto needs the search space it chooses a sampler for")
        from lmtune.samplers.auto import AutoSampler

        return AutoSampler(space, make_sampler, seed=seed, n_startup_trials=n_startup_trials,
                           **{**AUTO[name], **language_bo})
    if name in LANGUAGE_BO_ABLATIONS:
        if space is None:
            raise InputError("sampler", "language-bo needs the search space whose pool it ranks")
        from lmtune.samplers.language_bo import LanguageBOSampler

        options = {**LANGUAGE_BO_ABLATIONS[name], **language_bo} if name != "language-bo" else language_bo
        return LanguageBOSampler(space, seed=seed, n_startup_trials=n_startup_trials, **options)
    if name == "agent":
        return _agent_sampler(seed, n_startup_trials, space, dict(language_bo))
    if name not in SAMPLERS:  # a config's names are checked where it is read
        raise ValueError(f"unknown sampler {name!r}")
    if name == "botorch":  # now, not when DistinctSampler first builds it in a trial
        require("botorch", "sampler")
    if space is not None and space.is_discrete:
        from lmtune.samplers.distinct import DistinctSampler

        return DistinctSampler(functools.partial(model_sampler, name, space, n_startup_trials=n_startup_trials),
                               space, seed=seed)
    return model_sampler(name, space, seed, n_startup_trials=n_startup_trials)


def _agent_sampler(seed: int | None, n_startup_trials: int, space: SearchSpace | None,
                   options: dict[str, Any]) -> BaseSampler:
    """The agent in its mode: centaur advises ``DEFAULT_SAMPLER`` (Centaur, arXiv:2603.24647), lead proposes itself."""
    if space is None:
        raise InputError("sampler", "the agent sampler needs the search space it proposes from")
    require("openai", "endpoint")
    from lmtune.samplers.agent import AgentSampler, CentaurSampler

    mode = options.pop("mode", "centaur")
    if mode not in AGENT_MODES:
        raise InputError("agent_mode", f"unknown mode {mode!r}; allowed: {', '.join(AGENT_MODES)}")
    base = "tpe" if mode == "lead" else DEFAULT_SAMPLER
    fallback = options.pop("fallback", None) or make_sampler(base, space=space, seed=seed,
                                                             n_startup_trials=n_startup_trials)
    share = options.pop("override_share", AGENT_OVERRIDE_SHARE)
    if mode == "lead":
        return AgentSampler(space, seed=seed, n_startup_trials=n_startup_trials, fallback=fallback, **options)
    return CentaurSampler(space, seed=seed, n_startup_trials=n_startup_trials, fallback=fallback,
                          override_share=share, **options)


def model_sampler(name: str, space: SearchSpace | None, seed: int | None, *, n_startup_trials: int = 5
                  ) -> BaseSampler:
    """One of Optuna's samplers as lmtune runs it: it sees pruned trials as observations at their fidelity
    (``ObservingSampler``) and each ordered parameter of ``space`` as its index (``IndexedSampler``)."""
    from lmtune.samplers.encoding import IndexedSampler
    from lmtune.samplers.fidelity import ObservingSampler

    observing = ObservingSampler(optuna_sampler(name, seed, n_startup_trials=n_startup_trials))
    return observing if space is None else IndexedSampler(observing, space)


def optuna_sampler(name: str, seed: int | None, *, n_startup_trials: int = 5) -> BaseSampler:
    """One of Optuna's samplers as Optuna ships it (random, tpe, gp, botorch)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "botorch":
        from optuna_integration import BoTorchSampler
        from optuna_integration.botorch import qlogei_candidates_func

        # Running trials of other workers enter the acquisition as pending points; qLogEI is the batch
        # form of the LogEI BoTorchSampler uses alone (its default with pending points is the older qEI).
        return BoTorchSampler(seed=seed, n_startup_trials=n_startup_trials, consider_running_trials=True,
                              candidates_func=qlogei_candidates_func)
    raise ValueError(f"unknown sampler {name!r}")


def make_pruner(name: str, *, min_resource: int | None = None, max_resource: int | None = None
                ) -> optuna.pruners.BasePruner:
    """A pruner by name. The resource is the step a trial reports at (lmtune: optimizer steps).

    ``min_resource`` is the first rung (a trial's first report), ``max_resource`` the steps of a whole trial.
    Both are fixed, not inferred from the first trials ("auto"), so a resumed study, or another worker,
    rebuilds the same rungs and brackets and continues the same schedule: Optuna keeps each trial's rungs in
    its system attributes and draws its Hyperband bracket from the study name and trial number.
    """
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=min_resource or 0)
    if name in ("successive-halving", "hyperband"):
        if min_resource is None or max_resource is None or not 1 <= min_resource <= max_resource:
            raise InputError("pruner", f"{name} needs the steps of a trial and of its first report, "
                             f"got {min_resource} and {max_resource}")
        if name == "successive-halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource,
                                                          reduction_factor=REDUCTION_FACTOR)
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource,
                                              reduction_factor=REDUCTION_FACTOR)
    raise ValueError(f"unknown pruner {name!r}")  # a config's names are checked where it is read
