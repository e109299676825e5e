"""Names of the trial and study attributes lmtune writes, so that every reader spells them one way.

They are part of lmtune's storage format: optuna-dashboard shows them, ``lmtune status`` and reports read
them, and a study written by one lmtune version is resumed by the next. Rename none without a migration.
"""

# -- every trial -------------------------------------------------------------------------------------------
#: Why a FAIL or PRUNED trial has no score, in words; written for every failure a live worker sees.
FAIL_REASON = "fail_reason"
#: ``host:pid`` of the process that ran the trial, and that process's start (``runtime.orphans.process_start``),
#: so a later run on the host can tell it is gone even when its pid was reused.
WORKER, WORKER_STARTED = "worker", "worker_started"
#: The trial was stopped by Ctrl-C or SIGTERM; it is queued again.
INTERRUPTED = "interrupted"
#: The number of the trial a queued retry replaces, and how many times that config was retried.
RETRY_OF, RETRY_COUNT = "retry_of", "retry_count"
#: The trial was created after another worker took the budget's last slot; it never ran.
BUDGET_REACHED = "budget_reached"
#: Seconds the sampler took to propose the trial's config (synthetic objectives record it).
SUGGEST_SECONDS = "suggest_seconds"

# -- LoRA trials ---------------------------------------------------------------------------------------------
METRIC_NAME = "metric_name"
HYPERPARAMS = "hyperparams"
#: Evaluation records along training: ``[{"step", "epoch", "train_loss", "eval_loss", <metric>}, ...]``.
TRAJECTORY = "trajectory"
#: The training loss of every optimizer step.
STEP_LOSSES = "step_losses"
EVAL_LOSS = "eval_loss"
TRAIN_SECONDS = "train_seconds"
TRAIN_EXAMPLES = "train_examples"
#: Optimizer steps the trial took (a pruned or failed trial: the steps before it stopped).
TRAIN_STEPS = "train_steps"
#: A benchmark row imported into a build study from a table file of that name.
IMPORTED_FROM = "imported_from"

# -- inference trials ----------------------------------------------------------------------------------------
#: Real and cached spend of the trial's calls.
SPEND, CACHED_SPEND = "spend", "cached_spend"
COST_PER_INSTANCE = "cost_per_instance"
#: Why a config was found over the per-instance budget (the trial is PRUNED).
INFEASIBLE = "infeasible"
#: Pruning knowledge: the (model, template, stop) key, whether the config fit, and whether that was inferred.
TOKEN_KEY, VALID, INFERRED = "token_key", "valid", "inferred"
INSTANCES = "instances"
#: The trial's prompt template and stop choice as text (its parameters ``template`` and ``stop`` are indices into
#: the study's lists), so optuna-dashboard and reports show what was tried.
TEMPLATE_TEXT, STOP_TEXT = "template_text", "stop_text"
#: A trial whose score is no better than answering without learning (see ``CONSTANT_SCORE``): ``true`` and why.
LEARNED_NOTHING = "learned_nothing"

# -- trials proposed by AgentSampler (a language model through an endpoint) -----------------------------------
#: Who proposed the config: ``agent`` (the model's reply), ``fallback`` (TPE, after the model failed), ``startup``
#: (TPE's random start-up trials) or ``queued`` (a retry keeps its config); in centaur mode ``base`` (the classical
#: sampler's proposal stands) or ``override`` (the model replaced it), ``startup`` and ``queued``.
AGENT_SOURCE = "agent_source"
#: Tokens of every prompt and every reply of the trial's calls (the Analyzer's and each Optimizer attempt).
AGENT_PROMPT_TOKENS, AGENT_REPLY_TOKENS = "agent_prompt_tokens", "agent_reply_tokens"
#: What the calls cost at the sampler's prices (0 for a local model), and their wall-clock seconds.
AGENT_COST, AGENT_SECONDS = "agent_cost", "agent_seconds"
#: Optimizer replies rejected before one was taken (bad JSON, outside the space, already tried) and why.
AGENT_RETRIES, AGENT_ERRORS = "agent_retries", "agent_errors"
#: The model gave no usable config, so TPE proposed this trial's; and why.
AGENT_FELL_BACK, AGENT_FALLBACK_REASON = "agent_fell_back", "agent_fallback_reason"
#: The Analyzer's diagnosis and the Optimizer's one-sentence reason (only one with words), for people reading it.
AGENT_DIAGNOSIS, AGENT_REASON = "agent_diagnosis", "agent_reason"
#: Centaur mode: what became of the classical sampler's proposal: ``overridden``, ``kept`` (the model answered with
#: it), ``refused`` (its reply was no usable override; why in ``agent_errors``), ``endpoint failed``, ``endpoint
#: skipped`` (after failures in a row) or ``share used`` (no override left, the model was not asked).
AGENT_ADVICE = "agent_advice"
#: Centaur mode: the classical sampler's proposal that an override replaced.
AGENT_PROPOSAL = "agent_proposal"

# -- studies -------------------------------------------------------------------------------------------------
#: What a worker needs to join: ``{"command", "factory", "config"}``; and the trial budget.
JOB, BUDGET = "lmtune_job", "budget"
SPACE = "space"
OPTIMIZATION_BUDGET = "optimization_budget"
#: An inference study's account in its spend journal, and the journal file (``lmtune.inference.spend``).
SPEND_ACCOUNT, SPEND_JOURNAL = "spend_account", "spend_journal"
#: A benchmark build study: the table's recipe, and (full-split runs) the configs chosen to train.
TABLE, CHOSEN_CONFIGS = "table", "configs"
#: What a constant answer scores on the data trials are scored on: ``{"value", "what"}`` (the majority-class
#: rate for classification, the most common response for exact match, 0 for an inference task). A trial at or
#: below it learned nothing.
CONSTANT_SCORE = "constant_score"
#: What a command did after its search, for reports: ``{"metric", "score", "split", "what"}`` and the run's own
#: numbers (``lmtune lora``: the best config retrained on the full training split and tested; ``lmtune infer``: the
#: chosen config on the held-out split).
FINAL_RUN = "final_run"

# -- trial system attributes (samplers' own bookkeeping) -----------------------------------------------------
#: The grid config a ``ShuffledGridSampler`` trial holds.
GRID_INDEX = "grid_index"
#: The config a language-BO trial chose, tentative then final, before its parameters are written.
LANGUAGE_BO_CLAIM = "lmtune:language_bo_config"
#: The same claim for the samplers ``DistinctSampler`` wraps, and for ``AgentSampler``.
DISTINCT_CLAIM = "lmtune:distinct_config"
