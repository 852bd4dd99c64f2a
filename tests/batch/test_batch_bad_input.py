"""Bad batch input: every problem is an OpenAI-shaped error that names the line, field and reason.

A bad file fails the job before any line runs (``errors.data`` names each
line); a bad body fails only its line; a bad request to create is a 4xx.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.batch.batch_helpers import chat_line, read_jsonl, submit, wait_batch, write_jsonl


def failed_with(client, path, **extra) -> list:
    batch = submit(client, path, **extra)
    done = wait_batch(client, batch.id)
    assert done.status == "failed", done
    assert done.request_counts.total == 0 and done.output_file_id is None
    return done.errors.data


def test_malformed_jsonl_names_the_line(gw, stub, tmp_path):
    client = gw.openai()
    seen = stub.seen
    path = write_jsonl(tmp_path / "bad.jsonl", [chat_line("a"), chat_line("b"), '{"custom_id": "c", "method": "POST",',
                                                chat_line("d"), "[1, 2]"])
    errors = failed_with(client, path)
    assert [(e.line, e.code) for e in errors] == [(3, "invalid_json_line"), (5, "invalid_json_line")]
    assert "Line 3 is not valid JSON" in errors[0].message and "must be a JSON object" in errors[1].message
    assert stub.seen == seen  # nothing ran


def test_unsupported_and_mismatched_urls(gw, tmp_path):
    client = gw.openai()
    path = write_jsonl(tmp_path / "urls.jsonl", [
        chat_line("a"),
        chat_line("b", url="/v1/images/generations"),
        {"custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {"model": "embed", "input": "x"}},
        {**chat_line("d"), "method": "GET"},
    ])
    errors = failed_with(client, path)
    assert [(e.line, e.code, e.param) for e in errors] == [
        (2, "unsupported_url", "url"), (3, "mismatched_url", "url"), (4, "invalid_request", "method")]
    assert "'/v1/images/generations' is not supported" in errors[0].message


def test_duplicate_custom_id_names_both_lines(gw, tmp_path):
    client = gw.openai()
    errors = failed_with(client, write_jsonl(tmp_path / "dup.jsonl", [chat_line("a"), chat_line("b"), chat_line("a")]))
    [e] = errors
    assert (e.line, e.code, e.param) == (3, "duplicate_custom_id", "custom_id")
    assert "already used on line 1" in e.message


def test_missing_line_fields(gw, tmp_path):
    client = gw.openai()
    errors = failed_with(client, write_jsonl(tmp_path / "fields.jsonl", [
        {"method": "POST", "url": "/v1/chat/completions", "body": {}},
        {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": "hi"},
        {**chat_line("y"), "extra": 1},
    ]))
    assert [(e.line, e.param) for e in errors] == [(1, "custom_id"), (2, "body"), (3, "extra")]


def test_a_body_that_fails_validation_fails_only_its_line(gw, tmp_path):
    client = gw.openai()
    path = write_jsonl(tmp_path / "bodies.jsonl", [
        chat_line("ok1"),
        chat_line("neg", max_tokens=-5),
        {**chat_line("nomsg"), "body": {"model": "chat"}},
        chat_line("typo", temprature=0.5),
        chat_line("stream", stream=True),
        chat_line("ok2"),
    ])
    done = wait_batch(client, submit(client, path).id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 4)
    assert [o["custom_id"] for o in read_jsonl(client, done.output_file_id)] == ["ok1", "ok2"]
    errors = {o["custom_id"]: o["response"] for o in read_jsonl(client, done.error_file_id)}
    assert {k: (v["status_code"], v["body"]["error"]["param"]) for k, v in errors.items()} == {
        "neg": (400, "max_tokens"), "nomsg": (400, "messages"), "typo": (400, "temprature"), "stream": (400, "stream")}
    assert errors["nomsg"]["body"]["error"]["code"] == "missing_required_parameter"


def test_unknown_endpoint(gw, tmp_path):
    client = gw.openai()
    path = write_jsonl(tmp_path / "unknown.jsonl", [chat_line("a"), chat_line("b", model="nope")])
    [e] = failed_with(client, path)
    assert (e.line, e.code, e.param) == (2, "model_not_found", "body.model")
    assert "endpoint 'nope' does not exist" in e.message

    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    with pytest.raises(openai.NotFoundError) as exc:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                              extra_body={"model": "nope"})
    assert exc.value.body["code"] == "model_not_found" and exc.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as exc:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"model": "chat", "deployment": "purple"})
    assert exc.value.body["code"] == "deployment_not_found"
    # Without `model`, the deployment is checked against each line's endpoint.
    [e] = failed_with(client, write_jsonl(tmp_path / "dep.jsonl", [chat_line("a")]), metadata={"deployment": "purple"})
    assert (e.line, e.code) == (1, "deployment_not_found")


def test_an_endpoint_that_does_not_serve_the_batch_kind(gw, tmp_path):
    client = gw.openai()
    lines = [{"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "chat", "input": "x"}}]
    [e] = failed_with(client, write_jsonl(tmp_path / "task.jsonl", lines), endpoint="/v1/embeddings")
    assert (e.line, e.code) == (1, "wrong_task")


def test_empty_file_is_refused_at_upload(gw, tmp_path):
    client = gw.openai()
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(file=("empty.jsonl", b""), purpose="batch")
    assert exc.value.body["code"] == "empty_file" and exc.value.body["param"] == "file"
    # A file of blank lines has no requests: the job says so.
    [e] = failed_with(client, write_jsonl(tmp_path / "blank.jsonl", ["", "  "]))
    assert e.code == "empty_file"


def test_a_file_over_the_size_limit_is_refused(gw):
    client = gw.openai()
    big = (json.dumps(chat_line("x" * 100)) + "\n").encode() * 400  # > 64 KiB (the test gateway's limit)
    with pytest.raises(openai.APIStatusError) as exc:
        client.files.create(file=("big.jsonl", big), purpose="batch")
    assert exc.value.status_code == 413 and exc.value.body["code"] == "file_too_large"
    assert "65536 bytes" in exc.value.body["message"]

    # Without a content-length (a chunked upload), it is cut off once it passes the limit.
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode()

    def chunks():
        yield head
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]
        yield f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(gw.base_url + "/files", content=chunks(),
                   headers={"Authorization": f"Bearer {gw.admin_key}",
                            "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    assert not [p for p in (gw.home / "files").iterdir() if p.name.startswith(".tmp-")]  # nothing left behind


def test_too_many_lines(gw, tmp_path):
    client = gw.openai()
    lines = [{"custom_id": str(i), "method": "POST", "url": "/v1/embeddings", "body": {"model": "embed", "input": "x"}}
             for i in range(501)]  # the test gateway allows 500
    errors = failed_with(client, write_jsonl(tmp_path / "many.jsonl", lines), endpoint="/v1/embeddings")
    assert errors[-1].code == "too_many_lines" and "500" in errors[-1].message


@pytest.mark.parametrize("change, param", [
    ({"endpoint": "/v1/images/generations"}, "endpoint"),
    ({"completion_window": "48h"}, "completion_window"),
    ({"extra_body": {"mini_batch_size": 0}}, "mini_batch_size"),
    ({"extra_body": {"max_retries": 0}}, "max_retries"),
    ({"extra_body": {"error_threshold": -2}}, "error_threshold"),
    ({"extra_body": {"output_action": "everything"}}, "output_action"),
    ({"extra_body": {"max_share": 1.5}}, "max_share"),
    ({"metadata": {"mini_batch_size": "many"}}, "mini_batch_size"),
    ({"extra_body": {"colour": "blue"}}, "colour"),
])
def test_bad_create_requests_name_the_field(gw, tmp_path, change, param):
    client = gw.openai()
    with open(write_jsonl(tmp_path / "ok.jsonl", [chat_line("a")]), "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    args = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **change}
    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.create(**args)
    assert exc.value.body["param"] == param


def test_an_unknown_input_file(gw):
    with pytest.raises(openai.NotFoundError) as exc:
        gw.openai().batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    assert exc.value.body["code"] == "file_not_found" and exc.value.body["param"] == "input_file_id"
