"""A real gateway in a subprocess: `modelyard up` with its own MODELYARD_HOME,
driven through HTTP. Shared by the server tests (see tests/server/conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    home: Path
    admin_key: str
    process: subprocess.Popen
    log: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def openai(self, key: str | None = None):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=key or self.admin_key, max_retries=0, timeout=120)

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.admin_key}"},
                             timeout=120, **kwargs)

    def env(self) -> dict[str, str]:
        return {"MODELYARD_HOME": str(self.home), "MODELYARD_URL": self.url}

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def start_server(home: Path, *args: str, extra_env: dict[str, str] | None = None, wait_ready: bool = True) -> Server:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, MODELYARD_HOME=str(home))
    env.pop("DATABASE_URL", None)  # the home's SQLite file, unless the test names a database
    env.update(extra_env or {})
    log = home / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "modelyard.cli", "up", "--port", str(port), *args],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            r = httpx.get(url + ("/readyz" if wait_ready else "/healthz"), timeout=2)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(f"server not ready: {log.read_text()[-3000:]}")
    key = (home / "admin.key").read_text().strip()
    return Server(url, home, key, proc, log)


def write_catalog(home: Path, *cards: str, name: str = "stubs.yaml") -> None:
    """Put hosted cards in ``home``'s user catalog."""
    (home / "catalog").mkdir(parents=True, exist_ok=True)
    (home / "catalog" / name).write_text("".join(cards))


def add_endpoint(server: Server, name: str, model: str) -> None:
    """An endpoint `name` with one deployment, also named `name`, of catalog card `model`."""
    r = server.api("POST", "/api/endpoints", json={"name": name})
    assert r.status_code == 201, r.text
    r = server.api("POST", f"/api/endpoints/{name}/deployments", json={"name": name, "model": model})
    assert r.status_code == 201, r.text
