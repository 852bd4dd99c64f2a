"""The training process's plumbing: files written whole, a leftover process stopped, a process that dies with
its gateway, and the log lines a failed job quotes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from modelyard.finetune.process import log_tail, read_json, stop_leftover, write_atomic


def _sleeper(folder: Path) -> subprocess.Popen:
    """A process whose command line names ``folder``, as a training process's does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(folder)],
                            start_new_session=True)
    deadline = time.monotonic() + 10
    while str(folder).encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():  # until it has exec'd
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


def test_a_process_left_running_for_the_job_is_stopped_before_it_runs_again(tmp_path):
    proc = _sleeper(tmp_path)
    (tmp_path / "worker.pid").write_text(str(proc.pid))
    stop_leftover(tmp_path, grace_s=5)
    assert proc.wait(5) is not None


def test_a_pid_that_now_belongs_to_another_process_is_left_alone(tmp_path):
    other = _sleeper(tmp_path / "another-job")
    (tmp_path / "worker.pid").write_text(str(other.pid))
    try:
        stop_leftover(tmp_path, grace_s=1)
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    (tmp_path / "worker.pid").write_text("not a pid")
    stop_leftover(tmp_path, grace_s=1)  # nothing to do, no error


def test_files_are_written_whole_and_bad_ones_read_as_missing(tmp_path):
    write_atomic(tmp_path / "result.json", b'{"adapter": "/a.gguf"}')
    assert read_json(tmp_path / "result.json") == {"adapter": "/a.gguf"}
    assert not list(tmp_path.glob("*.partial"))
    (tmp_path / "torn.json").write_bytes(b'{"adapter": "/a.g')
    assert read_json(tmp_path / "torn.json") is None and read_json(tmp_path / "absent.json") is None


def test_the_log_tail_skips_blank_lines_and_attempt_markers(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text("--- attempt 1, now ---\n" + "".join(f"line {i}\n\n" for i in range(20)))
    assert log_tail(log) == " | ".join(f"line {i}" for i in range(12, 20))
    assert log_tail(tmp_path / "missing.log") == ""
