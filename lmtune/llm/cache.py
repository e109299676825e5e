"""Replies by request, and the bill of every call, in one SQLite file: rerunning costs nothing twice, and a kill
at any moment leaves a record of everything that may have been paid.

A cached answer is marked ``cached=True``: it was paid when it was first asked (its bill is in the file), so
the tuner counts it as cached spend, never as new real spend.

``ResponseStore`` is the file and its replies; its ``journal`` (``SpendJournal``, the ``calls`` table) is the spend
journal, with which ``lmtune.inference.spend`` decides budgets. A call's row is written and committed *before*
the call with its worst-case cost, and is replaced by the billed cost in the same transaction that stores the
reply. So whatever kills the process, every call that may have been billed is in the file: settled at its billed
cost, or still open (or ``lost``, when a live process gave up on it) at its worst case. A call the server refused
is deleted (nothing was billed). The file is in WAL mode: a committed row survives the death of the process (not
necessarily of the machine's power).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from lmtune.llm.generation import ExtraCallHook, Generation, GenerationRequest, Generator

#: The states of a call in the journal: reserved before the call, billed, or given up with its bill unknown.
OPEN, SETTLED, LOST = "open", "settled", "lost"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    state TEXT NOT NULL,
    reserved REAL NOT NULL,
    cost REAL NOT NULL,
    worker TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_account ON calls (account, state, cost);
"""


def request_key(backend_id: str, request: GenerationRequest) -> str:
    payload = json.dumps({"backend": backend_id, **request.key()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseStore:
    """Replies by request key (the response cache) and, as ``journal``, the spend journal, in one SQLite file
    that several processes may share. They share the file so that a call's bill and its reply are committed in
    one transaction (``SpendJournal.settle``).

    ``":memory:"`` keeps both in memory (no files: nothing survives the process).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        memory = str(path) == ":memory:"
        if not memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are begun explicitly, so a budget check and its reservation are
        # one BEGIN IMMEDIATE transaction even with other processes on the file.
        self._db = sqlite3.connect(str(path), timeout=60, check_same_thread=False, isolation_level=None)
        if not memory:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: durable when the process dies
        self._db.executescript(_SCHEMA)
        self.journal = SpendJournal(self)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one write transaction (committed at the end, rolled back on an error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads, while no other thread of this process uses it."""
        with self._lock:
            yield self._db

    def get(self, key: str) -> Generation | None:
        with self.reading() as db:
            row = db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        return Generation(texts=data["texts"], prompt_tokens=data["prompt_tokens"],
                          completion_tokens=data["completion_tokens"], finish_reasons=data.get("finish_reasons", []),
                          cached=True)

    def put(self, key: str, generation: Generation) -> None:
        with self.transaction() as db:
            _put(db, key, generation)

    def __len__(self) -> int:
        with self.reading() as db:
            return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SpendJournal:
    """The ``calls`` table of a ``ResponseStore``: every call that may have been billed, by account (see the
    module docstring; ``lmtune.inference.spend`` decides budgets with it)."""

    def __init__(self, store: ResponseStore):
        self.store = store

    def reserve(self, account: str, amount: float, limit: float | None, worker: str) -> tuple[int | None, float]:
        """Write an open call of worst-case cost ``amount`` if the account's total stays within ``limit``.

        Returns (the call's id, or None when it does not fit; the account's total before it). The check and
        the row are one transaction, so processes sharing the file never overshoot together.
        """
        with self.store.transaction() as db:
            total = _total(db, account)
            if limit is not None and total + amount > limit:
                return None, total
            cursor = db.execute("INSERT INTO calls (account, state, reserved, cost, worker, created) "
                                "VALUES (?, ?, ?, ?, ?, ?)", (account, OPEN, amount, amount, worker, time.time()))
            return cursor.lastrowid, total

    def settle(self, ids: list[int], cost: float, reply: tuple[str, Generation] | None = None) -> None:
        """Replace the calls' reservations by what they were billed (``cost`` for all of them together) and
        store the reply in the store's response cache, in one transaction."""
        with self.store.transaction() as db:
            for i, call in enumerate(ids):
                db.execute("UPDATE calls SET state = ?, cost = ? WHERE id = ?", (SETTLED, cost if i == 0 else 0.0,
                                                                                 call))
            if reply is not None:
                _put(db, *reply)

    def give_up(self, ids: list[int]) -> None:
        """Calls that may have been billed but whose bill is unknown: they keep their worst case, for good."""
        with self.store.transaction() as db:
            db.executemany("UPDATE calls SET state = ? WHERE id = ?", [(LOST, call) for call in ids])

    def release(self, ids: list[int]) -> None:
        """Calls the server refused (an HTTP error status): nothing was billed."""
        with self.store.transaction() as db:
            db.executemany("DELETE FROM calls WHERE id = ?", [(call,) for call in ids])

    def total(self, account: str) -> tuple[float, float]:
        """(Everything the account counts, the part of it whose bill is unknown: open or lost calls)."""
        with self.store.reading() as db:
            total = _total(db, account)
            unknown = db.execute("SELECT COALESCE(SUM(cost), 0) FROM calls WHERE account = ? AND state != ?",
                                 (account, SETTLED)).fetchone()[0]
        return total, unknown

    def has_account(self, account: str) -> bool:
        with self.store.reading() as db:
            return db.execute("SELECT 1 FROM calls WHERE account = ? LIMIT 1", (account,)).fetchone() is not None

    def open_account(self, account: str, carried: float, worker: str) -> None:
        """Start an account with what was spent before this file knew it (a settled row, possibly of 0)."""
        with self.store.transaction() as db:
            db.execute("INSERT INTO calls (account, state, reserved, cost, worker, created) VALUES (?, ?, ?, ?, ?, ?)",
                       (account, SETTLED, carried, carried, f"carried over by {worker}", time.time()))


def _total(db: sqlite3.Connection, account: str) -> float:
    return db.execute("SELECT COALESCE(SUM(cost), 0) FROM calls WHERE account = ?", (account,)).fetchone()[0]


def _put(db: sqlite3.Connection, key: str, generation: Generation) -> None:
    value = json.dumps({"texts": generation.texts, "prompt_tokens": generation.prompt_tokens,
                        "completion_tokens": generation.completion_tokens, "finish_reasons": generation.finish_reasons})
    db.execute("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, value))


class CachedGenerator(Generator):
    """Wraps a backend: answers from the store when it can (``cached=True``), stores every fresh answer."""

    def __init__(self, inner: Generator, store: ResponseStore | None):
        self.inner = inner
        self.store = store
        self.backend_id = inner.backend_id

    def key(self, request: GenerationRequest) -> str:
        return request_key(self.backend_id, request)

    def lookup(self, request: GenerationRequest) -> Generation | None:
        return None if self.store is None else self.store.get(self.key(request))

    async def generate(self, request: GenerationRequest, *, before_extra_call: ExtraCallHook | None = None
                       ) -> Generation:
        hit = self.lookup(request)
        if hit is not None:
            return hit
        return await self.fresh(request, before_extra_call=before_extra_call)

    async def fresh(self, request: GenerationRequest, *, before_extra_call: ExtraCallHook | None = None,
                    keep: bool = True) -> Generation:
        """Ask the backend (no cache lookup) and store the answer unless ``keep`` is False (a metered caller
        stores it together with its bill)."""
        generation = await self.inner.generate(request, before_extra_call=before_extra_call)
        if keep and self.store is not None:
            self.store.put(self.key(request), generation)
        return generation

    def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        return self.inner.count_prompt_tokens(request)

    async def check(self) -> None:
        await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()
        if self.store is not None:
            self.store.close()
