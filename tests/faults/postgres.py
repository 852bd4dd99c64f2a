"""A private PostgreSQL cluster a test may stop and start (the shared one of `.ci/postgres.sh` serves other tests)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.live_gateway import free_port


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    """``initdb`` in a fresh folder, served on a free port of 127.0.0.1; `stop` is a crash (immediate mode)."""

    def __init__(self) -> None:
        bin_dir = _bin()
        if bin_dir is None:
            pytest.skip("needs PostgreSQL's server binaries (Debian's postgresql; `make test` installs it)")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.skip("needs psycopg: pip install 'modelyard[postgres]'")
        self.bin = bin_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="modelyard-pg-"))
        self._as_root = os.getuid() == 0
        if self._as_root:
            if shutil.which("su") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
                pytest.skip("running as root needs the 'postgres' user to run a PostgreSQL server")
            shutil.chown(self.dir, "postgres")
        self._run(f"{self.bin}/initdb -D {self.dir} -U postgres --auth=trust")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, command: str) -> None:
        argv = ["su", "postgres", "-s", "/bin/sh", "-c", command] if self._as_root else ["sh", "-c", command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{command}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._run(f"{self.bin}/pg_ctl -D {self.dir} -w -l {self.dir}/log "
                  f"-o '-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1' start")

    def stop(self, mode: str = "immediate") -> None:
        self._run(f"{self.bin}/pg_ctl -D {self.dir} -w -m {mode} stop")

    def close(self) -> None:
        try:
            self.stop("fast")
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
