"""LanguageBOSampler inside ``transformers.Trainer.hyperparameter_search(backend="optuna")``.

Transformers passes extra keyword arguments of ``hyperparameter_search`` to
``optuna.create_study`` (``run_hp_search_optuna``), so ``sampler=`` (and ``storage=`` /
``study_name=``, used here to inspect the trials) reach the study unchanged.
"""

import optuna
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    Trainer,
    TrainingArguments,
)

from lmtune.llm import default_encoder_path
from lmtune.samplers import LanguageBOSampler
from lmtune.space import Categorical, SearchSpace

#: Names are TrainingArguments fields, so the Trainer applies the sampled values directly.
SPACE = SearchSpace((
    Categorical("learning_rate", (1e-4, 1e-3, 1e-2)),
    Categorical("per_device_train_batch_size", (4, 8)),
    Categorical("weight_decay", (0.0, 0.1)),
))


class Tiny(torch.utils.data.Dataset):
    """32 sequences of 8 token ids; the label is whether token 5 appears in the sequence."""

    def __init__(self, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 12, (32, 8), generator=generator)
        self.labels = (self.ids == 5).any(1).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def model_init(trial=None):
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32,
                                                    max_position_embeddings=16, num_labels=2))


def test_trainer_hyperparameter_search_with_language_bo(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    encoder = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64)
    BertModel(encoder).save_pretrained(tmp_path / "encoder")
    tokenizer.save_pretrained(tmp_path / "encoder")
    sampler = LanguageBOSampler(SPACE, encoder=tmp_path / "encoder", n_startup_trials=2, mll_steps=20,
                                warm_mll_steps=5, seed=0, cache_dir=tmp_path / "cache")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=1, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(args=args, model_init=model_init, train_dataset=Tiny(0), eval_dataset=Tiny(1))
    storage = f"sqlite:///{tmp_path / 'hp.db'}"

    best = trainer.hyperparameter_search(backend="optuna", sampler=sampler, hp_space=SPACE.suggest, n_trials=4,
                                         direction="minimize", storage=storage, study_name="hp")

    study = optuna.load_study(study_name="hp", storage=storage)
    params = [tuple(t.params[name] for name in SPACE.names) for t in study.trials]
    assert len(params) == 4 and len(set(params)) == 4
    assert all(SPACE.validate(t.params) for t in study.trials)
    assert sampler.last_fit is not None  # trials 3 and 4 came from the model
    assert best.hyperparameters == study.best_trial.params
    assert trainer.args.learning_rate in (1e-4, 1e-3, 1e-2)
