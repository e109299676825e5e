"""One base model per worker: loaded once, a fresh adapter attached for each trial and removed after it.

Loading a model is the fixed cost of a trial (for a 7B base, tens of seconds from disk); every trial of a study
trains the same base with the same seed, so lmtune keeps it. What makes a reused base give the same result as a
fresh build (``tests/finetune/test_reuse.py`` checks the whole trajectory):

* LoRA, rsLoRA and DoRA never write to base weights; removing the adapter (not merged) leaves the base as it was,
  and a classification head, which PEFT trains as a copy (``modules_to_save``), is put back untouched;
* the random state right after loading (after a fresh head was drawn) is saved and restored before each adapter
  is attached, so the adapter's initialization and the run's dropout draws are those of a fresh build.

Where that does not hold the base is rebuilt: PiSSA writes the residual of an SVD into the base weights, so a
PiSSA trial uses the kept base up and the next trial loads a new one; a different seed needs a newly drawn
classification head, so it loads a new base too (unless loading draws no random numbers, as for a causal LM
whose weights all come from the checkpoint: then reseeding is the same as reloading).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmtune._compat import unload_adapter
from lmtune.finetune.device import Precision
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.peft_model import attach_adapter, prepare_base

log = logging.getLogger(__name__)

#: Variants whose adapter initialization rewrites the base weights.
REWRITES_BASE = frozenset({"pissa"})


@dataclass
class _Kept:
    key: tuple
    source: Any  # the model as given: kept alive, so the id in ``key`` cannot be reused by another object
    seed: int
    base: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    rng: dict[str, Any]
    draws_on_load: bool


class ReusableBase:
    """Keeps the last base model built by ``acquire`` and hands it out again while the request is the same.

    ``acquire`` returns a PEFT model with a fresh adapter; give it back with ``release`` when the trial ends
    (also when it fails). While one trial holds the base, a concurrent one (Optuna's ``n_jobs``) gets a model of
    its own, built as without reuse. ``loads`` counts the bases kept (tests read it). ``encoded`` keeps the
    tokenized rows too: every trial of a study trains and evaluates the same rows.
    """

    def __init__(self):
        self._kept: _Kept | None = None
        self._lent: PeftModel | None = None
        self._consumed = False
        self._busy = False
        self._lock = threading.Lock()
        self._encoded: dict[tuple, tuple[list[dict], list]] = {}
        self.loads = 0

    def __getstate__(self) -> dict[str, Any]:
        """Pickles empty: a base model does not travel with its objective."""
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def encoded(self, rows: list[dict], run) -> list:
        """``run.encode(rows)``, computed once per list of rows, tokenizer, length and loss tokens."""
        key = (id(rows), len(rows), id(run.tokenizer), run.task, run.settings.max_length, run.settings.loss_on)
        if key not in self._encoded or self._encoded[key][0] is not rows:
            self._encoded[key] = (rows, run.encode(rows))
        return self._encoded[key][1]

    def acquire(self, model: str | PreTrainedModel | None, hp: LoraHyperparams, *, task: str,
                tokenizer: PreTrainedTokenizerBase | None, num_labels: int | None, target_modules: list[str] | None,
                seed: int, device: torch.device, precision: Precision, quantize: str = "none",
                gradient_checkpointing: bool = False) -> tuple[PeftModel, PreTrainedTokenizerBase]:
        options = dict(task=task, tokenizer=tokenizer, num_labels=num_labels, seed=seed, device=device,
                       precision=precision, quantize=quantize, gradient_checkpointing=gradient_checkpointing)
        with self._lock:
            busy, self._busy = self._busy, True
        if busy:  # another thread's trial holds the kept base
            base, tokenizer = prepare_base(model, **options)
            return attach_adapter(base, hp, task=task, target_modules=target_modules), tokenizer
        try:
            return self._acquire(model, hp, target_modules=target_modules, **options)
        except BaseException:
            self._busy = False
            raise

    def _acquire(self, model, hp: LoraHyperparams, *, task: str, tokenizer, num_labels: int | None,
                 target_modules: list[str] | None, seed: int, device: torch.device, precision: Precision,
                 quantize: str, gradient_checkpointing: bool) -> tuple[PeftModel, PreTrainedTokenizerBase]:
        key = (model if isinstance(model, str | None) else id(model), id(tokenizer), task, num_labels, str(device),
               precision.base_dtype, quantize, gradient_checkpointing)
        kept = self._kept
        if kept is not None and (kept.key != key or (kept.seed != seed and kept.draws_on_load)):
            self.clear()
            kept = None
        if kept is None:
            torch.manual_seed(seed)
            before = _rng_state(device)
            base, tokenizer = prepare_base(model, task=task, tokenizer=tokenizer, num_labels=num_labels, seed=seed,
                                           device=device, precision=precision, quantize=quantize,
                                           gradient_checkpointing=gradient_checkpointing)
            after = _rng_state(device)
            kept = self._kept = _Kept(key, model, seed, base, tokenizer, after,
                                      draws_on_load=not _same(before, after))
            self.loads += 1
        elif kept.seed != seed:  # loading drew nothing: a new seed is a reseed
            torch.manual_seed(seed)
            kept.rng, kept.seed = _rng_state(device), seed
        torch.manual_seed(seed)
        _set_rng_state(kept.rng, device)
        self._consumed = hp.variant in REWRITES_BASE
        if self._consumed:  # PiSSA rewrites this base; nobody gets it after this trial
            self._kept = None
        try:
            self._lent = attach_adapter(kept.base, hp, task=task, target_modules=target_modules)
        except BaseException:  # PEFT may have injected some layers before it failed: start afresh next time
            self._consumed = False
            self.clear()
            raise
        return self._lent, kept.tokenizer

    def release(self, peft_model: PeftModel) -> None:
        """Take the model back after a run: remove its adapter, or drop a base that PiSSA rewrote. A model built
        for a concurrent trial is not kept: nothing to do."""
        if peft_model is not self._lent:
            return
        try:
            self._lent = None
            if self._consumed:
                self._consumed = False
                return
            base = unload_adapter(peft_model)
            if self._kept is None or base is not self._kept.base:
                self._kept = None
                raise RuntimeError("removing the adapter did not give the kept base back")
        finally:
            self._busy = False

    def clear(self) -> None:
        """Drop the kept base (frees its memory once no run holds it)."""
        self._kept = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
