"""Each use of another library's private API (``lmtune._compat``) still does what lmtune relies on."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from lmtune import _compat
from lmtune.runtime.storage import make_storage


@pytest.fixture
def study(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=5, grace_period=10)
    return optuna.create_study(storage=storage, study_name="c")


def test_storage_trial_id_and_system_attrs_from_a_sampler(study):
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    frozen = _compat.stored_trial(trial)
    assert _compat.trial_id(frozen) == _compat.trial_id(trial)
    _compat.set_trial_system_attr(study, frozen, "mark", {"a": 1})
    assert study.trials[trial.number].system_attrs["mark"] == {"a": 1}
    _compat.set_trial_user_attr(study, frozen, "seen", 3)
    assert study.trials[trial.number].user_attrs["seen"] == 3


def test_queued_params_of_an_enqueued_trial(study):
    study.enqueue_trial({"x": 0.25})
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    assert _compat.queued_params(waiting) == {"x": 0.25}


def test_heartbeat_interval_is_read_from_rdb_storage_only(study, tmp_path):
    assert _compat.heartbeat_interval(study) == 5
    assert _compat.heartbeat_interval(optuna.create_study()) is None  # in memory: no heartbeats


def test_stale_retry_is_found_from_optunas_own_attributes(study):
    # what Optuna's RetryHeartbeatStaleTrialCallback writes on the retry it enqueues
    study.enqueue_trial({"x": 0.5}, user_attrs={})
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    assert _compat.stale_retry_of(waiting) is None
    callback = _compat.stale_retry_callback(1)
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)
    callback(study, study.trials[trial.number])
    queued = study.get_trials(states=(TrialState.WAITING,))[-1]
    assert _compat.stale_retry_of(queued) == trial.number


def test_cache_argument_and_output_cache_match_this_transformers(tiny_llama):
    cache, layer = _compat.cache_classes()
    assert issubclass(layer, object) and hasattr(cache, "__init__")
    ids = torch.tensor([[1, 2, 3]])
    out = tiny_llama(input_ids=ids, use_cache=True)
    past = _compat.output_cache(out)
    assert past is not None and past.get_seq_length() == 3
    step = tiny_llama(input_ids=torch.tensor([[4]]), use_cache=True, **_compat.with_cache(tiny_llama, past))
    assert _compat.output_cache(step).get_seq_length() == 4


def test_masked_lm_types_tell_encoders_from_causal_lms():
    assert _compat.is_masked_lm_type("bert") and not _compat.is_masked_lm_type("llama")




def test_logits_to_keep_and_activation_checkpointing_match_this_transformers(tiny_llama, tiny_bert):
    assert _compat.accepts_logits_to_keep(tiny_llama) and not _compat.accepts_logits_to_keep(tiny_bert)
    import copy

    model = copy.deepcopy(tiny_llama)
    assert not _compat.is_activation_checkpointing(model)
    _compat.enable_activation_checkpointing(model)
    assert _compat.is_activation_checkpointing(model)


def test_unload_adapter_gives_back_the_base_with_its_original_head(tiny_bert):
    import copy

    from peft import LoraConfig, TaskType, get_peft_model

    base = copy.deepcopy(tiny_bert)
    head, before = base.classifier, {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=2))
    trained = next(p for n, p in peft_model.named_parameters() if "classifier" in n and p.requires_grad)
    with torch.no_grad():
        trained.add_(1.0)  # as training changes the head's copy
    restored = _compat.unload_adapter(peft_model)
    assert restored is base and restored.classifier is head
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in before.items())
    assert not any("lora" in name for name, _ in restored.named_modules())


def test_discard_session_frees_a_lock_an_interrupted_query_left(tmp_path):
    """A transaction left open (as a KeyboardInterrupt mid-query leaves it) holds SQLite's lock against other
    connections; after ``discard_session`` another connection can write again. In memory it does nothing."""
    import sqlite3

    from lmtune._compat import discard_session, storage_of

    path = tmp_path / "s.db"
    study = optuna.create_study(storage=f"sqlite:///{path}")
    study.set_user_attr("before", 1)
    backend = getattr(storage_of(study), "_backend", storage_of(study))
    session = backend.scoped_session()
    session.connection().exec_driver_sql("BEGIN IMMEDIATE")  # this thread's session now holds the write lock
    with sqlite3.connect(path, timeout=0.1) as other, pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("update studies set study_name = study_name")
    discard_session(study)
    with sqlite3.connect(path, timeout=5) as other:
        other.execute("update studies set study_name = study_name")
    study.set_user_attr("after", 2)
    assert optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{path}").user_attrs == {
        "before": 1, "after": 2}
    discard_session(optuna.create_study())  # in-memory storage: nothing to drop


def test_log_ei_is_log_expected_improvement_where_ei_itself_underflows():
    """BoTorch's helper against 50-digit arithmetic, from u = -1e4 (EI underflows to 0 in float64 below about
    u = -38) to u = 30, across its branch at u = -1."""
    import mpmath

    u = [-1e4, -300.0, -40.0, -10.0, -1.0 - 1e-9, -1.0, -1.0 + 1e-9, -0.5, 0.0, 0.5, 3.0, 30.0]
    with mpmath.workdps(50):
        exact = [float(mpmath.log(mpmath.npdf(x) + x * mpmath.ncdf(x))) for x in u]
    ours = _compat.log_ei(torch.tensor(u, dtype=torch.float64))
    assert torch.allclose(ours, torch.tensor(exact, dtype=torch.float64), rtol=1e-12, atol=0)


def test_uncompile_gives_a_compiled_module_its_plain_forward_back():
    module = torch.nn.Linear(2, 2)
    module.compile()
    assert module._compiled_call_impl is not None
    _compat.uncompile(module)
    assert module._compiled_call_impl is None
    assert module(torch.ones(1, 2)).shape == (1, 2)


def test_attention_implementation_is_read_from_this_transformers(tiny_llama):
    import copy

    model = copy.deepcopy(tiny_llama)
    model.set_attn_implementation("eager")
    assert _compat.attention_implementation(model) == "eager"
    model.set_attn_implementation("sdpa")
    assert _compat.attention_implementation(model) == "sdpa"


def test_typer_usage_errors_the_cli_catches_and_reads():
    """The CLI catches click's usage errors of whichever click Typer parses with, tells the no-argument help of a
    group from an error, and reads the value Typer's own conversion refused."""
    import typer
    from typer.main import get_command

    click_exception, usage_error = _compat.click_errors()
    assert issubclass(typer.BadParameter, usage_error) and issubclass(usage_error, click_exception)
    app = typer.Typer(no_args_is_help=True)

    @app.command()
    def count(trials: int = 1) -> None:
        """Count."""

    @app.command()
    def other() -> None:
        """Another command, so that the app is a group."""

    command = get_command(app)
    with pytest.raises(usage_error) as bad:
        command.main(["count", "--trials", "abc"], standalone_mode=False)
    assert bad.value.param.name == "trials" and not _compat.is_help_instead(bad.value)
    rejected = _compat.rejected_input(bad.value)
    assert rejected is None or rejected == ("abc", "int_parsing")  # None where click converted the value itself
    with pytest.raises(usage_error) as empty:
        command.main([], standalone_mode=False)
    assert _compat.is_help_instead(empty.value)
