"""Issue 28's probe, before and after: every case of its seven groups run with the lmtune of two source trees.

    python benchmarks/probe_28.py --before /work/baseline --after . --output benchmarks/results/probe-28.md

Each case runs in a subprocess with ``PYTHONPATH`` set to one tree, in a fresh folder, and is judged from the host's
side (a file that appeared, bytes a socket received, a process still alive, seconds until exit, the status a
request got), not only from what the code under test reports. Needs bubblewrap for the "after" sandbox, and
nothing listening on 127.0.0.1:18432. Takes a few minutes per tree (a killed ``lmtune lora`` run among them).
Groups 3, 6 and 7 (``probe_28_inputs.py``) also count the bad inputs handled well: exit 2, one ``error: <field>:``
line, nothing written (for the over-billing endpoint: exit 1, a warning, the spend no less than billed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_28_cases import SANDBOX_ATTACKS, e2e_humaneval, serve_process_cases, serve_requests  # noqa: E402
from probe_28_inputs import input_cases, make_labels  # noqa: E402

RUNNER = """import json, sys, time
from lmtune.inference.sandbox import run_code
start = time.monotonic()
result = run_code(sys.stdin.read(), timeout=float(sys.argv[1]))
print(json.dumps({"passed": result.passed, "reason": result.reason, "seconds": time.monotonic() - start,
                  "stderr": (result.stderr.strip().splitlines() or [""])[-1][:120]}))
"""


def env_for(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def cli(tree: Path, *args: str, cwd: Path, timeout: float = 300) -> str:
    """``lmtune ARGS`` with that tree: its exit code and the last line it printed to stderr."""
    try:
        done = subprocess.run([sys.executable, "-m", "lmtune.cli", *args], cwd=cwd, env=env_for(tree),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"still running after {timeout:.0f} s"
    last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or [""])[-1]
    return f"exit {done.returncode}: `{last[:160]}`"


def sandbox_case(tree: Path, attack: dict, folder: Path) -> str:
    """One attack program against ``run_code`` of that tree; the host folder it aims at is checked after."""
    host = folder / "host"
    host.mkdir()
    host.chmod(0o777)
    marker = f"lmtune-probe-{uuid.uuid4().hex}"
    listener = attack.get("listen") and _listener(attack["listen"], host)
    before = set(host.rglob("*"))
    program = attack["program"].format(OUT=str(host), MARKER=marker, PORT=listener[1] if listener else 0,
                                       SOCK=listener[2] if listener else "")
    done = subprocess.run([sys.executable, "-c", RUNNER, str(attack.get("timeout", 5))], input=program, cwd=folder,
                          env=env_for(tree), capture_output=True, text=True, timeout=120)
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        return f"runner failed: `{done.stderr.strip().splitlines()[-1][:120]}`"
    received = _received(listener) if listener else None
    time.sleep(attack.get("wait_after", 0))
    survivors = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, marker)]
    written = sorted(str(p.relative_to(host)) for p in set(host.rglob("*")) - before)
    parts = [f"{'passed' if result['passed'] else result['reason']} in {result['seconds']:.1f} s"]
    parts += [f"host files written: {', '.join(written)}"] if written else []
    parts += [f"the host socket received {received!r}"] if received else []
    parts += [f"{len(survivors)} of its processes still alive after return"] if survivors else []
    parts += [f"stderr `{result['stderr']}`"] if attack.get("show_stderr") and result["stderr"] else []
    return "; ".join(parts)


def _listener(kind: str, host: Path):
    if kind == "unix":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = str(host / "host.sock")
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen(1)
        return server, 0, path
    server = socket.create_server(("127.0.0.1", 0))
    return server, server.getsockname()[1], ""


def _received(listener) -> bytes:
    server = listener[0]
    server.settimeout(0.5)
    try:
        connection, _ = server.accept()
    except TimeoutError:
        return b""
    finally:
        server.close()
    connection.settimeout(0.5)
    with connection:
        try:
            return connection.recv(100)
        except TimeoutError:
            return b"(connected)"


def _cmdline_has(pid: str, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def storage_cases(tree: Path, folder: Path) -> dict[str, str]:
    """Groups 2 and 5 without a long run: passwords in messages, files that are not storages, study names."""
    (folder / "one.txt").write_text("x")
    (folder / "bad.log").write_text('{"op_code": 0, "worker_id": "a"\nnot json\n')
    out = {
        "password with unencoded `@ : / #` (status)": cli(tree, "status", "--study", "s", "--storage",
                                                          "postgresql://qa:P@ss:w/rd%41#x@127.0.0.1:18432/qadb",
                                                          cwd=folder),
        "one-letter password `p`, no server (status)": cli(tree, "status", "--study", "s", "--storage",
                                                           "postgresql://qa:p@127.0.0.1:18432/qadb", cwd=folder),
        "a 1-byte text file as `sqlite:///` (status)": cli(tree, "status", "--study", "s", "--storage",
                                                           "sqlite:///one.txt", cwd=folder),
    }
    out["a 1-byte text file as `sqlite:///`: the file after"] = repr((folder / "one.txt").read_bytes()[:16])
    for command in (["status", "--study", "s"], ["report"], ["worker", "--study", "s"], ["lora", "--no-run"]):
        out[f"malformed journal file ({command[0]})"] = cli(tree, *command, "--storage", "journal:///bad.log",
                                                            cwd=folder)
    nested = folder / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "d.csv").write_text(DATA)
    line = cli(tree, "lora", "--dataset", "d.csv", "--study-name", "../../../sb/evil", "--trials", "1",
               "--max-length", "16", "--no-final-train", "--storage", "sqlite:///s.db", cwd=nested)
    escaped = sorted(str(p.relative_to(folder)) for p in (folder / "sb").rglob("*")) if (folder / "sb").exists() else []
    out["`lora --study-name ../../../sb/evil`"] = line + (f"; written outside: {', '.join(escaped[:3])}"
                                                          if escaped else "; nothing outside")
    return out


DATA = "text,label\n" + "".join(f"{'good' if i % 2 else 'bad'} review number {i},{i % 2}\n" for i in range(60))


def journal_kill_case(tree: Path, folder: Path) -> str:
    """``lmtune lora`` on journal storage, SIGKILLed while trial 1 runs, then run again: does it finish 3 trials?"""
    (folder / "d.csv").write_text(DATA)
    args = ["lora", "--dataset", "d.csv", "--space", "lora-small", "--sampler", "random", "--trials", "3",
            "--max-length", "16", "--no-final-train", "--storage", "journal:///j.log",
            "--study-name", "main"]
    process = subprocess.Popen([sys.executable, "-m", "lmtune.cli", *args], cwd=folder, env=env_for(tree),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
        if any(t.state.name == "RUNNING" and t.number >= 1 for t in _journal_trials(folder / "j.log")):
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    rerun = cli(tree, *args, cwd=folder, timeout=600)
    states = Counter(t.state.name for t in _journal_trials(folder / "j.log"))
    return f"rerun {rerun}; trials then: {dict(states)}"


def _journal_trials(path: Path) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not path.exists():
        return []
    try:
        return optuna.load_study(study_name="main", storage=JournalStorage(JournalFileBackend(str(path)))).trials
    except KeyError:  # not created yet
        return []


def run_tree(tree: Path, skip_slow: bool, labels: Path, handled: dict[str, bool],
             groups: str = "1234567") -> dict[str, str]:
    """Every case of ``groups`` with that tree; ``handled`` gets whether each bad input of groups 3, 6, 7 was."""
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="probe28-") as scratch:
        root = Path(scratch)
        if set("367") & set(groups):
            for name, (text, good) in input_cases(tree, root, labels).items():
                results[name], handled[name] = text, good
        if not set("1245") & set(groups):
            return results
        for name, attack in SANDBOX_ATTACKS.items():
            folder = root / f"sandbox-{len(results)}"
            folder.mkdir()
            results[f"1. {name}"] = sandbox_case(tree, attack, folder)
        results["1. `lmtune infer --task humaneval`, a completion that creates a database outside"] = e2e_humaneval(
            root / "e2e", env_for(tree))
        (root / "storage").mkdir()
        for name, outcome in storage_cases(tree, root / "storage").items():
            results[f"2/5. {name}"] = outcome
        for name, outcome in {**serve_requests(env_for(tree)), **serve_process_cases(env_for(tree))}.items():
            results[f"4. {name}"] = outcome
        if not skip_slow:
            (root / "kill").mkdir()
            results["5. `lmtune lora` on `journal:///`, SIGKILL in trial 1, run again"] = journal_kill_case(
                tree, root / "kill")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/probe-28.md"))
    parser.add_argument("--skip-slow", action="store_true", help="leave out the killed lora run")
    parser.add_argument("--groups", default="1234567", help="which of the issue's groups to probe, e.g. 367")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="probe28-labels-") as scratch:
        labels = make_labels(args.after.resolve(), Path(scratch)) if set("6") & set(args.groups) else Path()
        handled_before: dict[str, bool] = {}
        handled_after: dict[str, bool] = {}
        before = run_tree(args.before.resolve(), args.skip_slow, labels, handled_before, args.groups)
        after = run_tree(args.after.resolve(), args.skip_slow, labels, handled_after, args.groups)
    rows = ["| case | before | after |", "| --- | --- | --- |"]
    rows += [f"| {case} | {before.get(case, '')} | {after.get(case, '')} |".replace("\n", " ")
             for case in sorted(dict.fromkeys([*before, *after]), key=lambda c: c.split(".")[0].split("/")[0])]
    counts = "".join(f"- group {group}: {sum(v for k, v in handled_before.items() if k.startswith(group))} of "
                     f"{sum(1 for k in handled_before if k.startswith(group))} handled well before, "
                     f"{sum(v for k, v in handled_after.items() if k.startswith(group))} of "
                     f"{sum(1 for k in handled_after if k.startswith(group))} after\n" for group in ("3.", "6.", "7."))
    text = (f"# Issue 28 probe, before ({args.before}) and after ({args.after})\n\n"
            f"`python benchmarks/probe_28.py --before {args.before} --after {args.after}`\n\n" + counts + "\n"
            + "\n".join(rows) + "\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
