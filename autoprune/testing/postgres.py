"""A throw-away PostgreSQL server on 127.0.0.1 for tests and benchmarks.

Uses Debian's ``postgresql`` binaries (``/usr/lib/postgresql/*/bin``); as root the server
runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["postgres_bindir", "temporary_postgres"]


def postgres_bindir() -> Path | None:
    """The folder with initdb/pg_ctl, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def temporary_postgres(password: str | None = None) -> Iterator[str]:
    """Start a server, yield ``postgresql+psycopg2://autoprune:PASSWORD@127.0.0.1:PORT/autoprune``.

    Raises RuntimeError with the reason when no server can be started.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
    password = password or "pw-" + secrets.token_hex(8)
    root = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
    data = root / "data"
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*cmd: str) -> None:
        proc = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "autoprune", "--pwfile", str(pwfile),
            "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(root / "log"),
            "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c max_connections=200 -c fsync=off", "start")
        env = {**os.environ, "PGPASSWORD": password}
        subprocess.run(
            [str(bindir.parent / "bin" / "createdb") if (bindir / "createdb").exists() else "createdb",
             "-h", "127.0.0.1", "-p", str(port), "-U", "autoprune", "autoprune"],
            check=True, capture_output=True, env=env, timeout=60,
        )
        yield f"postgresql+psycopg2://autoprune:{password}@127.0.0.1:{port}/autoprune"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
