"""A throwaway PostgreSQL server on loopback for tests: ``initdb`` into a temp dir, ``pg_ctl start``, one database.

Used by the ``postgres_url`` fixture of ``tests/agent/test_postgres.py``. When the binaries are missing or the
server does not start, :func:`start` raises :class:`PostgresUnavailable` with the reason (the missing binary, or
the last lines of the server's log); the fixture turns it into a ``pytest.skip``.

Postgres refuses to run as root: as root, the server runs as the ``postgres`` system user (``runuser``) in a
directory that user owns; otherwise it runs as the current user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresUnavailable", "PostgresServer", "start", "running_postgres"]

_SEARCH = ["/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin"]
_USER = "pllm"  # the superuser initdb creates; trust auth on loopback, so no password


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why."""


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for pattern in _SEARCH:
        for folder in sorted(glob.glob(pattern), reverse=True):  # the newest version first
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise PostgresUnavailable(f"the PostgreSQL binary {name!r} is not on PATH nor in {', '.join(_SEARCH)} "
                              "(install postgresql, e.g. apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class PostgresServer:
    root: Path
    port: int
    database: str
    run_as: list[str]  # the command prefix that runs a binary as the server's owner
    pg_ctl: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return self.url_of(self.database)

    def url_of(self, database: str) -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, database: str) -> str:
        """Create another (empty) database on this server; returns its URL."""
        import psycopg

        with psycopg.connect(self.url_of("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        return self.url_of(database)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        try:
            subprocess.run([*self.run_as, self.pg_ctl, "-D", str(self.data), "stop", "-m", "fast", "-w"],
                           capture_output=True, timeout=30, check=False)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _run(cmd: list[str], what: str, log: Path | None = None, timeout: float = 60) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostgresUnavailable(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-1500:]
        if log is not None:
            detail += f"\nlast lines of {log}:\n{_tail(log)}"
        raise PostgresUnavailable(f"{what} failed (exit {proc.returncode}): {detail}")


def start(database: str = "pllm_test") -> PostgresServer:
    """Start a fresh server on 127.0.0.1 (a free port, socket in its own dir) with ``database`` created."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    _binary("postgres")
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="pllm-pg-"))  # short: the socket path must stay under ~100 chars
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable("running as root and `runuser` is missing: postgres will not run as root")
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable("running as root and there is no `postgres` user to run the server as") from exc
        os.chown(root, owner.pw_uid, owner.pw_gid)
        run_as = [runuser, "-u", "postgres", "--"]
    server = PostgresServer(root=root, port=_free_port(), database=database, run_as=run_as, pg_ctl=pg_ctl)
    try:
        # -N: no fsync (a test cluster); C locale: no dependence on the machine's locales.
        _run([*run_as, initdb, "-D", str(server.data), "-U", _USER, "--auth=trust", "-N", "-E", "UTF8",
              "--locale=C"], "initdb")
        options = f"-k {root} -h 127.0.0.1 -p {server.port} -F"
        _run([*run_as, pg_ctl, "-D", str(server.data), "-o", options, "-l", str(server.log), "start", "-w",
              "-t", "30"], "pg_ctl start", log=server.log)
        _create_database(server)
    except BaseException:
        server.stop()
        raise
    return server


def _create_database(server: PostgresServer) -> None:
    import psycopg

    try:
        server.create_database(server.database)
    except psycopg.Error as exc:
        raise PostgresUnavailable(f"the server started but creating database {server.database!r} failed: {exc}\n"
                                  f"last lines of {server.log}:\n{_tail(server.log)}") from exc


@contextlib.contextmanager
def running_postgres(database: str = "pllm_test") -> Iterator[PostgresServer]:
    """:func:`start`, then stop and remove the server when the block ends."""
    server = start(database)
    try:
        yield server
    finally:
        server.stop()
