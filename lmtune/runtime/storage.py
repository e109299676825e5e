"""Storage URLs as Optuna storages: SQLite (default), PostgreSQL, or a journal file on a shared file system.

One place turns what the user typed into a storage, so every command treats URLs alike: a wrong
or unreachable URL is an ``InputError`` before any work starts, and no message carries a password
(``mask_url``). RDB storages get Optuna's heartbeats, and a trial whose worker stops beating is
failed and retried once by Optuna's ``RetryHeartbeatStaleTrialCallback``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from optuna.storages import BaseStorage, RDBStorage

from lmtune._compat import stale_retry_callback
from lmtune.errors import InputError
from lmtune.extras import require

DEFAULT_STORAGE = "sqlite:///lmtune.db"
JOURNAL_PREFIX = "journal:///"
EXAMPLES = f"{DEFAULT_STORAGE}, postgresql+psycopg://USER:PASSWORD@HOST:5432/DB or journal:///FILE"
#: What every command's --storage option says.
STORAGE_HELP = (f"sqlite:///FILE (default {DEFAULT_STORAGE}), postgresql://USER:PASSWORD@HOST/DB, "
                "or journal:///FILE on a shared file system")

#: Seconds between heartbeats of a running trial, and silence after which another worker (or the
#: next run) fails it as stale and queues it again.
HEARTBEAT_INTERVAL = 30
GRACE_PERIOD = 120
#: A stale trial is retried this many times: once covers a killed or preempted worker; a config
#: that kills its worker every time (say, by exhausting memory) ends as FAIL instead of looping.
STALE_RETRIES = 1
#: Seconds to wait for a PostgreSQL server before calling it unreachable.
CONNECT_TIMEOUT = 10

#: user:password@ before the host; the password runs to the last "@" before the host (it may hold "@" or "/").
_USERINFO = re.compile(r"(?P<head>^[A-Za-z][A-Za-z0-9+.\-]*://[^:/@?#]*):(?P<secret>[^?#]*)@(?=[^@?#]*(?:[/?#]|$))")
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|sslpassword)=)(?P<secret>[^&#]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with its password (in the user part or the query) replaced by ``***``; safe to print or log."""
    url = _USERINFO.sub(lambda m: f"{m['head']}:***@", url)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}***", url)


def secrets_in(url: str) -> list[str]:
    """The passwords written in a URL (to scrub them from driver messages too)."""
    found = [m["secret"] for m in _USERINFO.finditer(url)] + [m["secret"] for m in _QUERY_SECRET.finditer(url)]
    return [s for s in found if s]


def normalize_url(url: str | None) -> str:
    """The URL lmtune opens: the default when empty, ``postgresql://`` read as ``postgresql+psycopg://``.

    SQLAlchemy's default PostgreSQL driver is psycopg2, which lmtune does not depend on; psycopg 3 is.
    An explicit driver (``postgresql+psycopg2://``) is kept as written.
    """
    url = (url or DEFAULT_STORAGE).strip()
    if "://" not in url:
        raise InputError("storage", f"{mask_url(url)!r} is not a storage URL; e.g. {EXAMPLES}")
    scheme, rest = url.split("://", 1)
    if scheme.lower() in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    return url


def make_storage(url: str | None = None, *, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD, existing: bool = False) -> BaseStorage:
    """Open ``url`` as an Optuna storage, or raise ``InputError("storage", ...)`` without a password in it.

    RDB URLs get heartbeats every ``heartbeat_interval`` seconds; a running trial silent for
    ``grace_period`` seconds is failed and retried once. Journal files have no heartbeats in Optuna.
    ``existing`` is for commands that join or read a study (``worker``, ``status``): a SQLite or journal file
    that does not exist is an error then, not a new empty database.
    """
    url = normalize_url(url)
    _check_file(url, existing)
    for name, value in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(name, f"must be a whole number of seconds >= 1, got {value!r}")
    if grace_period <= heartbeat_interval:
        raise InputError("grace_period", f"must be longer than heartbeat_interval ({heartbeat_interval} s), got "
                         f"{grace_period} s; otherwise live trials would be failed as stale")
    if url.startswith(JOURNAL_PREFIX):
        return _journal_storage(url)
    return _rdb_storage(url, heartbeat_interval, grace_period)


def local_file(url: str) -> Path | None:
    """The file behind a SQLite or journal URL (None for a server or an in-memory database)."""
    if url.startswith(JOURNAL_PREFIX):
        return Path(url[len(JOURNAL_PREFIX):])
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = make_url(url).database
        return Path(database) if database and database != ":memory:" else None
    return None


def _check_file(url: str, existing: bool) -> None:
    """A missing file where one is needed, or a file or folder lmtune cannot write, as an error before anything
    is created (SQLite and journal storages are files)."""
    path = local_file(url)
    if path is None:
        return
    if existing and not path.is_file():
        raise InputError("storage", f"{path} does not exist; give the storage of an existing study")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError("storage", f"{path} is read-only; lmtune writes trials to it")
    if path.parent.resolve().is_dir() and not os.access(path.parent.resolve(), os.W_OK):
        raise InputError("storage", f"folder {path.parent} is read-only; SQLite and journal files need to write "
                         "beside the database")


def _journal_storage(url: str) -> BaseStorage:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(url[len(JOURNAL_PREFIX):])
    if not path.name:
        raise InputError("storage", f"{url!r} names no file; e.g. journal:///studies.log or journal:////shared/x.log")
    if not path.parent.resolve().is_dir():
        raise InputError("storage", f"folder {path.parent} of journal file {path} does not exist")
    try:
        return JournalStorage(JournalFileBackend(str(path)))  # symlink lock: safe on NFS
    except OSError as exc:
        raise InputError("storage", f"cannot open journal file {path}: {exc.strerror or exc}") from None


def _rdb_storage(url: str, heartbeat_interval: int, grace_period: int) -> RDBStorage:
    from optuna.exceptions import ExperimentalWarning

    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        if url.startswith("postgresql+psycopg:"):  # the driver lmtune names; another is the user's own
            require("postgres", "storage")
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are experimental in Optuna
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_retry_callback(STALE_RETRIES),
            )
    except ImportError:
        raise InputError("storage", f"no database driver for {mask_url(url)}; use {EXAMPLES}") from None
    except Exception as exc:  # SQLAlchemy raises many kinds; all mean "cannot use this URL"
        raise InputError("storage", f"cannot open {mask_url(url)}: {_driver_message(exc, url)}") from None


def _driver_message(exc: Exception, url: str) -> str:
    """The driver's one-line reason, without SQLAlchemy's help link and without any password."""
    text = " ".join(str(exc).split("(Background on this error")[0].split())
    text = re.sub(r"^\([\w.]+\)\s*", "", text)  # "(psycopg.OperationalError) ..."
    for secret in secrets_in(url):
        text = text.replace(secret, "***")
    return mask_url(text)[:300]
