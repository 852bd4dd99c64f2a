"""The job's folder and its training process: files written whole, a lower priority, no process left behind.

Used by the runner (`finetune.jobs`): `write_atomic` (``spec.json``, ``result.json``
appear whole or not at all), `child_setup` (run in the training process before
it starts: ``nice``, and ``PR_SET_PDEATHSIG`` so that it dies with a killed
gateway on Linux), `signal_group` (the process leads its own session, so its
children get the signal too), `stop_leftover` (a process an earlier gateway
left running for the job, found by the pid file and checked by its command
line), and `log_tail` (what a failed job's error quotes from ``worker.log``).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: lines of the training process's log quoted in the error of a job whose process died
LOG_TAIL_LINES = 8


def write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def log_tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    lines = [line for line in lines if line.strip() and not line.startswith("--- attempt")]
    return " | ".join(lines[-LOG_TAIL_LINES:])[-1500:]


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the process leads its own session: its children go too
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_leftover(folder: Path, grace_s: float) -> None:
    """Stop a training process an earlier gateway left running for this job (it would write the same files)."""
    try:
        pid = int((folder / "worker.pid").read_text().strip())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if os.fsencode(str(folder)) not in args:
        return  # the pid now belongs to something else
    log.warning("stopping training process %d left over from an earlier gateway", pid)
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.1)
    if _running(pid):
        signal_group(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie waiting for its parent has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _load_prctl() -> Any:
    """libc's prctl, looked up before any fork (a child should not load libraries)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def child_setup(nice: int) -> None:
    """In the training process before it starts: a lower CPU priority, and death with the gateway (Linux)."""
    if nice:
        os.nice(nice)
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
