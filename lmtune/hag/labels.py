"""``lmtune hag label``: the best decoding config of every input of a split, as a resumable Optuna study.

Each trial labels one chunk of inputs (``search.search_input`` for each, all at once, so that the local model
decodes their requests in shared batches) and stores the labels and what they cost as trial attributes; the
label file (``labels-<split>.jsonl``: a header line, then one line per input) is rewritten atomically after every
trial, and ``label-<split>.json`` (the result, with the generation budget) at the end. Running the same command
again resumes: finished chunks are kept, interrupted ones run again, and the response cache answers every request
already made. Bad input (task, metric, template, model, grids) is reported before the study is opened.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lmtune._compat import queued_params
from lmtune.config import build_config, check_writable_folder, read_user_text
from lmtune.errors import InputError
from lmtune.files import write_atomic
from lmtune.hag.config import HagLabelConfig
from lmtune.hag.search import SearchOutcome, SearchSettings, search_input
from lmtune.hag.space import PARAMS, Decoding, DecodingSpace
from lmtune.hag.task import HagTask, load_hag_task, make_set_metric
from lmtune.llm.cache import CachedGenerator, ResponseStore
from lmtune.llm.generation import BackgroundLoop, Generation, GenerationError, GenerationRequest, Generator
from lmtune.results import Result
from lmtune.runtime.loop import TrialListener, run_trials
from lmtune.runtime.study import open_study
from lmtune.runtime.trials import counted_trials, requeue_interrupted

log = logging.getLogger(__name__)
#: Trial attributes of a label study: the labels of the trial's chunk, and their generation budget.
LABELS, BUDGET = "hag_labels", "hag_budget"
HEADER = "lmtune_hag_labels"


@dataclass
class HagLabelResult(Result):
    """What ``lmtune hag label`` labelled and what it cost (``budget``: requests, responses, tokens, seconds)."""

    study_name: str
    task: str
    split: str
    model: str
    inputs: int
    labelled: int
    failed_chunks: int
    labels_file: str
    mean_label_score: float | None
    budget: dict[str, float]
    label_counts: dict[str, int]


class CountingGenerator:
    """Counts what a cached generator really generated (fresh) and what the cache answered."""

    def __init__(self, inner: CachedGenerator):
        self.inner = inner
        self.counts = dict.fromkeys(("requests", "responses", "prompt_tokens", "completion_tokens",
                                     "cached_requests"), 0)
        self._lock = threading.Lock()

    async def generate(self, request: GenerationRequest) -> Generation:
        generation = await self.inner.generate(request)
        with self._lock:
            if generation.cached:
                self.counts["cached_requests"] += 1
            else:
                self.counts["requests"] += 1
                self.counts["responses"] += len(generation.texts)
                self.counts["prompt_tokens"] += generation.prompt_tokens
                self.counts["completion_tokens"] += generation.completion_tokens
        return generation


def request_seed(salt: str, seed: int, prompt: str, repeat: int) -> int:
    """The seed of repeat ``repeat`` of an input: the same for every config (common random numbers)."""
    return int(hashlib.sha256(f"{salt}:{seed}:{prompt}:{repeat}".encode()).hexdigest()[:8], 16)


def make_scorer(task: HagTask, instance: dict, generator, model: str, salt: str, seed: int):
    """``score(config, repeat)``: the task metric of one seeded request of ``task.n`` responses."""
    prompt = task.prompt(instance)

    async def score(config: Decoding, repeat: int) -> float:
        request = GenerationRequest(model=model, prompt=prompt, n=task.n, max_tokens=task.max_tokens, stop=task.stop,
                                    seed=request_seed(salt, seed, prompt, repeat), **config.request_fields())
        generation = await generator.generate(request)
        return float(task.metric(instance, generation.texts))
    return score


async def mean_scores(task: HagTask, rows: list[dict], configs: list[Decoding], generator, model: str, salt: str,
                      seed: int, repeats: int) -> list[float]:
    """Each input's mean metric over ``repeats`` seeded requests with its config, all sent at once."""
    async def one(row: dict, config: Decoding) -> float:
        score = make_scorer(task, row["instance"], generator, model, salt, seed)
        values = await asyncio.gather(*(score(config, r) for r in range(repeats)))
        return sum(values) / len(values)
    return list(await asyncio.gather(*(one(row, config) for row, config in zip(rows, configs, strict=True))))


def task_of_header(header: dict, instances: list[dict]) -> HagTask:
    """The task a label file's header describes, over the given instances."""
    return HagTask(header["task"], instances, make_set_metric(header["metric"]), header["metric"],
                   template=header["template"], n=header["n"], max_tokens=header["max_tokens"],
                   stop=tuple(header["stop"]) if header["stop"] else None)


def label_task(config: HagLabelConfig | None = None, *, generator: Generator | None = None,
               listener: TrialListener | None = None, **fields: Any) -> HagLabelResult:
    """Label (or resume labelling) one split; ``generator`` replaces the local model ``config.model`` names."""
    cfg = config or build_config(HagLabelConfig, **fields)
    check_writable_folder(cfg.output_dir, "output_dir")
    task = task_of(cfg)
    space = DecodingSpace({name: tuple(getattr(cfg, f"{name}_grid")) for name in PARAMS})
    settings = SearchSettings(coarse_repeats=cfg.coarse_repeats, repeats=max(cfg.repeats, cfg.coarse_repeats),
                              keep=cfg.keep, max_configs=cfg.max_configs, tie_tolerance=cfg.tie_tolerance)
    inputs = task.split((cfg.validation_fraction, cfg.test_fraction), cfg.seed)[cfg.split][:cfg.limit]
    generator = generator or local_generator(cfg.model, cfg.device)
    study_name = cfg.study_name or f"hag-label-{Path(task.name).stem}-{cfg.split}"
    meta = {"task": cfg.task, "metric": task.metric_name, "template": task.template, "n": task.n,
            "max_tokens": task.max_tokens, "stop": list(task.stop) if task.stop else None, "split": cfg.split,
            "task_size": cfg.task_size, "fractions": [cfg.validation_fraction, cfg.test_fraction], "seed": cfg.seed,
            "model": cfg.model, "space": space.to_dict(), "search": settings.__dict__, "inputs": len(inputs),
            "instances_sha256": hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()}
    chunks = [inputs[i:i + cfg.chunk_size] for i in range(0, len(inputs), cfg.chunk_size)]
    study = open_study(study_name, storage=cfg.storage, sampler=optuna.samplers.RandomSampler(seed=cfg.seed),
                       direction="maximize", attrs={HEADER: meta})
    requeue_interrupted(study)
    pending = _pending(study, len(chunks))
    total = len(counted_trials(study)) + len(pending)
    loop = BackgroundLoop()
    cache = None if cfg.cache == "none" else ResponseStore(cfg.cache or cfg.output_dir / "responses.sqlite")
    cached = CachedGenerator(generator, cache)
    output = cfg.output_dir / f"labels-{cfg.split}.jsonl"

    def objective(trial: optuna.Trial) -> float:
        chunk = trial.suggest_int("chunk", 0, len(chunks) - 1)
        counter = CountingGenerator(cached)
        started = time.perf_counter()
        offset = chunk * cfg.chunk_size

        async def all_inputs() -> list[SearchOutcome]:
            return await asyncio.gather(*(search_input(space, make_scorer(task, row, counter, generator.name,
                                                                          "label", cfg.seed), settings)
                                          for row in chunks[chunk]))
        outcomes = loop.run(all_inputs())
        trial.set_user_attr(LABELS, [_record(offset + i, task, row, outcome)
                                     for i, (row, outcome) in enumerate(zip(chunks[chunk], outcomes, strict=True))])
        trial.set_user_attr(BUDGET, {**counter.counts, "seconds": time.perf_counter() - started})
        return sum(o.score for o in outcomes) / len(outcomes)

    writer = _LabelWriter(listener or TrialListener(), study, meta, output)
    try:
        run_trials(study, objective, total, listener=writer, catch=(GenerationError,))
    finally:
        loop.run(cached.aclose())
        loop.close()
    rows = writer.write()
    result = _result(study, meta, rows, len(chunks), output, study_name)
    write_atomic(cfg.output_dir / f"label-{cfg.split}.json", result.to_json())
    return result


def task_of(cfg) -> HagTask:
    return load_hag_task(cfg.task, metric=cfg.metric, template=cfg.template, size=cfg.task_size, seed=cfg.seed,
                         n=cfg.n, max_tokens=cfg.max_tokens)


def local_generator(model: str, device: str) -> Generator:
    from lmtune.llm import check_device
    from lmtune.llm.local import LocalGenerator

    check_device(device)
    try:
        return LocalGenerator(model, device=device)
    except InputError as exc:
        raise InputError("model", exc.message) from None


def _pending(study: optuna.Study, chunks: int) -> list[int]:
    """Chunks without a finished label; those not queued yet are queued now."""
    trials = study.get_trials(deepcopy=False)
    done = {t.params["chunk"] for t in trials if t.state == TrialState.COMPLETE}
    queued = {t.params.get("chunk", (queued_params(t) or {}).get("chunk"))
              for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    pending = [c for c in range(chunks) if c not in done]
    for chunk in pending:
        if chunk not in queued:
            study.enqueue_trial({"chunk": chunk}, skip_if_exists=False)
    return pending


def _record(index: int, task: HagTask, instance: dict, outcome: SearchOutcome) -> dict:
    return {"index": index, "prompt": task.prompt(instance), "instance": instance, "label": outcome.label.as_dict(),
            "text": outcome.label.text(), "score": outcome.score, "requests": outcome.requests,
            "dominated": len(outcome.dominated), "refinement_steps": outcome.refinement_steps,
            "scores": [[c.as_dict(), values] for c, values in outcome.scores.items()]}


class _LabelWriter(TrialListener):
    """Passes the loop's events on and rewrites the label file after every finished trial."""

    def __init__(self, inner: TrialListener, study: optuna.Study, meta: dict, path: Path):
        self.inner, self.study, self.meta, self.path = inner, study, meta, path

    def study_opened(self, study, total):
        self.inner.study_opened(study, total)

    def trial_started(self, trial):
        self.inner.trial_started(trial)

    def step(self, step, total):
        self.inner.step(step, total)

    def waiting(self, state):
        self.inner.waiting(state)

    def trial_done(self, study, trial):
        self.write()
        self.inner.trial_done(study, trial)

    def write(self) -> list[dict]:
        rows = sorted((row for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                       for row in t.user_attrs.get(LABELS, [])), key=lambda r: r["index"])
        lines = [json.dumps({HEADER: self.meta})] + [json.dumps(row) for row in rows]
        write_atomic(self.path, "\n".join(lines) + "\n")
        return rows


def _result(study, meta, rows, chunks: int, output: Path, study_name: str) -> HagLabelResult:
    trials = study.get_trials(deepcopy=False)
    budget: dict[str, float] = {}
    for t in trials:
        for key, value in t.user_attrs.get(BUDGET, {}).items():
            budget[key] = budget.get(key, 0) + value
    done = {t.params.get("chunk") for t in trials if t.state == TrialState.COMPLETE}
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["text"]] = counts.get(row["text"], 0) + 1
    return HagLabelResult(study_name=study_name, task=meta["task"], split=meta["split"], model=meta["model"],
                          inputs=meta["inputs"], labelled=len(rows), failed_chunks=chunks - len(done),
                          labels_file=str(output),
                          mean_label_score=sum(r["score"] for r in rows) / len(rows) if rows else None,
                          budget=budget, label_counts=dict(sorted(counts.items(), key=lambda kv: -kv[1])[:20]))


def read_labels(path: Path, field: str = "labels") -> tuple[dict, list[dict]]:
    """The header and rows of a label file; ``InputError(field, ...)`` when it is missing, not one, or empty."""
    if not Path(path).is_file():
        raise InputError(field, f"label file {path} does not exist")
    lines = [line for line in read_user_text(path, field).splitlines() if line.strip()]
    try:
        header = json.loads(lines[0])[HEADER] if lines else None
        rows = [json.loads(line) for line in lines[1:]]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(field, f"{path} is not a label file of lmtune hag label") from None
    if header is None:
        raise InputError(field, f"{path} is empty; run lmtune hag label first")
    if not rows:
        raise InputError(field, f"{path} holds no labels yet; run (or finish) lmtune hag label first")
    return header, rows
