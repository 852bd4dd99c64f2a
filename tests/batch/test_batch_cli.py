"""`modelyard batch …` against a real gateway: submit and follow, list, show, cancel, download."""

from __future__ import annotations

import json
import re
import time

import pytest
from typer.testing import CliRunner

from tests.batch.batch_helpers import chat_line, wait_batch, write_jsonl
from modelyard.cli import app
from modelyard.cli import batch as batch_cli


def cli(srv, *args: str):
    return CliRunner().invoke(app, ["batch", *args], env={**srv.env(), "COLUMNS": "200"})


def ok(srv, *args: str) -> str:
    result = cli(srv, *args)
    assert result.exit_code == 0, f"modelyard batch {' '.join(args)}:\n{result.output}"
    return result.output


def batch_id(output: str) -> str:
    return re.search(r"(batch_[0-9a-f]+)", output).group(1)


def test_submit_follows_the_job_and_writes_results(gw, tmp_path):
    # Lines without a model: --endpoint names it, --deployment picks green.
    lines = [{**chat_line(f"c{i}"), "body": {"messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 4}}
             for i in range(6)] + [chat_line("bad", max_tokens=0)]
    path = write_jsonl(tmp_path / "requests.jsonl", lines)
    out = ok(gw, "submit", str(path), "--endpoint", "chat", "--deployment", "green", "--mini-batch-size", "2",
             "--max-retries", "2", "--error-threshold", "3", "--output", str(tmp_path / "results.jsonl"),
             "--errors", str(tmp_path / "errors.jsonl"))
    job = batch_id(out)
    assert "completed" in out and "6 succeeded, 1 failed of 7" in out
    assert "results: 6 lines written" in out and "errors: 1 lines written" in out
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [f"c{i}" for i in range(6)]
    [error] = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert error["custom_id"] == "bad" and error["response"]["body"]["error"]["param"] == "max_tokens"

    shown = ok(gw, "show", job)
    assert job in shown and "completed" in shown and "deployment green" in shown
    assert "6 succeeded, 1 failed" in shown and "mini_batch_size 2, max_retries 2, error_threshold 3" in shown
    assert "60 prompt + 120 completion tokens" in shown and "cost $0.000300" in shown  # 6 stub answers

    listed = ok(gw, "list")
    assert job in listed and "chat" in listed

    again = tmp_path / "again.jsonl"
    assert "results: 6 lines written" in ok(gw, "download", job, "--output", str(again))
    assert again.read_text() == (tmp_path / "results.jsonl").read_text()


def test_a_bad_file_prints_the_lines_and_exits_1(gw, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [chat_line("a"), "{oops", chat_line("a")])
    result = cli(gw, "submit", str(path))
    assert result.exit_code == 1
    assert "failed" in result.output and "line 2:" in result.output and "line 3:" in result.output
    assert "duplicate_custom_id" in result.output


def test_unknown_endpoint_is_an_error(gw, tmp_path):
    result = cli(gw, "submit", str(write_jsonl(tmp_path / "x.jsonl", [chat_line("a")])), "--endpoint", "nope")
    assert result.exit_code == 1 and "404" in result.output and "nope" in result.output


def test_ctrl_c_detaches_and_the_job_goes_on(gw, tmp_path, monkeypatch):
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_cli.time, "sleep", interrupted)
    lines = [chat_line(f"d{i}", user="stub:delay_ms=100") for i in range(6)]
    result = cli(gw, "submit", str(write_jsonl(tmp_path / "d.jsonl", lines)))
    monkeypatch.undo()
    assert result.exit_code == 0 and "detached" in result.output
    done = wait_batch(gw.openai(), batch_id(result.output))
    assert done.status == "completed" and done.request_counts.completed == 6


def test_cancel_from_the_command_line(gw, tmp_path):
    lines = [chat_line(f"s{i}", user="stub:delay_ms=200") for i in range(40)]
    out = ok(gw, "submit", str(write_jsonl(tmp_path / "s.jsonl", lines)), "--no-wait", "--mini-batch-size", "1")
    job = batch_id(out)
    time.sleep(0.5)
    assert "cancel" in ok(gw, "cancel", job)
    done = wait_batch(gw.openai(), job)
    assert done.status == "cancelled" and done.request_counts.completed < 40
    result = cli(gw, "cancel", job)
    assert result.exit_code == 1 and "409" in result.output


def test_download_of_a_running_job_is_refused(gw, tmp_path):
    lines = [chat_line(f"r{i}", user="stub:delay_ms=300") for i in range(20)]
    job = batch_id(ok(gw, "submit", str(write_jsonl(tmp_path / "r.jsonl", lines)), "--no-wait",
                      "--mini-batch-size", "1"))
    result = cli(gw, "download", job, "--output", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 1 and "its files are written when it ends" in result.output
    ok(gw, "cancel", job)
    wait_batch(gw.openai(), job)


@pytest.mark.parametrize("args", [["--mini-batch-size", "0"], ["--error-threshold", "-2"],
                                  ["--output-action", "nothing"]])
def test_bad_options(gw, tmp_path, args):
    result = cli(gw, "submit", str(write_jsonl(tmp_path / "o.jsonl", [chat_line("a")])), *args)
    assert result.exit_code == 2
