"""LENSLLM's NTK term against brute force, and curves measured by fine-tuning tiny models (offline)."""

import numpy as np
import pytest
import scipy.linalg
import torch
from typer.testing import CliRunner

from lmtune.cli import app
from lmtune.errors import InputError
from lmtune.finetune.data import DatasetSplits
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.train import TrainingRun, TrainSettings
from lmtune.selection.curves import load_curves, save_curves
from lmtune.selection.measure import measure_curves
from lmtune.selection.ntk import ntk_term
from lmtune.selection.predictors import PROPOSED


def _brute_force(model, tokenizer, rows, task):
    """Full Jacobian of the per-example losses (torch.autograd.functional over a flat parameter vector)."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])
    run = TrainingRun(model, tokenizer, task, "eval_loss", TrainSettings(exact_match=False))
    encoded = run.encode(rows)
    model.eval()

    def losses(flat):
        values, offset = {}, 0
        for name, p in zip(names, params, strict=True):
            values[name] = flat[offset:offset + p.numel()].reshape(p.shape)
            offset += p.numel()
        out = []
        for example in encoded:
            with torch.nn.utils.stateless._reparametrize_module(model, values):
                loss_sum, n, _ = run.loss_of([example])
            out.append(loss_sum / n)
        return torch.stack(out)

    g = torch.autograd.functional.jacobian(losses, flat0).double().numpy()
    with torch.no_grad():
        r0 = losses(flat0).double().numpy()
    return g @ g.T / len(rows), r0


def test_ntk_term_matches_brute_force_on_a_tiny_classifier(tiny_bert, tokenizer, sentiment_rows):
    rows = sentiment_rows[:3] + sentiment_rows[-3:]
    theta, r0 = _brute_force(tiny_bert, tokenizer, rows, "classification")
    for steps in (0, 50, 2000):
        expected = float(np.sum((scipy.linalg.expm(-0.01 * steps * theta) @ r0) ** 2))
        term = ntk_term(tiny_bert, tokenizer, rows, task="classification", steps=steps)
        assert term.exact
        assert term.trace == pytest.approx(float(np.trace(theta)), rel=1e-4)
        assert term.f == pytest.approx(expected, rel=1e-4)
        assert term.residual_norm2 == pytest.approx(float(r0 @ r0), rel=1e-5)
    assert ntk_term(tiny_bert, tokenizer, rows, task="classification", steps=0).f == pytest.approx(float(r0 @ r0))
    approx = ntk_term(tiny_bert, tokenizer, rows, task="classification", steps=50, exact_limit_bytes=0)
    assert not approx.exact and approx.trace == pytest.approx(float(np.trace(theta)), rel=1e-4)
    assert approx.f == pytest.approx(np.exp(-2 * 0.01 * 50 * approx.trace / len(rows)) * float(r0 @ r0), rel=1e-4)


def test_ntk_term_rejects_empty_batches(tiny_bert, tokenizer):
    with pytest.raises(InputError, match="at least one"):
        ntk_term(tiny_bert, tokenizer, [], task="classification", steps=1)


@pytest.fixture(scope="module")
def tiny_model_dirs(tmp_path_factory):
    """Two tiny BERT classifiers of different widths saved as folders, as a user would pass them."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from lmtune.llm import default_encoder_path

    tok = AutoTokenizer.from_pretrained(default_encoder_path())
    dirs = []
    for i, hidden in enumerate((16, 32)):
        torch.manual_seed(i)
        model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden,
                                                         intermediate_size=2 * hidden, num_hidden_layers=1,
                                                         num_attention_heads=2, num_labels=2))
        path = tmp_path_factory.mktemp(f"tiny{hidden}")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        dirs.append(str(path))
    return dirs


def _splits(rows):
    return DatasetSplits("classification", rows, rows[:6], rows[-6:], ["bad", "good"], "toy")


def test_measure_curves_is_nested_resumable_and_ranks(tiny_model_dirs, tmp_path, sentiment_rows):
    out = tmp_path / "curves.csv"
    splits = _splits(sentiment_rows)
    messages = []
    hp = LoraHyperparams(learning_rate=2e-2, batch_size=4)
    settings = TrainSettings(max_length=16, epochs=3)
    curves, meta = measure_curves(tiny_model_dirs, splits, [0, 4, 8, 16], out, mode="lora", hp=hp,
                                  settings=settings, ntk_examples=4, progress=messages.append)
    assert curves.losses.shape == (2, 4) and np.isfinite(curves.losses).all() and (curves.losses > 0).all()
    assert (np.abs(curves.losses[:, 1:] - curves.losses[:, :1]) > 1e-3).all()  # every subset was trained on
    assert np.isfinite(curves.ntk_f).all() and meta["tokens_per_sample"] > 1
    assert curves.params[0] < curves.params[1]
    stored = load_curves(out)
    assert stored.losses == pytest.approx(curves.losses)
    # the same command again measures nothing and returns the same numbers
    messages.clear()
    again, _ = measure_curves(tiny_model_dirs, splits, [0, 4, 8, 16], out, mode="lora", hp=hp,
                              settings=settings, ntk_examples=4, progress=messages.append)
    assert messages == [] and again.losses == pytest.approx(curves.losses)
    # interrupted after one loss of the second model: the file does not rank yet, but resuming reads it
    partial = load_curves(out)
    partial.losses[1, 2:] = np.nan
    save_curves(partial, out)
    with pytest.raises(InputError, match="two or more"):
        load_curves(out)
    messages.clear()
    resumed, _ = measure_curves(tiny_model_dirs, splits, [0, 4, 8, 16], out, mode="lora", hp=hp,
                                settings=settings, ntk_examples=4, progress=messages.append)
    assert len(messages) == 2 and np.isfinite(resumed.losses).all()
    assert resumed.losses[0] == pytest.approx(curves.losses[0])
    with pytest.raises(InputError, match="different seed"):
        measure_curves(tiny_model_dirs, splits, [0, 4, 8, 16], out, seed=1, hp=hp, settings=settings, ntk_examples=4)


def test_measure_takes_the_arith_lm_alias(tmp_path):
    from lmtune.arithmetic import make_problems

    rows = make_problems(40, op="-", digits=3, min_digits=3, seed=0)
    splits = DatasetSplits("causal", rows[:24], rows[24:32], rows[32:], None, "sub3")
    curves, _ = measure_curves(["arith-lm"], splits, [0, 8, 16], tmp_path / "a.csv", ntk_examples=0,
                               hp=LoraHyperparams(learning_rate=2e-3, batch_size=8),
                               settings=TrainSettings(max_length=16))
    assert curves.names == ["arith-lm"] and np.isfinite(curves.losses).all() and curves.params[0] > 5e5


def test_measure_full_fine_tuning_changes_the_loss(tiny_model_dirs, tmp_path, sentiment_rows):
    curves, _ = measure_curves(tiny_model_dirs[:1] + tiny_model_dirs[1:], _splits(sentiment_rows), [0, 8, 24],
                               tmp_path / "full.csv", mode="full", ntk_examples=0,
                               settings=TrainSettings(max_length=16, epochs=3))
    assert curves.ntk_f is None
    assert (curves.losses[:, 2] != curves.losses[:, 0]).all()


def test_cli_select_from_measured_curves(tiny_model_dirs, tmp_path, sentiment_rows):
    data = tmp_path / "toy.csv"
    data.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in sentiment_rows * 2))
    out = tmp_path / "m.csv"
    result = CliRunner().invoke(app, ["select", "--models", *tiny_model_dirs, "--dataset", str(data),
                                      "--sizes", "0,4,8,16", "--max-length", "16", "--ntk-examples", "2",
                                      "--learning-rate", "0.02", "--batch-size", "4", "--epochs", "2",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Ranking by {PROPOSED}" in result.output and "lensllm" in result.output
    assert out.exists() and (tmp_path / "m-select.png").stat().st_size > 1000


def test_cli_select_and_bench_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("config name,0,200,size\na,3,2,10\n")
    runner = CliRunner()
    for args in (["select", "--curves", str(bad)], ["bench", "select", "--curves", str(bad)],
                 ["select"], ["select", "--models", "x", "--sizes", "a,b"]):
        result = runner.invoke(app, args)
        assert result.exit_code != 0
        assert isinstance(result.exception, InputError) or result.exit_code == 2, (args, result.output)
