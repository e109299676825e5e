"""Throughput of 1, 2 and 4 ``lmtune worker`` processes on one study, on PostgreSQL and on SQLite.

Every trial runs ``lmtune.runtime.synthetic:sleepy_quadratic`` (a real study over ``lora-small``, whose cost
is a sleep), so the numbers show what storage, sampler and lmtune's bookkeeping add per trial:

* trials per minute over the window from the first trial's start to the last trial's end (process
  start-up excluded), and that as a share of the ideal ``workers * 60 / sleep``;
* the sampler's share of trial time (``suggest_seconds``: Optuna samples inside the first suggest);
* the rest of the overhead per trial (storage reads and writes, the budget check, heartbeats).

With ``--sleep 0`` a trial is pure overhead, which shows where SQLite (one writer at a time, a file
lock) stops keeping up. PostgreSQL is a throwaway server started here, as in the tests.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/workers.py --sleep 0.5 0 --workers 1 2 4``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pg_cluster import PostgresCluster  # noqa: E402

from lmtune.runtime.study import open_study, publish_job  # noqa: E402
from lmtune.runtime.trials import counted_trials  # noqa: E402
from lmtune.space import load_space  # noqa: E402


def create(url: str, name: str, sampler: str, trials: int) -> None:
    space = load_space("lora-small")
    study = open_study(name, storage=url, direction="maximize", attrs={"space": space.to_dict()})
    publish_job(study, "lora", "lmtune.lora.tune:worker_parts", {"sampler": sampler, "startup_trials": 5, "seed": 0},
                trials)


def run(url: str, name: str, workers: int, sleep: float, folder: Path) -> dict:
    env = {**os.environ, "LMTUNE_SYNTHETIC_SECONDS": str(sleep), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lmtune.cli", "worker", "--storage", url, "--study", name,
           "--objective", "lmtune.runtime.synthetic:sleepy_quadratic"]
    procs = [subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    errors = [err for p in procs for err in [p.communicate()[1]] if p.returncode != 0]
    if errors:
        raise RuntimeError(errors[0][-2000:])
    study = optuna.load_study(study_name=name, storage=url)
    done = [t for t in counted_trials(study) if t.state == TrialState.COMPLETE]
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    window = (end - start).total_seconds()
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    suggest = [t.user_attrs["suggest_seconds"] for t in done]
    stubs = sum(1 for t in study.trials if t.user_attrs.get("budget_reached"))
    return {"complete": len(done), "stubs": stubs, "window_s": window, "per_min": 60 * len(done) / window,
            "ideal_per_min": workers * 60 / sleep if sleep else None,
            "trial_s": statistics.mean(durations), "suggest_s": statistics.mean(suggest),
            "overhead_s": statistics.mean(durations) - statistics.mean(suggest) - sleep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sleep", type=float, nargs="+", default=[0.5, 0.0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--backends", nargs="+", default=["postgresql", "sqlite"])
    args = parser.parse_args()

    cluster = PostgresCluster().start() if "postgresql" in args.backends else None
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for sleep in args.sleep:
                for backend in args.backends:
                    for workers in args.workers:
                        name = f"b_{backend}_{workers}_{str(sleep).replace('.', '_')}"
                        url = (cluster.create_database(name) if backend == "postgresql"
                               else f"sqlite:///{folder / (name + '.db')}")
                        create(url, name, args.sampler, args.trials)
                        r = run(url, name, workers, sleep, folder)
                        rows.append((backend, workers, sleep, r))
                        ideal = f"{r['per_min'] / r['ideal_per_min']:.0%}" if r["ideal_per_min"] else "-"
                        print(f"{backend:10} workers {workers} sleep {sleep:.1f}s: {r['per_min']:6.1f} trials/min "
                              f"(ideal share {ideal}), trial {r['trial_s']:.3f}s, sampler {r['suggest_s']:.3f}s "
                              f"({r['suggest_s'] / r['trial_s']:.0%}), other overhead {r['overhead_s']:.3f}s, "
                              f"{r['complete']} complete, {r['stubs']} stubs", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()

    print(f"\n{args.trials} trials per run, sampler {args.sampler}, lora-small, "
          f"{os.cpu_count()} CPUs\n")
    print("| storage | workers | sleep s | trials/min | of ideal | s/trial | sampler s (share) | other overhead s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for backend, workers, sleep, r in rows:
        ideal = f"{r['per_min'] / r['ideal_per_min']:.0%}" if r["ideal_per_min"] else "-"
        print(f"| {backend} | {workers} | {sleep:g} | {r['per_min']:.1f} | {ideal} | {r['trial_s']:.3f} | "
              f"{r['suggest_s']:.3f} ({r['suggest_s'] / r['trial_s']:.0%}) | {r['overhead_s']:.3f} |")


if __name__ == "__main__":
    main()
