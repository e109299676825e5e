"""An on-disk response cache keyed by the full request, so rerunning or resuming a tuning costs nothing twice.

A cached answer is marked ``cached=True``: the tuner counts its cost as cached spend, never as real spend,
so a resumed study neither pays again nor pretends it did.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

from lmtune.llm.generation import ExtraCallHook, Generation, GenerationRequest, Generator


def request_key(backend_id: str, request: GenerationRequest) -> str:
    payload = json.dumps({"backend": backend_id, **request.key()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    """Generations by request key in one SQLite file (safe for several processes; one writer at a time)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()

    def get(self, key: str) -> Generation | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        return Generation(texts=data["texts"], prompt_tokens=data["prompt_tokens"],
                          completion_tokens=data["completion_tokens"], finish_reasons=data.get("finish_reasons", []),
                          cached=True)

    def put(self, key: str, generation: Generation) -> None:
        value = json.dumps({"texts": generation.texts, "prompt_tokens": generation.prompt_tokens,
                            "completion_tokens": generation.completion_tokens,
                            "finish_reasons": generation.finish_reasons})
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, value))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedGenerator(Generator):
    """Wraps a backend: answers from the cache when it can (``cached=True``), stores every fresh answer."""

    def __init__(self, inner: Generator, cache: ResponseCache | None):
        self.inner = inner
        self.cache = cache
        self.backend_id = inner.backend_id

    def lookup(self, request: GenerationRequest) -> Generation | None:
        return None if self.cache is None else self.cache.get(request_key(self.backend_id, request))

    async def generate(self, request: GenerationRequest, *, before_extra_call: ExtraCallHook | None = None
                       ) -> Generation:
        hit = self.lookup(request)
        if hit is not None:
            return hit
        return await self.fresh(request, before_extra_call=before_extra_call)

    async def fresh(self, request: GenerationRequest, *, before_extra_call: ExtraCallHook | None = None
                    ) -> Generation:
        """Ask the backend (no cache lookup) and store the answer."""
        generation = await self.inner.generate(request, before_extra_call=before_extra_call)
        if self.cache is not None:
            self.cache.put(request_key(self.backend_id, request), generation)
        return generation

    def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        return self.inner.count_prompt_tokens(request)

    async def check(self) -> None:
        await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()
        if self.cache is not None:
            self.cache.close()
