"""Overhead of LanguageBOSampler on the full 45,360-config lora-paper pool with MiniLM.

Measures, in one run:

1. the one-time pass: ψ-free embeddings of every domain-template text (shared explanation prefix,
   see ``lmtune.samplers.language_bo.embeddings``), computed into a fresh cache directory, then copied to
   lmtune's cache so later runs hit it; and the same pass without prefix sharing (whole texts), timed on
   ``--sample`` texts and extrapolated;
2. the time per suggestion after that pass, at 10 and 30 observed trials (median over
   ``--repeats`` runs of a study on the synthetic objective, suggestions with 9-11 and 29-31
   observed trials), with its stages (MLL fit, pool ranking, exact shortlist), for ``language-bo``, for
   ``language-bo+`` (registry defaults) and for ``language-bo+`` with a transfer source of 800 observations
   (its memory gate fits one more GP per suggestion), and ``language-bo+``'s one-time preparation with it;
3. peak resident memory of the process after 1-2;
4. the prior system's cost per suggestion (GOLLuM-style: the whole pool re-embedded with ψ at
   every acquisition, and the surrogate rebuilt with 100 MLL steps that re-embed the observed
   texts through the encoder): timed on ``--sample`` texts and 2 MLL steps, extrapolated.

Run: ``HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/language_bo_overhead.py``
"""

from __future__ import annotations

import argparse
import resource
import shlex
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import optuna
import torch
from _docs import write_section
from language_bo_synthetic import SPACE, machine, objective, true_score

from lmtune.samplers import LanguageBOSampler
from lmtune.samplers.language_bo.embeddings import TextPool, cache_root
from lmtune.samplers.language_bo.transfer import source_from_rows
from lmtune.samplers.registry import make_sampler

WINDOWS = {10: (9, 10, 11), 30: (29, 30, 31)}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_time_pass(cached: bool = False) -> tuple[LanguageBOSampler, float, float]:
    """Embed the pool into a fresh directory (a real miss), then seed lmtune's cache with the file; ``cached``:
    read lmtune's cache instead (the pass is then not measured)."""
    if cached:
        started = time.perf_counter()
        sampler = LanguageBOSampler(SPACE).prepare()
        return sampler, sampler.last_timings["embed_pool_s"], time.perf_counter() - started
    with tempfile.TemporaryDirectory() as fresh:
        started = time.perf_counter()
        sampler = LanguageBOSampler(SPACE, cache_dir=fresh).prepare()
        total = time.perf_counter() - started
        for path in Path(fresh).glob("*.npy"):
            cache_root().mkdir(parents=True, exist_ok=True)
            shutil.copy(path, cache_root() / path.name)
    return sampler, sampler.last_timings["embed_pool_s"], total


def whole_text_pass(sampler: LanguageBOSampler, sample: list[int]) -> float:
    """Seconds per text of the one-time pass without prefix sharing (each text encoded whole)."""
    pool = TextPool(sampler.encoder, sampler.text_pool.texts, share_prefix=False)
    pool.embed(sample[:8])  # warm-up
    started = time.perf_counter()
    pool.embed(sample)
    return (time.perf_counter() - started) / len(sample)


def suggestion_times(repeats: int, name: str = "language-bo", **options) -> dict[int, list[dict]]:
    """Per-suggestion wall time and stages, keyed by the number of observed trials, for a registry sampler."""
    out: dict[int, list[dict]] = {n: [] for n in WINDOWS}
    for seed in range(repeats):
        sampler = LanguageBOSampler(SPACE, seed=seed) if name == "language-bo" else make_sampler(name, space=SPACE,
                                                                                                  seed=seed, **options)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        run = objective(seed)
        for number in range(max(WINDOWS[30]) + 1):
            trial = study.ask()
            started = time.perf_counter()
            SPACE.suggest(trial)  # triggers sample_relative
            elapsed = time.perf_counter() - started
            study.tell(trial, run(trial))
            for n, window in WINDOWS.items():
                if number in window:
                    out[n].append({"total": elapsed, **sampler.last_timings})
        print(f"{name} repeat {seed}: best {study.best_value:.4f}", flush=True)
    return out


def related_source():
    """A transfer source of 800 observations: a related synthetic objective on random lora-paper configs."""
    rng = np.random.default_rng(0)
    configs = [SPACE.pool_config(int(i)) for i in rng.choice(SPACE.pool_size, 800, replace=False)]
    rows = [(c, true_score({**SPACE.fixed, **c, "learning_rate": 2 * c["learning_rate"]})) for c in configs]
    return source_from_rows("related", SPACE, "maximize", rows, "LoRA fine-tuning of MiniLM on a related task.")


def transfer_preparation(source) -> float:
    """Seconds of ``language-bo+``'s one-time preparation with ``source``: its GP fit and prediction over the pool
    (measured first in the process, before the source's fit is cached)."""
    sampler = make_sampler("language-bo+", space=SPACE, seed=0, transfer=[source])
    started = time.perf_counter()
    sampler.prepare()
    return time.perf_counter() - started


def reembedding_baseline(sampler: LanguageBOSampler, sample: list[int], observed: int, steps: int) -> tuple:
    """Seconds per suggestion of the prior approach: (pool re-embedding, surrogate rebuilt from scratch)."""
    encoder, texts = sampler.encoder, sampler.text_pool.texts
    psi = encoder.mean_token_embedding()

    def embed(batch: list[str], psi: torch.Tensor) -> torch.Tensor:
        tokens = encoder.tokenizer(batch, return_tensors="pt", padding=True)
        embeds = torch.cat([encoder.embed_ids(tokens["input_ids"]), psi.expand(len(batch), 1, -1)], dim=1)
        mask = torch.cat([tokens["attention_mask"], torch.ones(len(batch), 1, dtype=torch.long)], dim=1)
        states = encoder.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    with torch.inference_mode():
        embed([texts[i] for i in sample[:8]], psi)  # warm-up
        started = time.perf_counter()
        for start in range(0, len(sample), 64):
            embed([texts[i] for i in sample[start:start + 64]], psi)
        pool_s = (time.perf_counter() - started) / len(sample) * len(texts)
    trainable = psi.clone().requires_grad_(True)
    batch = [texts[i] for i in sample[:observed]]
    started = time.perf_counter()
    for _ in range(2):
        embed(batch, trainable).pow(2).sum().backward()  # stands in for -MLL; the GP part is negligible
    fit_s = (time.perf_counter() - started) / 2 * steps
    return pool_s, fit_s


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="studies timed for the per-suggestion medians")
    parser.add_argument("--sample", type=int, default=256, help="texts timed for the extrapolated passes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-docs", action="store_true", help="print only; do not write docs/benchmarks.md")
    parser.add_argument("--cached", action="store_true", help="read the pool's embeddings from lmtune's cache "
                        "instead of timing the one-time pass")
    return parser.parse_args()


def measure(args: argparse.Namespace) -> dict:
    """Every timing the table reports, in one dict."""
    sampler, embed_s, prepare_s = one_time_pass(args.cached)
    pool_size = len(sampler.text_pool)
    print(f"one-time pass: {embed_s:.1f} s embedding ({prepare_s:.1f} s with model load and rendering)", flush=True)
    source = related_source()
    found = {"sampler": sampler, "embed_s": embed_s, "prepare_s": prepare_s, "pool_size": pool_size,
             "source": source, "plus_prepare": transfer_preparation(source),
             "times": suggestion_times(args.repeats), "plus_times": suggestion_times(args.repeats, "language-bo+"),
             "memory_times": suggestion_times(args.repeats, "language-bo+", transfer=[source]), "peak": peak_mb()}
    sample = np.random.default_rng(0).choice(pool_size, args.sample, replace=False).tolist()
    found["whole_s"] = whole_text_pass(sampler, sample) * pool_size
    found["pool_s"], found["fit_s"] = reembedding_baseline(sampler, sample, observed=30, steps=sampler.mll_steps)
    return found


def table_lines(args: argparse.Namespace, m: dict) -> list[str]:
    """The Markdown rows of the overhead table."""
    sampler, times, plus_times, memory_times = m["sampler"], m["times"], m["plus_times"], m["memory_times"]

    def median(n: int, key: str, table: dict | None = None) -> float:
        return float(np.median([t.get(key, 0.0) for t in (table or times)[n]]))

    one_time = ("not measured: read from lmtune's cache (`--cached`)" if args.cached else
                f"{m['embed_s']:.0f} s ({m['prepare_s']:.0f} s incl. model load and rendering)")
    lines = [
        "| quantity | value |",
        "| --- | --- |",
        f"| one-time pass: ψ-free embeddings of {m['pool_size']:,} domain texts, shared prefix | {one_time} |",
        f"| same pass with whole texts, no prefix sharing (extrapolated from {args.sample} texts) | "
        f"{m['whole_s']:.0f} s |",
    ]
    lines += [f"| median time per suggestion, {n} observed ({len(times[n])} suggestions) | "
              f"{median(n, 'total'):.2f} s (fit {median(n, 'fit_s'):.2f}, rank pool {median(n, 'rank_pool_s'):.2f}, "
              f"exact top-{sampler.shortlist_k} {median(n, 'exact_s'):.2f}) |" for n in WINDOWS]
    lines += [f"| language-bo+ (defaults, no transfer): median time per suggestion, {n} observed "
              f"({len(plus_times[n])} suggestions) | {median(n, 'total', plus_times):.2f} s (fit "
              f"{median(n, 'fit_s', plus_times):.2f}, score pool {median(n, 'exact_s', plus_times):.2f}) |"
              for n in WINDOWS]
    lines.append(f"| language-bo+: max time per suggestion, 30 observed | "
                 f"{max(t['total'] for t in plus_times[30]):.2f} s |")
    lines += [f"| language-bo+ with a transfer source of {len(m['source'].values)} results: median time per "
              f"suggestion, {n} observed ({len(memory_times[n])} suggestions) | "
              f"{median(n, 'total', memory_times):.2f} s |" for n in WINDOWS]
    baseline = m["pool_s"] + m["fit_s"]
    return lines + [
        f"| language-bo+ with that source: max time per suggestion, 30 observed | "
        f"{max(t['total'] for t in memory_times[30]):.2f} s |",
        f"| language-bo+: one-time preparation with that source (source GP fit and its prediction over the pool; "
        f"the pool's embeddings cached) | {m['plus_prepare']:.1f} s |",
        f"| max time per suggestion, 30 observed | {max(t['total'] for t in times[30]):.2f} s |",
        f"| peak resident memory (one-time pass + {args.repeats} studies) | {m['peak']:.0f} MB |",
        f"| prior approach per suggestion, 30 observed (extrapolated): re-embed pool with ψ + "
        f"{sampler.mll_steps} MLL steps through the encoder | {baseline:.0f} s ({m['pool_s']:.0f} + "
        f"{m['fit_s']:.0f}) |",
        f"| speed-up at 30 observed | {baseline / median(30, 'total'):.0f}x |",
    ]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    measured = measure(args)
    steps = measured["sampler"].mll_steps
    command = "HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/language_bo_overhead.py " + \
        shlex.join(sys.argv[1:])
    body = (
        "## Language-BO overhead on the full lora-paper pool\n\n"
        f"`{command.strip()}` ({date.today()}; {machine()}; torch threads {torch.get_num_threads()}, "
        "encoder MiniLM-L6 float32, defaults of `LanguageBOSampler`).\n\n" + "\n".join(table_lines(args, measured))
        + "\n\nSuggestion times are wall time of `sample_relative` in studies of the synthetic objective "
        "(`language_bo_synthetic.py`); the first model-based suggestion (a cold fit of "
        f"{steps} steps) is not in these windows. The prior approach is extrapolated: the pool "
        f"re-embedding from {args.sample} random texts (whole text + ψ, full attention, batches of 64), the "
        "fit from 2 forward+backward passes over 30 texts. Timings on a shared machine vary between runs."
    )
    print(body)
    if not args.no_docs:
        write_section("language_bo_overhead", body)


if __name__ == "__main__":
    main()
