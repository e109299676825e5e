"""Issue 28's probe, groups 3, 6 and 7: an endpoint that over-bills, checks that came after the work, and the
tracebacks left (files that are not UTF-8, click's usage errors, a /v1/models that is not JSON).

Each bad input runs ``lmtune`` of one tree in a fresh folder and is judged from outside: the exit code, whether
stderr ends in exactly one ``error: <field>:`` line (and holds no traceback), and whether anything appeared in
the folder (a study database, an output folder, a response cache). Handled well = exit 2, one such line, nothing
written. The over-billing endpoint is judged by what the server itself billed against what lmtune reported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import BillingServer, Server  # noqa: E402

#: A folder no one may create, root included (sysfs).
UNWRITABLE = "/sys/lmtune-probe"
TABLE = str(ROOT / "benchmarks/data/arith-sft.json.gz")
DATA = "text,label\n" + "".join(f"{'good' if i % 2 else 'bad'} review number {i},{i % 2}\n" for i in range(60))
CURVES = "config name,0,100,200,400,size\nA,3.0,2.5,2.2,2.0,1000\nB,3.2,2.4,2.1,1.9,2000\n"
LATIN1_YAML = "name: caf\u00e9\n".encode("latin-1")
LATIN1_JSONL = '{"prompt": "caf\u00e9", "answer": "1"}\n'.encode("latin-1")
#: Flags both trees take (05e816d has --proxy-steps, main since issue 26 --proxy steps:N: the default proxy here).
LORA = ["lora", "--dataset", "d.csv", "--trials", "1", "--max-length", "16", "--no-final-train", "--storage",
        "sqlite:///s.db"]
INFER = ["infer", "--local-model", "arith-lm", "--inference-budget", "1", "--optimization-budget", "0.01",
         "--task-size", "20", "--max-trials", "2", "--storage", "sqlite:///s.db"]
HAG_LABEL = ["hag", "label", "--task-size", "20", "--limit", "2", "--n", "2", "--storage", "sqlite:///s.db"]
BENCH = ["bench", "samplers", "--table", TABLE, "--samplers", "random", "--seeds", "1", "--budget", "3"]

#: name -> (files to write, arguments, seconds before it counts as a hang). "labels.jsonl" is a real label file.
CASES: dict[str, tuple[dict[str, str | bytes], list[str], float]] = {
    "6. unwritable --output-dir (lora)": ({"d.csv": DATA}, [*LORA, "--output-dir", UNWRITABLE], 600),
    "6. unwritable --output-dir (infer)": ({}, [*INFER, "--output-dir", UNWRITABLE], 300),
    "6. unwritable --output-dir (hag label)": ({}, [*HAG_LABEL, "--output-dir", UNWRITABLE], 300),
    "6. unwritable --output (hag train)": ({}, ["hag", "train", "--labels", "labels.jsonl", "--learner", "head",
                                               "--output", UNWRITABLE], 300),
    "6. unwritable --output-dir (hag evaluate)": ({}, ["hag", "evaluate", "--labels", "labels.jsonl", "--limit", "1",
                                                      "--output-dir", UNWRITABLE], 300),
    "6. unwritable --output-dir (report)": ({}, ["report", "--storage", "sqlite:///study.db", "--output-dir",
                                                UNWRITABLE], 120),
    "6. unwritable --plot (select)": ({"c.csv": CURVES}, ["select", "--curves", "c.csv", "--budget-ratio", "2",
                                                         "--plot", f"{UNWRITABLE}/p.png"], 120),
    "6. unwritable --output (bench build-table)": ({}, ["bench", "build-table", "--max-trials", "1", "--storage",
                                                       "sqlite:///s.db", "--output", f"{UNWRITABLE}/t.json.gz"], 300),
    "6. unwritable --output (bench samplers)": ({}, [*BENCH, "--output", UNWRITABLE], 300),
    "6. `--metric pass@100` with n 1..16 (infer)": ({}, [*INFER, "--metric", "pass@100", "--output-dir", "out"], 300),
    "6. `--seed -1` (lora)": ({"d.csv": DATA}, [*LORA, "--seed", "-1"], 300),
    "6. `--seed -1` (infer)": ({}, [*INFER, "--seed", "-1", "--output-dir", "out"], 300),
    "6. `--seed -1` (hag label)": ({}, [*HAG_LABEL, "--seed", "-1", "--output-dir", "out"], 300),
    "6. `--template ''` (infer)": ({}, [*INFER, "--template", "", "--output-dir", "out"], 300),
    "6. `--template ''` (hag label)": ({}, [*HAG_LABEL, "--template", "", "--output-dir", "out"], 300),
    "6. `--task-size 1000000000` (infer)": ({}, [*INFER[:-6], "--task-size", "1000000000", "--storage",
                                                 "sqlite:///s.db", "--output-dir", "out"], 60),
    "6. `bench samplers --budget 100000000`": ({}, [*BENCH[:-2], "--budget", "100000000", "--output", "out"], 60),
    "7. Latin-1 `--config` (lora)": ({"d.csv": DATA, "c.yaml": LATIN1_YAML}, [*LORA, "--config", "c.yaml"], 300),
    "7. Latin-1 `--space` (lora)": ({"d.csv": DATA, "s.yaml": LATIN1_YAML}, [*LORA, "--space", "s.yaml"], 300),
    "7. Latin-1 `--prices` (infer)": ({"p.yaml": b"arith-lm: {input: 1, output: 1}\n" + LATIN1_YAML},
                                      [*INFER, "--prices", "p.yaml", "--output-dir", "out"], 300),
    "7. Latin-1 `--task` (infer)": ({"t.jsonl": LATIN1_JSONL}, [*INFER, "--task", "t.jsonl", "--output-dir", "out"],
                                    300),
    "7. Latin-1 `--task` (hag label)": ({"t.jsonl": LATIN1_JSONL}, [*HAG_LABEL, "--task", "t.jsonl", "--metric",
                                                                    "exact", "--output-dir", "out"], 300),
    "7. Latin-1 `--labels` (hag train)": ({"l.jsonl": LATIN1_JSONL}, ["hag", "train", "--labels", "l.jsonl",
                                                                      "--output", "out"], 300),
    "7. `--trials abc` (lora)": ({}, ["lora", "--trials", "abc"], 120),
    "7. an unknown flag `--x` (lora)": ({}, ["lora", "--x"], 120),
    "7. `--port abc` (serve)": ({}, ["serve", "--port", "abc"], 120),
    "7. `bench samplers --samplers ''`": ({}, [*BENCH[:4], "--samplers", "", "--output", "out"], 120),
}


def env_for(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


#: The field each bad input should be named by, from words of the case's name.
FIELDS = {"--output-dir": "output_dir", "--output ": "output", "--plot": "plot", "pass@100": "metric",
          "--seed": "seed", "--template": "templates|template", "--task-size": "task_size", "--budget": "budget",
          "--config": "config", "--space": "space", "--prices": "prices", "--task`": "task", "--labels": "labels",
          "--trials": "trials", "--x": "usage", "--port": "port", "--samplers": "samplers", "/v1/models": "endpoint"}


def judged(tree: Path, folder: Path, args: list[str], timeout: float, case: str = "") -> tuple[str, bool]:
    """Run ``lmtune ARGS`` in ``folder``; (what it did, whether it handled the bad input well: the field the
    case is about named, when ``case`` says which)."""
    before = {p for p in folder.rglob("*")}
    try:
        done = subprocess.run([sys.executable, "-m", "lmtune.cli", *args], cwd=folder, env=env_for(tree),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"still running after {timeout:.0f} s (killed)", False
    written = sorted(str(p.relative_to(folder)) for p in set(folder.rglob("*")) - before
                     if "__pycache__" not in p.parts)
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    traceback = "Traceback" in done.stderr
    last = (lines or done.stdout.strip().splitlines() or [""])[-1]
    fields = next((f.split("|") for words, f in FIELDS.items() if words in case), None)
    named = fields is None or any(errors and errors[0].startswith(f"error: {f}: ") for f in fields)
    good = (done.returncode == 2 and len(errors) == 1 and lines[-1] == errors[0] and not written and not traceback
            and named)
    text = f"exit {done.returncode}: `{last[:160]}`"
    text += f"; wrote {', '.join(written[:3])}" + (" ..." if len(written) > 3 else "") if written else ""
    text += " (after a traceback)" if traceback and not last.startswith("Traceback") and "Error" not in last else ""
    return text, good


def make_labels(tree: Path, folder: Path) -> Path:
    """A real label file of ``lmtune hag label`` (two inputs), for the hag train and evaluate cases."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "lmtune.cli", *HAG_LABEL[:-2], "--storage", "sqlite:///l.db",
                    "--output-dir", "out"], cwd=folder, env=env_for(tree), capture_output=True, timeout=600,
                   check=True)
    return folder / "out" / "labels-train.jsonl"


def make_study(path: Path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{path}")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)


def input_cases(tree: Path, root: Path, labels: Path) -> dict[str, tuple[str, bool]]:
    """Every bad input of groups 6 and 7, the /v1/models cases, and the over-billing endpoint."""
    out = {}
    for number, (name, (files, args, timeout)) in enumerate(CASES.items()):
        folder = root / f"input-{number}"
        folder.mkdir()
        for file, content in files.items():
            (folder / file).write_bytes(content if isinstance(content, bytes) else content.encode())
        if "labels.jsonl" in args:
            shutil.copy(labels, folder / "labels.jsonl")
        if "sqlite:///study.db" in args:
            make_study(folder / "study.db")
        out[name] = judged(tree, folder, args, timeout, name)
    with models_page() as url:
        for name, args in (("infer", [*INFER, "--output-dir", "out"]),
                           ("lora --sampler agent", [*LORA, "--sampler", "agent", "--agent-model", "m"])):
            folder = root / f"models-{name.split()[0]}"
            folder.mkdir()
            (folder / "d.csv").write_text(DATA)
            args = [a for a in args if a not in ("--local-model", "arith-lm")] + ["--endpoint", url]
            if name == "infer":
                args += ["--models", "arith-lm"]
            case = f"7. an endpoint whose /v1/models is a web page ({name})"
            out[case] = judged(tree, folder, args, 120, case)
    out["3. an endpoint billing 50x each request's max_tokens (infer, budget 1.0)"] = overbilled(tree, root / "bill")
    return out


@contextmanager
def models_page() -> Iterator[str]:
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def page(request):
        return HTMLResponse("<html><body>Welcome to nginx!</body></html>")

    with Server(Starlette(routes=[Route("/v1/models", page)])) as url:
        yield url


def overbilled(tree: Path, folder: Path) -> tuple[str, bool]:
    """The probe's over-billing server (``BillingServer("overbill")``: 50 x n x max_tokens completion tokens):
    what it billed, from its own log, against what lmtune reported. Handled well = exit 1 with one
    ``error: endpoint:`` line, results.json with a warning, and the spend reported no less than billed."""
    folder.mkdir()
    with BillingServer("overbill") as server:
        done = subprocess.run([sys.executable, "-m", "lmtune.cli", "infer", "--endpoint", server.url, "--models",
                               "arith-lm", "--inference-budget", "0.02", "--optimization-budget", "1.0",
                               "--task-size", "40", "--storage", "sqlite:///s.db", "--output-dir", "out"],
                              cwd=folder, env=env_for(tree), capture_output=True, text=True, timeout=600)
        billed = sum(b["prompt_tokens"] * 0.5 + b["completion_tokens"] for b in server.billed) / 1000
    results = json.loads((folder / "out" / "results.json").read_text())
    spend = results["spend"]
    reported = spend["real"] + spend.get("test_real", 0.0)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    good = (done.returncode == 1 and last.startswith("error: endpoint: ") and results["warnings"]
            and reported >= billed - 1e-9)
    return (f"exit {done.returncode}: `{last[:160]}`; the server billed {billed:.4g} ({len(server.billed)} calls), "
            f"lmtune reported {spend['real']:.4g} for tuning + {spend.get('test_real', 0.0):.4g} for the test split; "
            f"warnings: {len(results['warnings'])}"), bool(good)
