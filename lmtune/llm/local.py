"""Sampling from a local Hugging Face causal LM, billed like an API: prompt tokens per call, completion tokens
up to and including the end token or the stop string.

Generation runs in a worker thread (one at a time: one model, one set of weights), so the tuner's event loop
stays free; ``seed`` makes each request reproducible.
"""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

from lmtune._compat import output_cache, with_cache
from lmtune.errors import InputError
from lmtune.llm import constrained
from lmtune.llm.generation import ExtraCallHook, Generation, GenerationError, GenerationRequest, Generator

#: Requests decoded together at most (each sampled request adds n rows).
MAX_BATCH_REQUESTS = 64


class LocalGenerator(Generator):
    """A causal LM from a folder or alias (``arith-lm``) on CPU or a given device."""

    def __init__(self, model: str, *, device: str = "cpu", name: str | None = None):
        from lmtune.llm import resolve_model

        self.path = resolve_model(model)
        if not Path(self.path).is_dir():
            raise InputError("local_model", f"{model!r} is not a model folder (or the alias arith-lm or agent-lm)")
        self.name = name or (model if model in ("arith-lm", "agent-lm") else Path(self.path).name)
        self.backend_id = f"local:{Path(self.path).resolve()}"
        self.device = device
        self._lock = threading.Lock()
        self._pending: list = []
        self._drainer = None
        self._grammars: constrained.Grammars | None = None
        self._stopping = threading.Event()
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModelForCausalLM.from_pretrained(self.path).to(device).eval()
        except Exception as exc:  # a folder that is not a causal LM
            raise InputError("local_model", f"cannot load {self.path} as a causal LM: {exc}"[:300]) from None

    # -- token counting -------------------------------------------------------------------------

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None and getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": role, "content": content} for role, content in request.messages]
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 returns a BatchEncoding
        # Without a chat template the messages' contents, joined by newlines, are the prompt.
        return self.tokenizer(request.text())["input_ids"]

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self._prompt_ids(request))

    @property
    def grammars(self) -> constrained.Grammars:
        """Grammars for ``response_format`` requests (schema-constrained decoding, ``lmtune.llm.constrained``)."""
        if self._grammars is None:
            self._grammars = constrained.Grammars(self.tokenizer)
        return self._grammars

    def _constraint(self, request: GenerationRequest) -> constrained.Constraint | None:
        if request.response_format is None:
            return None
        try:
            return self.grammars.constraint(request.response_format)
        except constrained.GrammarError as exc:
            raise GenerationError(str(exc)) from None

    def interrupt(self) -> None:
        """Stop decoding at the next token, for good: every running and later batch raises ``GenerationError``
        (``lmtune serve`` on SIGTERM, which must not wait for long generations to finish)."""
        self._stopping.set()

    # -- generation -----------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest, *, before_extra_call: ExtraCallHook | None = None
                       ) -> Generation:
        """Queue the request; requests made concurrently are decoded together in one batch."""
        if request.model != self.name:
            raise GenerationError(f"this backend serves {self.name!r}, not {request.model!r}")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let every request made in the same tick join the batch
            batch, self._pending = self._pending[:MAX_BATCH_REQUESTS], self._pending[MAX_BATCH_REQUESTS:]
            try:
                results = await asyncio.to_thread(self.generate_batch, [request for request, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, GenerationError) else GenerationError(str(exc)))
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def generate_blocking(self, request: GenerationRequest) -> Generation:
        """Sample in this thread, outside the batching queue (for scripts and tests)."""
        if request.model != self.name:
            raise GenerationError(f"this backend serves {self.name!r}, not {request.model!r}")
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Decode all requests' samples as one left-padded batch with a KV cache.

        Each sample draws its uniforms from its own ``random.Random(f"{seed}:{index}")``, so a request's
        samples use the same random numbers whatever else is in the batch (the padding a batch needs can
        still move the logits in the last bits). Greedy requests decode once and repeat n times.
        """
        import torch

        rows = []  # (request index, prompt ids, temperature or 0, top_p, max_tokens, rng, constraint or None,
        #          top_k, repetition penalty)
        prompt_lengths = []
        for index, request in enumerate(requests):
            ids = self._prompt_ids(request)
            prompt_lengths.append(len(ids))
            greedy = request.temperature == 0 or (request.temperature is None and request.top_p == 0)
            temperature = 0.0 if greedy else (request.temperature if request.temperature is not None else 1.0)
            top_p = request.top_p if request.top_p is not None else 1.0
            seed = request.seed if request.seed is not None else 0
            for sample in range(1 if greedy else request.n):
                rows.append((index, ids, temperature, top_p, request.max_tokens, random.Random(f"{seed}:{sample}"),
                             self._constraint(request), request.top_k or 0, request.repetition_penalty or 1.0))
        with self._lock, torch.no_grad():
            try:
                tokens = self._decode(rows)
            except GenerationError:
                raise
            except Exception as exc:
                raise GenerationError(f"generation failed: {exc}"[:300]) from exc
        eos = self.tokenizer.eos_token_id
        results = []
        for index, request in enumerate(requests):
            finished = [self._finish(t, eos, request.stop) for row, t in zip(rows, tokens, strict=True)
                        if row[0] == index]
            if len(finished) == 1 and request.n > 1:  # greedy: an API would bill all n identical answers
                finished = finished * request.n
            results.append(Generation(texts=[f[0] for f in finished], prompt_tokens=prompt_lengths[index],
                                      completion_tokens=sum(f[1] for f in finished),
                                      finish_reasons=[f[2] for f in finished]))
        return results

    def _decode(self, rows) -> list[list[int]]:
        import torch

        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos or 0)
        width = max(len(r[1]) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r[1])) + r[1] for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r[1])) + [1] * len(r[1]) for r in rows], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        temperature = torch.tensor([r[2] for r in rows], device=self.device)
        top_p = torch.tensor([r[3] for r in rows], device=self.device)
        limits = torch.tensor([r[4] for r in rows], device=self.device)
        greedy = temperature == 0
        top_k = torch.tensor([r[7] for r in rows], device=self.device)
        penalty = torch.tensor([r[8] for r in rows], device=self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        past, logits, position = output_cache(out), out.logits[:, -1, :].float(), positions[:, -1] + 1
        seen = _seen(ids, mask, logits.shape[-1]) if bool((penalty != 1).any()) else None
        done = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        generated: list[list[int]] = [[] for _ in rows]
        constraints = [r[6] for r in rows]
        for step in range(int(limits.max())):
            if self._stopping.is_set():
                raise GenerationError("interrupted: the model is being shut down")
            uniforms = torch.tensor([r[5].random() for r in rows], device=self.device)
            if seen is not None:
                logits = _penalize(logits, seen, penalty)
            done |= constrained.mask_logits(logits, constraints, done)  # a failed grammar ends its row here
            if bool(done.all()):
                break
            token = torch.where(greedy, logits.argmax(-1), _sample(logits, temperature, top_p, uniforms,
                                                                   top_k if bool(top_k.any()) else None))
            if seen is not None:
                seen[torch.arange(len(rows), device=self.device), token] = True
            chosen = token.tolist()  # one copy per step, not one device sync per row
            for i in (~done).nonzero().flatten().tolist():
                generated[i].append(chosen[i])
            constrained.consume(token, constraints, done)
            done |= (token == eos) | (step + 1 >= limits)
            if bool(done.all()):
                break
            token = torch.where(done, torch.full_like(token, pad), token)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model(input_ids=token[:, None], attention_mask=mask, position_ids=position[:, None],
                             use_cache=True, **with_cache(self.model, past))
            past, logits, position = output_cache(out), out.logits[:, -1, :].float(), position + 1
        return generated

    def _finish(self, tokens: list[int], eos: int | None, stop: tuple[str, ...] | None) -> tuple[str, int, str]:
        """Text, billed tokens and finish reason of one sample: cut at the end token or the first stop string."""
        reason = "length"
        if eos is not None and eos in tokens:
            tokens = tokens[:tokens.index(eos) + 1]
            reason = "stop"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if stop:
            hits = [(text.find(s), s) for s in stop if s and s in text]
            if hits:
                at, s = min(hits)
                for k in range(1, len(tokens) + 1):  # the fewest tokens whose text reaches past the stop string
                    if len(self.tokenizer.decode(tokens[:k], skip_special_tokens=True)) >= at + len(s):
                        return text[:at], k, "stop"
        return text, len(tokens), reason


def _seen(ids, mask, vocab: int):
    """(rows, vocab) booleans: which tokens each row's prompt holds (padding left out)."""
    import torch

    counts = torch.zeros(ids.shape[0], vocab, device=ids.device).scatter_add_(1, ids, mask.float())
    return counts > 0


def _penalize(logits, seen, penalty):
    """The repetition penalty of "CTRL: A Conditional Transformer Language Model for Controllable Generation"
    (arXiv:1909.05858), as transformers and vLLM apply it: a token already in the prompt or the output has its
    logit divided by the penalty when positive and multiplied by it when negative."""
    import torch

    factor = penalty[:, None]
    penalized = torch.where(logits < 0, logits * factor, logits / factor)
    return torch.where(seen, penalized, logits)


def _sample(logits, temperature, top_p, uniforms, top_k=None):
    """One token per row by inverse-CDF sampling from softmax(logits / T), cut to the top-k tokens (0: no cut)
    and then to the top-p nucleus of what is left, in transformers' order."""
    import torch

    scaled = logits / temperature.clamp(min=1e-5)[:, None]
    probs = torch.softmax(scaled, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    if top_k is None:
        before = sorted_probs.cumsum(-1) - sorted_probs
        keep = before < top_p.clamp(min=1e-8)[:, None]
    else:
        rank = torch.arange(sorted_probs.shape[-1], device=sorted_probs.device)[None, :]
        sorted_probs = torch.where((top_k[:, None] == 0) | (rank < top_k[:, None]), sorted_probs,
                                   torch.zeros_like(sorted_probs))
        before = sorted_probs.cumsum(-1) - sorted_probs
        keep = before < (top_p.clamp(min=1e-8) * sorted_probs.sum(-1))[:, None]
    sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    cdf = sorted_probs.cumsum(-1)
    pick = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None].contiguous()).clamp(max=cdf.shape[-1] - 1)
    return order.gather(-1, pick).squeeze(-1)
