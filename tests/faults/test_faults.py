"""Faults underneath a running gateway: its database stops, its disk fills, it is told to stop under load.
Requests keep being answered, and not one usage record is lost.

The outage lasts ``MODELYARD_FAULT_OUTAGE_S`` seconds (8 here; ``make faults`` runs 30).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.cards import hosted_card
from tests.faults.postgres import PrivatePostgres
from tests.live_gateway import Server, start_server, write_catalog

OUTAGE_S = float(os.environ.get("MODELYARD_FAULT_OUTAGE_S", "8"))
PRICE = (1000.0, 2000.0)  # USD per 1M tokens: the stub's 10 + 20 tokens cost $0.05 a call
CALL_COST = (10 * PRICE[0] + 20 * PRICE[1]) / 1e6


def paid_endpoint(gw: Server, name: str, *, budget: dict | None = None) -> str:
    """An endpoint with one paid hosted deployment on the stub; returns its primary key."""
    spec = {"name": name, **({"budget": budget} if budget else {})}
    r = gw.api("POST", "/api/apply", json={"kind": "endpoint", "spec": spec})
    assert r.status_code == 201, r.text
    r2 = gw.api("POST", "/api/apply", json={"kind": "deployment", "spec": {"name": "paid", "endpoint_name": name,
                                                                          "model": "stub-paid"}})
    assert r2.status_code == 201, r2.text
    return r.json()["keys"]["primary"]


class Load:
    """``workers`` threads sending chat requests to ``endpoint`` until stopped; counts answers by status."""

    def __init__(self, gw: Server, endpoint: str, key: str, *, workers: int = 4, user: str | None = None) -> None:
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.latencies: list[tuple[float, float]] = []  # (when it ended, seconds it took)
        self._stop = threading.Event()
        body = {"model": endpoint, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}
        if user:
            body["user"] = user
        self._body = body
        self._client = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        self._lock = threading.Lock()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                r = self._client.post("/v1/chat/completions", json=self._body)
                status = r.status_code
                if status != 200:
                    self.errors.append(r.text[:300])
            except httpx.HTTPError as exc:
                status = -1
                self.errors.append(repr(exc))
            with self._lock:
                self.statuses[status] += 1
                self.latencies.append((time.monotonic(), time.monotonic() - started))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        self._client.close()

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def p50_ms(self, since: float, until: float) -> float:
        took = sorted(t for end, t in self.latencies if since <= end < until)
        return took[len(took) // 2] * 1000 if took else float("nan")


def paid_catalog(home: Path, stub) -> None:
    write_catalog(home, hosted_card("stub-paid", f"{stub.root}/v1", price=PRICE), name="paid.yaml")


def spent_today(gw: Server, endpoint: str) -> float:
    r = gw.api("GET", f"/api/endpoints/{endpoint}/router/budget")
    assert r.status_code == 200, r.text
    return r.json()["spent_today_usd"]


def test_a_database_outage_under_load_answers_every_request_and_loses_no_usage(tmp_path, stub):
    pg = PrivatePostgres()
    home = tmp_path / "home"
    paid_catalog(home, stub)
    env = {"DATABASE_URL": pg.url, "MODELYARD_KEYS_RELOAD_S": "1"}
    gw = start_server(home, "--no-defaults", extra_env=env)
    try:
        key = paid_endpoint(gw, "steady", budget={"usd_per_day": 1_000_000})
        with Load(gw, "steady", key) as load:
            t0 = time.monotonic()
            time.sleep(2)
            before = load.sent
            down = time.monotonic()
            pg.stop()  # as if the database server crashed
            time.sleep(OUTAGE_S)
            during = load.sent - before
            up = time.monotonic()
            pg.start()
            time.sleep(2)
            t1 = time.monotonic()
        assert during > 0, "no request was answered while the database was down"
        assert load.statuses == Counter({200: load.sent}), (load.statuses, load.errors[:3])

        # every answered request has its usage record once the database is back
        deadline = time.monotonic() + 60
        engine = create_engine(pg.url)
        while True:
            with engine.connect() as conn:
                rows = conn.execute(text("select count(*) from usage_records where endpoint = 'steady'")).scalar()
            if rows == load.sent or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        caught_up_s = time.monotonic() - t1
        engine.dispose()
        print(f"\ndatabase outage {OUTAGE_S:.0f} s under load: {load.sent} requests answered, {during} of them while "
              f"it was down; p50 {load.p50_ms(t0, down):.1f} ms before, {load.p50_ms(down, up):.1f} ms during, "
              f"{load.p50_ms(up, t1):.1f} ms after; {rows} usage rows, all written {caught_up_s:.1f} s after the load "
              "stopped")
        assert rows == load.sent
        assert spent_today(gw, "steady") == pytest.approx(load.sent * CALL_COST)
    finally:
        gw.stop()
    gw = start_server(home, "--no-defaults", extra_env=env)  # the budget is read back from the records
    try:
        assert spent_today(gw, "steady") == pytest.approx(load.sent * CALL_COST)
    finally:
        gw.stop()
        pg.close()


def test_sigterm_under_load_finishes_the_requests_in_flight_and_writes_their_usage(tmp_path, stub):
    home = tmp_path / "home"
    paid_catalog(home, stub)
    gw = start_server(home, "--no-defaults")
    key = paid_endpoint(gw, "draining")
    client = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    slow = {"model": "draining", "messages": [{"role": "user", "content": "hi"}], "user": "stub:delay_ms=2000"}

    def ask(stream: bool) -> tuple[int, str]:
        if not stream:
            r = client.post("/v1/chat/completions", json=slow)
            return r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text
        with client.stream("POST", "/v1/chat/completions", json={**slow, "stream": True}) as r:
            return r.status_code, r.read().decode()

    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(ask, i % 2 == 1) for i in range(8)]
            time.sleep(0.7)  # every request is with the stub now
            stopped = time.monotonic()
            gw.process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        code = gw.process.wait(timeout=30)
        took = time.monotonic() - stopped
    finally:
        client.close()
        gw.stop()
    print(f"\nSIGTERM with 8 slow requests in flight: all answered, the gateway exited {took:.1f} s after it")
    assert code in (0, -signal.SIGTERM) and took < 30  # uvicorn re-raises the signal once it has shut down
    for i, (status, body) in enumerate(answers):
        assert status == 200, body
        if i % 2:  # streamed: every chunk, then the end
            assert body.count('"content":"tok "') == 20 and body.endswith("data: [DONE]\n\n"), body[-300:]
        else:
            assert body == "tok " * 20
    with sqlite3.connect(home / "modelyard.db") as db:
        rows = db.execute("select status from usage_records where endpoint = 'draining'").fetchall()
    assert sorted(r[0] for r in rows) == [200] * 8


def fill(path: Path) -> None:
    """Write ``path`` until the disk has not one byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    if os.getuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk is made with a small tmpfs, which needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_a_full_disk_answers_requests_and_writes_their_usage_once_space_is_back(tmp_path, stub):
    home = tmp_path / "small"
    _mount_tmpfs(home, "24m")
    try:
        paid_catalog(home, stub)
        gw = start_server(home, "--no-defaults")
        try:
            key = paid_endpoint(gw, "cramped")
            filler = home / "filler"
            fill(filler)
            client = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
            body = {"model": "cramped", "messages": [{"role": "user", "content": "hello"}]}
            statuses = [client.post("/v1/chat/completions", json=body).status_code for _ in range(20)]
            assert statuses == [200] * 20
            r = gw.api("GET", "/api/usage")  # it cannot write what it has queued: a clear error, not a crash
            assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
            filler.unlink()
            freed = time.monotonic()
            deadline = time.monotonic() + 30
            while gw.api("GET", "/api/usage").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.5)
            print(f"\nfull disk: 20 of 20 requests answered, /api/usage 503 database_unavailable; usage written "
                  f"{time.monotonic() - freed:.1f} s after space was freed")
            client.close()
        finally:
            gw.stop()
        with sqlite3.connect(home / "modelyard.db") as db:
            assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
            assert db.execute("select count(*) from usage_records where endpoint = 'cramped'").fetchone()[0] == 20
    finally:
        subprocess.run(["umount", "-l", str(home)], capture_output=True)
