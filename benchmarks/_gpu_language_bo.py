"""Language-BO on a GPU, the second measurement of ``benchmarks/gpu.py``: ``LanguageBOSampler`` with a 7B-shaped
encoder of random weights (bfloat16) on the device, its one-time pool pass, then the time of each model-based
suggestion and its stages."""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time

import numpy as np
import optuna
import torch
from _gpu_timing import sync
from transformers import AutoModel, AutoTokenizer, PretrainedConfig

from lmtune.llm import default_encoder_path


def language_bo(device: torch.device, shape: str, config: PretrainedConfig, pool: str, suggestions: int,
                batch_size: int, mll_steps: int = 100) -> dict:
    """The pool pass and the model-based suggestions of ``LanguageBOSampler`` with a random encoder of ``config``
    (named ``shape``)."""
    from lmtune.samplers import LanguageBOSampler
    from lmtune.samplers.language_bo.encoder import FrozenEncoder
    from lmtune.space import load_space

    space = load_space(pool)
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=torch.bfloat16)
    sync(device)
    built = time.perf_counter() - started
    encoder = FrozenEncoder(model, tokenizer, name=f"qwen2-{shape}-shaped (random)",
                            identity=json.dumps({"random": shape, "seed": 0}), causal=True)
    with tempfile.TemporaryDirectory() as cache:
        sampler = LanguageBOSampler(space, encoder=encoder, n_startup_trials=5, seed=0, cache_dir=cache,
                                    batch_size=batch_size, mll_steps=mll_steps)
        sampler.prepare()
        embed = sampler.last_timings["embed_pool_s"]
        study = optuna.create_study(direction="maximize", sampler=sampler)
        times, stages = [], []
        for number in range(5 + suggestions):
            sync(device)
            began = time.perf_counter()
            trial = study.ask()
            config = space.suggest(trial)
            sync(device)
            if number >= 5:
                times.append(time.perf_counter() - began)
                stages.append(dict(sampler.last_timings))
            study.tell(trial, score(config, number))
    del sampler, encoder, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    median = {key: statistics.median(s.get(key, 0.0) for s in stages) for key in ("fit_s", "rank_pool_s", "exact_s")}
    return {"encoder": shape, "pool": pool, "pool_size": space.pool_size, "mll_steps": mll_steps,
            "batch_size": batch_size, "build_s": built, "embed_pool_s": embed,
            "suggestion_s": times, "median_s": statistics.median(times), "max_s": max(times),
            "first_s": times[0], **{f"median_{k}": v for k, v in median.items()}}


def score(config: dict, number: int) -> float:
    """A smooth synthetic objective (the best effective step size is 1e-3), with seeded noise."""
    u = math.log10(config["learning_rate"] * config["alpha_ratio"] / math.sqrt(config["batch_size"] / 16))
    return math.exp(-((u + 3) / 0.45) ** 2) + np.random.default_rng(number).normal(0, 0.01)


def language_bo_lines(lbo: dict) -> list[str]:
    """The Markdown of ``language_bo``'s numbers: what ran, then a table."""
    return [f"Language-BO, `LanguageBOSampler` (pool pass batch {lbo['batch_size']}), {lbo['pool']} pool "
            f"({lbo['pool_size']:,} configs), Qwen2-{lbo['encoder']}-shaped encoder (random weights, bfloat16) "
            "on the device; 5 random trials, "
            f"then {len(lbo['suggestion_s'])} model-based suggestions (ask + suggest, device drained):", "",
            "| quantity | value |", "| --- | --- |",
            f"| encoder built on the device | {lbo['build_s']:.1f} s |",
            f"| one-time pool pass | {lbo['embed_pool_s']:.1f} s ({lbo['pool_size'] / lbo['embed_pool_s']:,.0f} "
            "texts/s) |",
            f"| per suggestion: median / max / first ({lbo['mll_steps']} MLL steps) | {lbo['median_s']:.2f} / "
            f"{lbo['max_s']:.2f} / {lbo['first_s']:.2f} s (goal <= 2 s) |",
            f"| median stages: fit / rank pool / exact shortlist | {lbo['median_fit_s']:.2f} / "
            f"{lbo['median_rank_pool_s']:.3f} / {lbo['median_exact_s']:.2f} s |"]
