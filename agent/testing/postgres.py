"""A PostgreSQL server of a test's own: `initdb` in a temporary folder, `pg_ctl` on a free port.

For the fleet side's tests (`edge-fleet` writes to PostgreSQL): never the machine's own
server. Run as root, the cluster belongs to the `postgres` user (initdb refuses root);
the server listens on loopback only, with trust authentication for local tests.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from agent.testing.processes import free_tcp_port


def postgres_bin_dir() -> Path | None:
    """Where the server's binaries are, if installed: Debian's newest, else PATH's."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[4]))
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class Postgres:
    """`with Postgres() as pg:` a running server; `pg.dsn` connects to its database `fleet`."""

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL's server is not installed (Debian: postgresql)")
        self.bin = bin_dir
        self.port = free_tcp_port()
        self._dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self._dir / "data"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self._dir, entry.pw_uid, entry.pw_gid)
        self.dsn = f"host=127.0.0.1 port={self.port} dbname=fleet user=postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            made = self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                             "--no-sync", "-E", "UTF8")
            if made.returncode != 0:
                raise RuntimeError(f"initdb failed: {made.stderr.strip()}")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self._dir} "
                   "-c fsync=off -c full_page_writes=off")
        started = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-t", "60",
                            "-l", str(self._dir / "server.log"), "start")
        if started.returncode != 0:
            log = (self._dir / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()}\n{log}")
        exists = self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                           "-Atc", "SELECT 1 FROM pg_database WHERE datname = 'fleet'")
        if exists.stdout.strip() != "1":
            created = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                                "postgres", "fleet")
            if created.returncode != 0:
                raise RuntimeError(f"createdb failed: {created.stderr.strip()}")

    def stop(self, mode: str = "fast") -> None:
        """`fast` (clean), or `immediate` (as a crash: no checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop("immediate")
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)
