"""Which earlier studies and tables a LoRA search remembers (``memory``), found before storage is written.

The storage a user runs ``lmtune lora`` against usually already holds their earlier studies, and a sampler that
transfers (``language-bo+``: ``lmtune.samplers.language_bo.transfer``) can use them from its first trial. So
``memory`` is ``auto`` by default: every earlier LoRA study in the same storage whose space is compatible
(``transfer.check_compatible``) and which holds at least ``MIN_FINISHED`` complete trials, never the study itself
(by name and by id: a resumed study is not its own memory). ``none`` opts out; a list names studies in the storage
and table files. Samplers that do not transfer remember nothing: ``auto`` quietly finds nothing for them, and a
list is refused by the config (``LoraRunConfig``).

The memory found is written into the job workers read (``specs``), so every worker remembers the same studies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage

from lmtune import attrs
from lmtune.errors import InputError
from lmtune.lora.config import AUTO_MEMORY, NO_MEMORY, LoraRunConfig
from lmtune.runtime.storage import local_file, make_storage, normalize_url
from lmtune.samplers.language_bo.transfer import TransferSource, check_compatible, load_source, read_study
from lmtune.samplers.registry import TRANSFER_SAMPLERS
from lmtune.space import SearchSpace

log = logging.getLogger(__name__)

#: Complete trials an earlier study needs before ``auto`` offers it: fewer say little about a landscape, and the
#: first trials of a study are its random or space-filling start.
MIN_FINISHED = 5


@dataclass(frozen=True)
class Memory:
    """The sources a search remembers, and how its job names each (a study name or a table file's absolute path)."""

    requested: tuple[str, ...]
    sources: tuple[TransferSource, ...] = ()
    specs: tuple[str, ...] = ()

    @property
    def job_value(self) -> list[str]:
        """``memory`` as the job gives it to workers: the sources found, so that they find the same."""
        return list(self.specs) or [NO_MEMORY]

    def summary(self, report: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``results.json`` says (``memory``): what was asked for, each source used (name, where it came from,
        its results) and, where the sampler reports it (``memory_report``), whether its gate kept the memory."""
        used = [{"name": s.name, "from": spec, "results": len(s.values)} for s, spec in zip(self.sources, self.specs,
                                                                                             strict=True)]
        return {"requested": list(self.requested), "used": used, "gate": report}


def resolve_memory(cfg: LoraRunConfig, space: SearchSpace) -> Memory:
    """The memory of this run: the listed tables and studies, read and checked against ``space``, and with
    ``auto`` every compatible earlier LoRA study of ``storage``. Bad input raises ``InputError("memory", ...)``;
    storage is only read."""
    requested = tuple(cfg.memory)
    if cfg.sampler not in TRANSFER_SAMPLERS or requested == (NO_MEMORY,):
        return Memory(requested)
    storage = _existing_storage(cfg.storage)
    own = _study_id(storage, cfg.study_name)
    sources, specs = [], []
    for spec in (s for s in requested if s != AUTO_MEMORY):
        source, spec = _listed_source(spec, storage, cfg, own)
        check_compatible(source, space)
        sources.append(source)
        specs.append(spec)
    if AUTO_MEMORY in requested and storage is not None:
        for source in discover(storage, space, cfg.study_name, own):
            if source.name not in specs:
                sources.append(source)
                specs.append(source.name)
    for source in sources:
        log.info("Memory: %d results of %s (%s)", len(source.values), source.name, source.description)
    return Memory(requested, tuple(sources), tuple(specs))


def discover(storage: BaseStorage, space: SearchSpace, study_name: str, own: int | None) -> list[TransferSource]:
    """Every earlier LoRA study of ``storage`` that ``auto`` offers: a published ``lmtune lora`` job, a stored space
    compatible with ``space``, one objective, at least ``MIN_FINISHED`` complete trials; never the study named
    ``study_name`` nor the one of id ``own``."""
    found = []
    for summary in storage.get_all_studies():
        job = summary.user_attrs.get(attrs.JOB) or {}
        if summary.study_name == study_name or job.get("command") != "lora" or attrs.SPACE not in summary.user_attrs:
            continue
        if own is not None and storage.get_study_id_from_name(summary.study_name) == own:
            continue
        try:
            source = read_study(storage, summary.study_name)
            check_compatible(source, space)
        except InputError as exc:
            log.info("Memory: study %s is not offered: %s", summary.study_name, exc.message)
            continue
        if len(source.values) >= MIN_FINISHED:
            found.append(source)
        else:
            log.info("Memory: study %s is not offered: %d complete trials, fewer than %d", summary.study_name,
                     len(source.values), MIN_FINISHED)
    return found


def _listed_source(spec: str, storage: BaseStorage | None, cfg: LoraRunConfig,
                   own: int | None) -> tuple[TransferSource, str]:
    """A source ``memory`` names, and how the job names it: a table file (absolute path) or a study."""
    path = Path(spec).expanduser()
    if path.is_file():
        return load_source(path), str(path.resolve())
    if storage is None:
        raise InputError("memory", f"{spec!r} is not a file, and no study can be read from the storage "
                         f"{normalize_url(cfg.storage)} (it does not exist yet)")
    if spec == cfg.study_name or (own is not None and _study_id(storage, spec) == own):
        raise InputError("memory", f"{spec!r} is this study; a study never remembers itself")
    return load_source(spec, storage), spec


def _existing_storage(url: str | None) -> BaseStorage | None:
    """The storage to read earlier studies from, or None when its file does not exist yet (nothing to remember)."""
    path = local_file(normalize_url(url))
    if path is not None and not path.is_file():
        return None
    return make_storage(url, existing=True)


def _study_id(storage: BaseStorage | None, name: str) -> int | None:
    if storage is None:
        return None
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None
