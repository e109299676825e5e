"""Memory over many trials in one worker: does a trial give back what it allocated before the next one starts?

One process runs ``--trials`` LoRA trials of different ranks and batch sizes (five configs in turn) through
``LoraObjective`` (the objective ``lmtune lora`` and ``lmtune worker`` run), on one kept base
(``ReusableBase``). After each trial it records the process's resident memory and the trial's own peak of it (the
peak is reset before each trial; Linux), and on a GPU the memory allocated and reserved by torch's caching allocator
and the trial's peak allocation. A worker whose memory stays flat has every trial's resident memory within 5% of
the first trial's, and each config's peak within 5% of that config's first trial.

glibc serves tensors below its (adaptive) mmap threshold from a heap that fragments: freed and trimmed, the
resident memory after a trial is flat either way, but a trial's peak then wanders by a few percent with the
heap's layout. ``MALLOC_MMAP_THRESHOLD_=65536`` (a fixed threshold) makes every large tensor a mapping of its own,
returned when freed, so the peak measures the trial's live memory; the CPU numbers in docs/benchmarks.md and
``tests/finetune/test_memory.py`` use it.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/memory_trials.py              # CPU, a tiny Qwen2
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/memory_trials.py --device cuda --shape 0.5b   # a GPU
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import torch

from lmtune.finetune.data import DatasetSplits
from lmtune.finetune.memory import peak_resident_bytes, reset_peak_resident, resident_bytes
from lmtune.finetune.objective import LoraObjective
from lmtune.finetune.train import TrainSettings
from lmtune.space import SearchSpace

#: Five (rank, batch size) configs, run in turn: every trial changes both, and each config comes back every fifth
#: trial, so its peak can be compared with its first.
CONFIGS = ((4, 4), (64, 32), (16, 8), (8, 16), (32, 4))
RANKS = tuple(sorted({rank for rank, _ in CONFIGS}))
BATCH_SIZES = tuple(sorted({batch for _, batch in CONFIGS}))
MIB = 2**20
#: Shapes of the Qwen2 model a run builds from its config (hidden, intermediate, layers, heads, kv heads, vocab).
SHAPES = {"tiny": (64, 128, 4, 4, 2, 30528), "0.5b": (896, 4864, 24, 14, 2, 151936)}
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrialMemory:
    """One trial's memory, in MiB: the process's resident memory after it and its peak during it; on a GPU what
    torch allocated and reserved after it and its peak allocation."""

    trial: int
    rank: int
    batch_size: int
    resident: float | None
    peak_resident: float | None
    allocated: float | None = None
    reserved: float | None = None
    peak_allocated: float | None = None


def configs(trials: int) -> list[dict]:
    """``CONFIGS`` in turn, ``trials`` of them."""
    return [{"rank": r, "batch_size": b} for r, b in itertools.islice(itertools.cycle(CONFIGS), trials)]


def measure_trials(objective: LoraObjective, trials: int, device: torch.device) -> list[TrialMemory]:
    """Run ``trials`` enqueued configs through ``objective`` in one in-memory study; memory after each."""
    study = optuna.create_study(direction=objective.direction)
    for params in configs(trials):
        study.enqueue_trial(params)
    records: list[TrialMemory] = []

    def measured(trial: optuna.Trial) -> float:
        reset_peak_resident()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        value = objective(trial)
        cuda = device.type == "cuda"
        records.append(TrialMemory(
            trial.number, trial.params["rank"], trial.params["batch_size"], _mib(resident_bytes()),
            _mib(peak_resident_bytes()), _mib(torch.cuda.memory_allocated(device)) if cuda else None,
            _mib(torch.cuda.memory_reserved(device)) if cuda else None,
            _mib(torch.cuda.max_memory_allocated(device)) if cuda else None))
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(measured, n_trials=trials)
    return records


def flat_within(records: list[TrialMemory], share: float = 0.05) -> dict[str, float]:
    """The largest departure of each measure from its first value (resident, allocated, reserved: the first trial's;
    peaks: the first trial of the same config), as a share of it."""
    worst: dict[str, float] = {}
    first_of: dict[tuple[int, int], TrialMemory] = {}
    for record in records:
        first = first_of.setdefault((record.rank, record.batch_size), record)
        for name, reference in (("resident", records[0]), ("allocated", records[0]), ("reserved", records[0]),
                                ("peak_resident", first), ("peak_allocated", first)):
            value, base = getattr(record, name), getattr(reference, name)
            if value is not None and base:
                worst[name] = max(worst.get(name, 0.0), abs(value - base) / base)
    return worst


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def build(shape: str, device: torch.device):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from lmtune.llm import default_encoder_path

    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                                         tie_word_embeddings=True, max_position_embeddings=4096))
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path(), eos_token="[SEP]")
    return model.to(device), tokenizer


def run(device: torch.device, shape: str = "tiny", trials: int = 20, steps: int = 4, max_length: int = 128,
        rows: int = 256) -> list[TrialMemory]:
    """``trials`` trials of ``CONFIGS`` in turn on one kept base of ``shape`` (synthetic rows of many lengths)."""
    model, tokenizer = build(shape, device)
    examples = [{"prompt": "question " * (8 + i % 40) + str(i), "response": " answer" * (1 + i % 5)}
                for i in range(rows)]
    validation = rows * 3 // 4
    splits = DatasetSplits("causal", examples[:validation], examples[validation:validation + 16],
                           examples[validation + 16:], None, "synthetic")
    space = SearchSpace.from_dict({"name": "memory", "params": {"rank": list(RANKS), "batch_size": list(BATCH_SIZES),
                                                               "alpha_ratio": 2.0, "learning_rate": 1e-4}})
    objective = LoraObjective(space, splits, model=model, tokenizer=tokenizer, proxy_fraction=1.0,
                              target_modules=LINEAR, metric="eval_loss",
                              settings=TrainSettings(max_length=max_length, steps=steps, eval_points=1,
                                                     exact_match=False, device=str(device)))
    return measure_trials(objective, trials, device)


def table(records: list[TrialMemory]) -> list[str]:
    """The per-trial table and the largest departures, as Markdown lines."""
    lines = ["| trial | rank | batch | resident MiB | peak resident MiB | allocated MiB | reserved MiB | "
             "peak allocated MiB |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.trial} | {r.rank} | {r.batch_size} | {r.resident} | {r.peak_resident} | {r.allocated} | "
              f"{r.reserved} | {r.peak_allocated} |" for r in records]
    worst = flat_within(records)
    return lines + ["", "largest departure from the first: " + ", ".join(f"{k} {100 * v:.1f}%"
                                                                         for k, v in worst.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    records = run(torch.device(args.device), args.shape, args.trials, args.steps, args.max_length, args.rows)
    print("\n".join(table(records)))
    if args.json:
        args.json.write_text(json.dumps({"records": [asdict(r) for r in records], "worst": flat_within(records)},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
