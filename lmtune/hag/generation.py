"""Two-stage generation: a HAG model folder chooses each input's decoding (stage 1), then answers with it.

A HAG model folder (written by ``lmtune hag train``) holds ``hag.json`` (the base model, the learner kind, the
stage-1 instruction, the decoding space that bounds emitted values, the global config and, for the ``head`` and
``neighbours`` learners, their candidates and guard) and either ``adapter/`` (a LoRA adapter: the model, prompted
with the instruction, emits ``t=.. p=.. k=.. r=..``) or the predictor's tensors (``lmtune.hag.head``: each
candidate config's predicted margin over the global config; the input keeps the global config unless the best
margin passes the guard, ``lmtune.hag.guard``).

``TwoStageGenerator`` is a ``Generator`` like any other, so ``lmtune serve --model FOLDER`` serves it on the
OpenAI-compatible API. Fields a request sets itself (say ``temperature``) win over the chosen ones. Every
answer reports, in ``Generation.hyperparameters`` (a field of each choice on the server): the values used, the
learner, whether the stage-1 reply was read as is, repaired or replaced by the fallback (adapter), or whether the
predictor's choice was used or the guard kept the global config (head, neighbours), and stage 1's tokens and
seconds. Stage-1 tokens are not added to the usage block, which bills the answer as any model would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from lmtune.errors import InputError
from lmtune.hag.head import PREDICTOR_FILES
from lmtune.hag.space import PARAMS, Decoding, DecodingSpace
from lmtune.llm.generation import ExtraCallHook, Generation, GenerationError, GenerationRequest, Generator

HAG_FILE = "hag.json"
#: Tokens a stage-1 reply may take; ``t=0.75 p=0.95 k=32 r=1.35`` is 25 characters.
STAGE1_MAX_TOKENS = 48


@dataclass(frozen=True)
class Choice:
    """The config chosen for one input, how it was read, and what stage 1 cost; for a predictor, its predicted
    gain over the global config and the config it would use without the guard (its best candidate when the gain is
    above 0)."""

    config: Decoding
    status: str  # ok, filled, clamped, fallback (adapter); chosen, global (head, neighbours: the guard's verdict)
    reply: str
    prompt_tokens: int
    completion_tokens: int
    gain: float | None = None
    unguarded: Decoding | None = None


def is_hag_model(path: str | Path) -> bool:
    return (Path(path) / HAG_FILE).is_file()


def read_meta(directory: Path, field: str = "model") -> dict:
    """``hag.json`` of a HAG model folder, checked; ``InputError(field, ...)`` names what is wrong."""
    path = Path(directory) / HAG_FILE
    if not path.is_file():
        raise InputError(field, f"{directory} is not a HAG model folder (no {HAG_FILE}); make one with "
                         "lmtune hag train")
    try:
        meta = json.loads(path.read_text())
        kind = meta["learner"]
        DecodingSpace.from_dict(meta["space"])
        Decoding.from_dict(meta["fallback"])
        for candidate in meta["predictor"]["candidates"] if kind in PREDICTOR_FILES else []:
            Decoding.from_dict(candidate)
        if kind in PREDICTOR_FILES and meta["guard"]["margin"] is not None:
            float(meta["guard"]["margin"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(field, f"{path} is not a valid {HAG_FILE}: {exc!r}") from None
    files = {"adapter": "adapter/adapter_config.json", **PREDICTOR_FILES}
    if kind not in files:
        raise InputError(field, f"{path}: learner must be {', '.join(files)}, got {kind!r}")
    weights = Path(directory) / files[kind]
    if not weights.is_file():
        raise InputError(field, f"{directory} has no {kind} ({weights.relative_to(directory)} is missing)")
    return meta


class HagModel:
    """Stage 1 of a HAG model folder: ``choose(prompts)`` gives each prompt its decoding config."""

    def __init__(self, directory: str | Path, device: str = "cpu", field: str = "model"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lmtune.llm import resolve_model

        self.directory = Path(directory)
        meta = read_meta(self.directory, field)
        self.kind = meta["learner"]
        self.base_model = resolve_model(meta["base_model"])
        self.instruction = meta["instruction"]
        self.space = DecodingSpace.from_dict(meta["space"])
        self.fallback = Decoding.from_dict(meta["fallback"])
        self.device = device
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.base_model)
            model = AutoModelForCausalLM.from_pretrained(self.base_model)
        except OSError as exc:
            raise InputError(field, f"cannot load the base model {self.base_model}: {exc}"[:300]) from None
        if self.kind == "adapter":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(self.directory / "adapter")).merge_and_unload()
        else:
            from lmtune.hag.head import load_predictor

            self.predictor, self.candidates = load_predictor(self.directory, meta, device)
            self.pooling, self.margin = meta["predictor"]["pooling"], meta["guard"]["margin"]
        self.model = model.to(device).eval()
        self._torch = torch

    def choose(self, prompts: list[str], batch_size: int = 64) -> list[Choice]:
        """One config per prompt (stage 1), in batches."""
        choices: list[Choice] = []
        with self._lock, self._torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start:start + batch_size]
                choices += self._adapter(batch) if self.kind == "adapter" else self._predict(batch)
        self.counts.update(c.status for c in choices)
        return choices

    def _adapter(self, prompts: list[str]) -> list[Choice]:
        texts = [self.instruction.format(input=p) for p in prompts]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        batch, mask = _left_pad(ids, self.tokenizer.pad_token_id or 0, self.device)
        out = self.model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=STAGE1_MAX_TOKENS,
                                  do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.tokenizer.eos_token_id)
        choices = []
        eos = self.tokenizer.eos_token_id
        for prompt_ids, generated in zip(ids, out[:, batch.shape[1]:].tolist(), strict=True):
            if eos in generated:
                generated = generated[:generated.index(eos) + 1]
            reply = self.tokenizer.decode(generated, skip_special_tokens=True)
            parsed = self.space.parse(reply, self.fallback)
            choices.append(Choice(parsed.config, parsed.status, reply, len(prompt_ids), len(generated)))
        return choices

    def _predict(self, prompts: list[str]) -> list[Choice]:
        """The best candidate by predicted margin; the global config unless that margin passes the guard."""
        from lmtune.hag.head import hidden_features

        features, lengths = hidden_features(self.model, self.tokenizer, prompts, self.pooling, self.device)
        values, picks = self.predictor(features).max(-1)
        choices = []
        for gain, k, n in zip(values.tolist(), picks.tolist(), lengths, strict=True):
            unguarded = self.candidates[k] if gain > 0 else self.fallback
            used = self.margin is not None and gain > self.margin
            config = self.candidates[k] if used else self.fallback
            choices.append(Choice(config, "chosen" if used else "global", config.text(), n, 0, gain, unguarded))
        return choices


def _left_pad(sequences: list[list[int]], pad: int, device):
    import torch

    width = max(map(len, sequences))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
    return ids, mask


class TwoStageGenerator(Generator):
    """A HAG model folder as a generator: stage 1 chooses the decoding, the base model answers with it."""

    def __init__(self, directory: str | Path, *, device: str = "cpu", name: str | None = None):
        from lmtune.llm.local import LocalGenerator

        self.hag = HagModel(directory, device=device)
        self.base = LocalGenerator(self.hag.base_model, device=device)
        self.name = name or Path(directory).resolve().name
        self.backend_id = f"hag:{Path(directory).resolve()}"

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return self.base.count_prompt_tokens(request)

    async def generate(self, request: GenerationRequest, *, before_extra_call: ExtraCallHook | None = None
                       ) -> Generation:
        if request.model != self.name:
            raise GenerationError(f"this backend serves {self.name!r}, not {request.model!r}")
        started = time.perf_counter()
        choice = (await asyncio.to_thread(self.hag.choose, [request.text()]))[0]
        seconds = time.perf_counter() - started
        overridden = [name for name in PARAMS if getattr(request, name) is not None]
        used = {name: getattr(request, name) if name in overridden else getattr(choice.config, name)
                for name in PARAMS}
        generation = await self.base.generate(replace(request, model=self.base.name, **used))
        generation.hyperparameters = {
            **used, "learner": self.hag.kind, "status": choice.status, "overridden": overridden,
            "stage1": {"reply": choice.reply, "prompt_tokens": choice.prompt_tokens,
                       "completion_tokens": choice.completion_tokens, "seconds": round(seconds, 6)}}
        return generation

    def answer(self, prompt: str, *, n: int = 1, max_tokens: int = 16, seed: int | None = None) -> Generation:
        """Both stages for one prompt, in this thread (for scripts and notebooks)."""
        return asyncio.run(self.generate(GenerationRequest(model=self.name, prompt=prompt, n=n,
                                                           max_tokens=max_tokens, seed=seed)))
