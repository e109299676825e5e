"""LanguageBOSampler: templates, the frozen-encoder blocks, and the sampler's guarantees.

Most tests use tiny BERT / Llama encoders built from a config (with MiniLM's tokenizer) so the
file runs in well under three minutes on two cores; one test uses the real MiniLM.
"""

import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from lmtune.errors import InputError
from lmtune.llm import default_encoder_path
from lmtune.samplers import LanguageBOSampler
from lmtune.samplers.language_bo.acquisition import log_ei_scorer
from lmtune.samplers.language_bo.embeddings import TextPool, shared_prefix
from lmtune.samplers.language_bo.encoder import FrozenEncoder
from lmtune.samplers.templates import Template, format_value
from lmtune.space import Categorical, Float, Int, Ordered, SearchSpace, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: 36 configs: small enough to exhaust, large enough for a shortlist.
SPACE = SearchSpace(
    (
        Ordered("rank", (4, 16, 64), log=True),
        Ordered("alpha_ratio", (1.0, 4.0), log=True),
        Ordered("learning_rate", (1e-5, 1e-4, 1e-3), log=True),
        Ordered("dropout", (0.0, 0.1)),
    ),
    {"variant": "lora"},
    "test",
)


def score(config) -> float:
    """A smooth toy objective with an interaction: the best step size lr * alpha_ratio is 4e-4."""
    step = math.log10(config["learning_rate"] * config["alpha_ratio"])
    return -((step + 3.4) ** 2) - 0.05 * abs(math.log2(config["rank"]) - 4) - config["dropout"]


def objective(trial: optuna.Trial) -> float:
    return score(SPACE.suggest(trial))



def make(encoders, tmp_path, kind="bert", **options) -> LanguageBOSampler:
    settings = dict(encoder=encoders[kind], n_startup_trials=3, mll_steps=20, warm_mll_steps=5, seed=0,
                    cache_dir=tmp_path / "cache")
    return LanguageBOSampler(options.pop("space", SPACE), **{**settings, **options})


def configs(study) -> list[tuple]:
    return [tuple(t.params[n] for n in ("rank", "alpha_ratio", "learning_rate", "dropout")) for t in study.trials]


# -- templates ---------------------------------------------------------------------------------------


def test_plain_and_domain_templates_follow_table_a10():
    space = load_space("lora-paper")
    config = {"rank": 256, "alpha_ratio": 32.0, "batch_size": 4, "learning_rate": 5e-06, "dropout": 0.0}
    assert Template("plain", space).render(config) == (
        "rank(r)=256, Scaling factor(α)=8192, Dropout Rate=0.0, Batch Size=4, Learning Rate=5e-06")
    domain = Template("domain", space).render(config)
    assert domain.startswith("* Rank (r): Controls adapter capacity")
    assert domain.endswith("* rank(r): 256\n* Scaling factor(α): 8192\n* Dropout Rate: 0.0\n"
                           "* Batch Size: 4\n* Learning Rate: 5e-06")
    assert "linear-scaling rule" in domain and "variant" not in domain  # fixed values are not shown


def test_domain_template_renders_other_spaces_with_name_value_lines():
    space = SearchSpace((Categorical("learning_rate", (1e-4,)), Int("warmup_steps", 0, 100, step=50)))
    text = Template("domain", space).render({"learning_rate": 1e-4, "warmup_steps": 50})
    assert "* Learning rate: Step size" in text and text.endswith("* Learning Rate: 0.0001\n* warmup_steps: 50")
    assert Template("plain", space).render({"learning_rate": 1e-4, "warmup_steps": 50}) == (
        "Learning Rate=0.0001, warmup_steps=50")
    assert [format_value(v) for v in (8, 8.0, 0.5, 3e-4, True)] == ["8", "8", "0.5", "0.0003", "True"]


def test_user_templates_jinja_and_format(tmp_path):
    jinja = tmp_path / "t.j2"
    jinja.write_text("r={{ rank }} a={{ alpha }} lr={{ learning_rate }} p={{ dropout }}")
    config = {"rank": 4, "alpha_ratio": 4.0, "learning_rate": 1e-4, "dropout": 0.1}
    assert Template(jinja, SPACE).render(config) == "r=4 a=16 lr=0.0001 p=0.1"
    looping = tmp_path / "loop.j2"
    looping.write_text("{% for k, v in params.items() %}{{ k }}:{{ v }};{% endfor %}")
    assert Template(looping, SPACE).render(config) == "rank:4;alpha_ratio:4.0;learning_rate:0.0001;dropout:0.1;"
    fmt = tmp_path / "t.txt"
    fmt.write_text("rank {rank}, ratio {alpha_ratio}, lr {learning_rate:.0e}, dropout {dropout}, {variant}")
    assert Template(fmt, SPACE).render(config) == "rank 4, ratio 4.0, lr 1e-04, dropout 0.1, lora"


@pytest.mark.parametrize("text, message", [
    ("{{ rnak }} {{ alpha }} {{ learning_rate }} {{ dropout }}", "unknown name 'rnak'"),
    ("{rank} {learning_rate} {dropout}", "does not show searched parameter 'alpha_ratio'"),
    ("{{ rank ", "Jinja2 syntax error"),
])
def test_bad_user_templates_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        Template(path, SPACE)
    assert err.value.field == "template"


def test_bad_inputs_fail_at_construction(tmp_path):
    with pytest.raises(InputError, match="neither a built-in"):
        LanguageBOSampler(SPACE, template=tmp_path / "missing.j2")
    with pytest.raises(InputError, match="discrete pool"):
        LanguageBOSampler(SPACE.with_param(Float("dropout", 0.0, 0.3)))
    with pytest.raises(InputError) as err:
        LanguageBOSampler(SPACE, shortlist_k=0)
    assert err.value.field == "shortlist_k"
    with pytest.raises(InputError) as err:
        LanguageBOSampler(SPACE, encoder=tmp_path / "no-such-model")
    assert err.value.field == "encoder"
    with pytest.raises(InputError) as err:
        LanguageBOSampler(SPACE, encoder_dtype="int8")
    assert err.value.field == "encoder_dtype"


# -- the pool and the encoder blocks ---------------------------------------------------------------------


def test_pool_indices_follow_iter_pool_and_accept_equal_numbers():
    space = SPACE.with_param(Float("dropout", 0.0, 0.2, step=0.1))
    listed = [{k: v for k, v in c.items() if k != "variant"} for c in space.iter_pool()]
    assert [space.pool_config(i) for i in range(space.pool_size)] == listed
    assert space.pool_index(listed[7]) == 7
    close = {**listed[7], "rank": float(listed[7]["rank"]), "dropout": listed[7]["dropout"] + 1e-13}
    assert space.pool_index(close) == 7
    assert space.pool_index({**listed[7], "rank": 5}) is None and space.pool_index({"rank": 4}) is None
    assert space.pool_index({**listed[7], "rank": True}) is None  # True is never 1


def test_shared_prefix_ends_at_a_line_break():
    assert shared_prefix(["a\nb\nx=1", "a\nb\nx=2"]) == "a\nb\n"
    assert shared_prefix(["x=1", "x=2"]) == ""


def test_block_encoding_is_exact_for_causal_and_standard_for_encoders(encoders, tmp_path):
    texts = [Template("domain", SPACE).render(c) for c in list(SPACE.iter_pool())[:4]]
    causal = FrozenEncoder.load(encoders["llama"])
    pool = TextPool(causal, texts)
    assert causal.causal and pool.prefix_length > 100  # the explanation is a shared, cached context
    psi = torch.randn(causal.hidden_size)
    with torch.no_grad():
        with_psi = pool.psi_batch([1, 3])(psi)
        free = pool.psi_free(cache_dir=tmp_path)
        for row, index in enumerate([1, 3]):
            ids = torch.tensor([causal.tokenizer(texts[index])["input_ids"]])
            embeds = causal.embed_ids(ids)
            plain = causal.model(inputs_embeds=embeds).last_hidden_state[0, -1]
            appended = causal.model(inputs_embeds=torch.cat([embeds, psi[None, None]], 1)).last_hidden_state[0, -1]
            assert torch.allclose(free[index], plain, atol=1e-5)
            assert torch.allclose(with_psi[row], appended, atol=1e-5)
    encoder = FrozenEncoder.load(encoders["bert"])
    whole = TextPool(encoder, texts, share_prefix=False)
    batch = encoder.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        states = encoder.model(**batch).last_hidden_state
        mean = (states * batch["attention_mask"][..., None]).sum(1) / batch["attention_mask"].sum(1, keepdim=True)
        assert torch.allclose(whole.psi_free(cache_dir=tmp_path), mean, atol=1e-5)


def test_psi_gradient_reaches_the_token(encoders):
    encoder = FrozenEncoder.load(encoders["bert"])
    pool = TextPool(encoder, [Template("plain", SPACE).render(c) for c in SPACE.iter_pool()])
    psi = encoder.mean_token_embedding().requires_grad_(True)
    pool.psi_batch([0, 5, 9])(psi).pow(2).sum().backward()
    assert psi.grad is not None and psi.grad.abs().sum() > 0


# -- the sampler --------------------------------------------------------------------------------------------


def test_never_proposes_evaluated_failed_or_running_configs(encoders, tmp_path):
    sampler = make(encoders, tmp_path, shortlist_k=8)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=4)
    running = study.ask()
    SPACE.suggest(running)  # a trial of another worker, still running
    failed = study.ask()
    SPACE.suggest(failed)
    study.tell(failed, state=TrialState.FAIL)
    study.optimize(objective, n_trials=30)  # 36 configs - 4 observed - 1 failed - 1 running
    proposed = configs(study)
    assert len(set(proposed)) == len(proposed) == 36  # the whole pool, each config once
    assert all(SPACE.validate({**t.params}) for t in study.trials)
    assert sampler.last_fit is not None  # model-based suggestions did happen


def test_pending_configs_enter_as_constant_liars(encoders, tmp_path):
    sampler = make(encoders, tmp_path)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=5)
    first = study.ask()
    SPACE.suggest(first)
    second = study.ask()
    SPACE.suggest(second)  # proposed while `first` is still running
    assert first.params != second.params


def test_same_seed_same_sequence(encoders, tmp_path):
    runs = []
    for _ in range(2):
        study = optuna.create_study(direction="maximize", sampler=make(encoders, tmp_path, kind="llama"))
        study.optimize(objective, n_trials=8)
        runs.append(configs(study))
    assert runs[0] == runs[1]
    other = optuna.create_study(direction="maximize", sampler=make(encoders, tmp_path, kind="llama", seed=1))
    other.optimize(objective, n_trials=8)
    assert configs(other) != runs[0]


def test_mll_training_improves_the_likelihood(encoders, tmp_path):
    sampler = make(encoders, tmp_path, n_startup_trials=10, mll_steps=60)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=11)
    fit = sampler.last_fit
    assert not fit.warm and fit.steps == 60
    assert fit.mll_after > fit.mll_before + 0.1
    psi = sampler.surrogate.text.psi
    assert not torch.allclose(psi, sampler.encoder.mean_token_embedding())  # ψ was trained too


def test_closed_form_log_ei_matches_botorch(encoders, tmp_path):
    from botorch.acquisition import LogExpectedImprovement

    sampler = make(encoders, tmp_path)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=6)
    gp, text = sampler.surrogate.gp, sampler.surrogate.text
    observed = [SPACE.pool_index(t.params) for t in study.trials]
    y = torch.tensor([t.value for t in study.trials], dtype=torch.float64)
    y = (y - y.mean()) / y.std()
    with torch.no_grad():
        gp.eval()
        text.projection.eval()
        z = text.features(text.embeddings(observed))
        candidates = text.features(text.base[:20])
        ours = log_ei_scorer(gp, z, y, 0.5)(candidates)
        gp.set_train_data(z, y, strict=False)
        reference = LogExpectedImprovement(gp, best_f=0.5)(candidates[:, None, :])
    assert torch.allclose(ours, reference, atol=1e-6)


def test_cache_hit_skips_the_encoder(encoders, tmp_path):
    first = make(encoders, tmp_path).prepare()
    assert first.encoder.calls > 0
    again = make(encoders, tmp_path).prepare()
    assert again.encoder.calls == 0
    assert torch.equal(again.surrogate.text.base, first.surrogate.text.base)
    other_template = make(encoders, tmp_path, template="plain").prepare()
    assert other_template.encoder.calls > 0  # a different text is a different cache entry
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_minimize_failures_and_ablation_switches(encoders, tmp_path):
    def flaky(trial):
        config = SPACE.suggest(trial)
        if config["learning_rate"] == 1e-3:
            raise RuntimeError("diverged")
        return -score(config)

    for options in ({}, {"use_projection": False, "use_learnable_token": False, "template": "plain"},
                    {"use_learnable_token": False}, {"kind": "llama", "shortlist_k": 4}):
        study = optuna.create_study(direction="minimize", sampler=make(encoders, tmp_path, **options))
        study.enqueue_trial({"rank": 4, "alpha_ratio": 1.0, "learning_rate": 1e-3, "dropout": 0.0})
        study.optimize(flaky, n_trials=10, catch=(RuntimeError,))
        assert len(set(configs(study))) == 10
        assert any(t.state == TrialState.FAIL for t in study.trials)


def test_parameters_outside_the_space_are_sampled_at_random(encoders, tmp_path):
    study = optuna.create_study(direction="maximize", sampler=make(encoders, tmp_path))
    study.optimize(lambda t: objective(t) + 0 * t.suggest_float("extra", 0, 1), n_trials=5)
    assert all(0 <= t.params["extra"] <= 1 for t in study.trials)


def test_real_minilm_on_lora_small(tmp_path):
    space = load_space("lora-small")

    def lora(trial):
        c = space.suggest(trial)
        step = math.log10(c["learning_rate"] * c["alpha_ratio"] * math.sqrt(16 / c["batch_size"]))
        return -((step + 2.7) ** 2) - 0.02 * abs(math.log2(c["rank"]) - 4) - c["dropout"]

    sampler = LanguageBOSampler(space, seed=0, n_startup_trials=4, cache_dir=tmp_path / "cache")
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(lora, n_trials=9)
    params = [tuple(t.params.values()) for t in study.trials]
    assert len(set(params)) == 9
    assert sampler.encoder.name == default_encoder_path() and not sampler.encoder.causal
    assert sampler.last_timings["total_s"] < 30


def test_a_loaded_encoder_is_used_as_given_and_the_model_stays_on_the_cpu(encoders, tmp_path):
    encoder = FrozenEncoder.load(encoders["llama"])
    given, by_path = make(encoders, tmp_path, kind="llama", encoder=encoder), make(encoders, tmp_path, kind="llama")
    runs = []
    for sampler in (given, by_path):
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(objective, n_trials=6)
        runs.append(configs(study))
    assert runs[0] == runs[1] and given.encoder is encoder
    text = given.surrogate.text
    assert given.text_pool.device == text.device == text.base.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_cuda_encoder_the_pool_projection_and_gp_live_on_it(encoders, tmp_path):
    sampler = make(encoders, tmp_path, kind="llama", device="cuda")
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=8)
    surrogate = sampler.surrogate
    assert surrogate.text.base.device.type == "cuda" and surrogate.text.psi.device.type == "cuda"
    assert {p.device.type for p in [*surrogate.gp.parameters(), *surrogate.text.projection.parameters()]} == {"cuda"}
    assert len(set(configs(study))) == 8 and "rank_pool_s" in sampler.last_timings
