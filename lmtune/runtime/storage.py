"""Storage URLs as Optuna storages: SQLite (default), PostgreSQL, or a journal file on a shared file system.

One place turns what the user typed into a storage, so every command treats URLs alike: a wrong
or unreachable URL is an ``InputError`` before any work starts, and no message carries a password: URLs are
parsed as SQLAlchemy parses them to connect (``mask_url``), a password SQLAlchemy would misread is refused
before any connection (``check_url``), and driver messages lose every whole occurrence of the password
(``scrub``). RDB storages get Optuna's heartbeats, and a trial whose worker stops beating is
failed and retried once by Optuna's ``RetryHeartbeatStaleTrialCallback``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Annotated
from urllib.parse import quote_plus, unquote, urlsplit

from optuna.storages import BaseStorage, RDBStorage
from pydantic import AfterValidator
from sqlalchemy.engine import URL, make_url

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

#: Query parameters that carry a secret (libpq's and drivers' spellings).
SECRET_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword"})
PERCENT_ENCODE = ("percent-encode them: '@' is %40, ':' %3A, '/' %2F, '#' %23, '?' %3F "
                  "(python -c \"import urllib.parse; print(urllib.parse.quote('PASSWORD', safe=''))\")")


def mask_url(url: str) -> str:
    """The URL with its password (user part or query) shown as ``***``; safe to print or log.

    The URL is parsed as SQLAlchemy parses it to connect (``make_url``), never searched for the password's
    text: a password of one letter would otherwise turn every such letter of the message into ``***``. A URL
    that parses ambiguously (``check_url``) keeps only its scheme and what follows its last ``@``."""
    parsed = _parsed(url)
    if parsed is None:
        return _mask_unparsed(url)
    secret_keys = [key for key in parsed.query if key.lower() in SECRET_KEYS]
    if parsed.password is None and not secret_keys:
        return url  # nothing to hide: as the user typed it
    query = "&".join(f"{quote_plus(key)}={'***' if key in secret_keys else quote_plus(value)}"
                     for key, values in parsed.query.items()
                     for value in ([values] if isinstance(values, str) else values))
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    return f"{shown}?{query}" if query else shown


def check_url(url: str) -> None:
    """Refuse, before any connection, a server URL whose user name or password holds unencoded reserved
    characters ('@', '/', '#', '?'): SQLAlchemy would read part of the password as the host, port or database,
    and the driver would print that part in its error. Such a URL is read differently by SQLAlchemy and by the
    standard library's URL parser (RFC 3986), which is how it is found."""
    if url.startswith(("sqlite", JOURNAL_PREFIX)):
        return
    if _parsed(url) is None:
        raise InputError("storage", f"cannot read {_mask_unparsed(url)}: its user name or password holds '@', '/', "
                         f"'#' or '?' unencoded, so part of it would be read as the host, port or database; "
                         f"{PERCENT_ENCODE}")


def _parsed(url: str) -> URL | None:
    """SQLAlchemy's reading of ``url`` if the standard library reads the same user, password, host and port
    (always for SQLite and journal files, which have no user part), else None."""
    try:
        parsed = make_url(url)
        if url.startswith(("sqlite", JOURNAL_PREFIX)) or "@" not in url:
            return parsed
        split = urlsplit(url)
        standard = (unquote(split.username or "") or None, None if split.password is None else unquote(split.password),
                    (split.hostname or "").lower() or None, split.port)
        ours = (parsed.username or None, parsed.password, (parsed.host or "").lower() or None, parsed.port)
    except Exception:  # noqa: BLE001  (ValueError for a port that is no number, ArgumentError, ...)
        return None
    return parsed if standard == ours else None


def _mask_unparsed(url: str) -> str:
    """Scheme and what follows the last '@' (a password never does), without the query."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    address, query, _ = rest.partition("?")
    return f"{scheme}{separator}{address}" + ("?***" if query else "")


def secrets_in(url: str) -> list[str]:
    """The passwords written in a URL, decoded and as typed (to scrub them from driver messages too)."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001
        return []
    found = [parsed.password or ""]
    if "@" in url and urlsplit(url).password:
        found.append(urlsplit(url).password)  # as typed, %-encoded
    for key, values in parsed.query.items():
        if key.lower() in SECRET_KEYS:
            found += [values] if isinstance(values, str) else list(values)
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every whole occurrence of a secret replaced by ``***``: an occurrence inside a longer word
    is left alone (the password ``p`` must not turn ``port`` into ``***ort``)."""
    for secret in secrets:
        text = re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", "***", text)
    return text


def check_study_name(name: str) -> str:
    """A study name is also a file or folder name (``lmtune-out/<study>``, report and label files), so it may not
    leave the output folder: no path separator, no control character, not '.' or '..'. The pydantic configs of
    every command that names a study validate it with this (``StudyName``)."""
    if not name.strip():
        raise ValueError(f"must not be empty, got {name!r}")
    if "/" in name or "\\" in name or name in (".", "..") or any(ord(c) < 32 for c in name):
        raise ValueError(f"{name!r} cannot name a study: a study name is also a folder name under the output "
                         "folder, so it may not hold '/', '\\' or control characters, nor be '.' or '..'")
    return name


StudyName = Annotated[str, AfterValidator(check_study_name)]


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
    check_url(url)
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
    if url.startswith("sqlite") and path.is_file() and not _is_sqlite(path):
        raise InputError("storage", f"{path} is not an SQLite database (SQLite would overwrite it); give a database "
                         "file or a new name")
    if path.parent.resolve().is_dir() and not os.access(path.parent.resolve(), os.W_OK):
        raise InputError("storage", f"folder {path.parent} is read-only; SQLite and journal files need to write "
                         "beside the database")


def _is_sqlite(path: Path) -> bool:
    """An empty file (SQLite makes it a database) or one that starts with SQLite's header."""
    with open(path, "rb") as file:
        header = file.read(16)
    return header in (b"", b"SQLite format 3\x00")


def _journal_storage(url: str) -> BaseStorage:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(url[len(JOURNAL_PREFIX):])
    if not path.name:
        raise InputError("storage", f"{url!r} names no file; e.g. journal:///studies.log or journal:////shared/x.log")
    if not path.parent.resolve().is_dir():
        raise InputError("storage", f"folder {path.parent} of journal file {path} does not exist")
    try:
        return JournalStorage(JournalFileBackend(str(path)))  # symlink lock: safe on NFS; replays the file
    except OSError as exc:
        raise InputError("storage", f"cannot open journal file {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, IndexError, AssertionError) as exc:  # what replaying a bad line raises
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:120]
        raise InputError("storage", f"{path} is not a journal file Optuna can replay ({reason}); give the journal "
                         "of a study, or a new file") from None


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
    return scrub(text, secrets_in(url))[:300]
