"""Passwords in storage URLs never print, against a real PostgreSQL server (``pg_cluster``): a password with
unencoded reserved characters is refused before any connection (the server's own log shows none), its encoded
form works, and with a one-letter password every message stays readable (no ``***ort`` for ``port``).

Without PostgreSQL binaries these tests fail in CI (env CI set) and are skipped elsewhere.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from lmtune.cli import main
from tests.pg_cluster import PostgresCluster, free_port

RESERVED = "P@ss:w/rd%41#x"  # the probe's password: '@', ':', '/', '%41' and '#' unencoded


@pytest.fixture(scope="module")
def postgres():
    cluster = PostgresCluster()
    if not cluster.available:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found; .ci/run installs Debian's postgresql",
                        pytrace=False)
        pytest.skip("PostgreSQL binaries not found; install Debian's postgresql (in CI this test fails instead)")
    cluster.start()
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=cluster.port, user="lmtune", password=cluster.password,
                         dbname="postgres", autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET log_connections = on")
        conn.execute("SELECT pg_reload_conf()")
        for role, password in (("qa", RESERVED), ("q1", "p")):
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            conn.execute(f"CREATE DATABASE {role}db OWNER {role}")
    yield cluster
    cluster.stop()


def connections(cluster: PostgresCluster) -> int:
    """Connections the server has logged so far (``log_connections``)."""
    log = Path(cluster.folder, "server.log")
    return log.read_text(errors="replace").count("connection received") if log.exists() else 0


def status(storage: str, tmp_path, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lmtune", "status", "--storage", storage, "--study", "s"])
    with pytest.raises(SystemExit) as exit_:
        main()
    captured = capsys.readouterr()
    return exit_.value.code, captured.err + captured.out


def test_an_unencoded_reserved_character_is_refused_before_any_connection(postgres, tmp_path, capsys, monkeypatch):
    before = connections(postgres)
    code, out = status(f"postgresql://qa:{RESERVED}@127.0.0.1:{postgres.port}/qadb", tmp_path, capsys, monkeypatch)
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: storage: "), out
    assert "percent-encode" in out and f"postgresql+psycopg://***@127.0.0.1:{postgres.port}/qadb" in out
    for part in ("P@ss", "ss:w", "rd%41", "#x", "qa:"):
        assert part not in out
    assert connections(postgres) == before  # nothing reached the server
    assert list(tmp_path.iterdir()) == []


def test_the_encoded_password_connects_and_never_prints(postgres, tmp_path, capsys, monkeypatch):
    encoded = quote(RESERVED, safe="")
    before = connections(postgres)
    code, out = status(f"postgresql://qa:{encoded}@127.0.0.1:{postgres.port}/qadb", tmp_path, capsys, monkeypatch)
    assert code == 2 and out.strip() == (f"error: study: no study 's' in postgresql+psycopg://qa:***@127.0.0.1:"
                                         f"{postgres.port}/qadb; studies there: none"), out
    assert connections(postgres) > before  # it did connect, with the decoded password
    assert RESERVED not in out and encoded not in out


def set_password(cluster: PostgresCluster, role: str, password: str) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=cluster.port, user="lmtune", password=cluster.password,
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {role} PASSWORD '{password}'")


@pytest.mark.parametrize(("case", "words"), [
    ("right password", "error: study: no study 's' in postgresql+psycopg://q1:***@127.0.0.1:"),
    ("wrong password", 'password authentication failed for user "q1"'),
    ("no server there", "port"),
])
def test_a_one_letter_password_leaves_messages_readable(postgres, tmp_path, capsys, monkeypatch, case, words):
    port = free_port() if case == "no server there" else postgres.port
    if case == "wrong password":  # the server's password is no longer the one in the URL
        set_password(postgres, "q1", "other")
    try:
        code, out = status(f"postgresql://q1:p@127.0.0.1:{port}/q1db", tmp_path, capsys, monkeypatch)
    finally:
        set_password(postgres, "q1", "p")
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0], out
    assert "q1:p@" not in out and "q1:***@" in out
    assert "***" not in lines[0].replace("q1:***@", ""), out  # only the password is masked: no '***ort', 'acce***t'
