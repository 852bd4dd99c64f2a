"""``modelyard index`` against a served index API (the gateway faked at its seams)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from modelyard.cli.index import app as index_app_cli
from modelyard.cli.index import parse_filters
from modelyard.index import IndexRegistry

from .helpers import ADMIN_KEY, HashEmbedder, LiveServer, fake_gateway, index_app

cli_app = typer.Typer()
cli_app.add_typer(index_app_cli, name="index")  # as cli/__init__.py registers it


@pytest.fixture
def served(tmp_path):
    registry = IndexRegistry(tmp_path / "indexes")
    gateway = fake_gateway(registry, HashEmbedder())
    server = LiveServer(index_app(gateway))
    yield server, gateway
    server.stop()
    registry.close()


def run(served, *args: str, input: str | None = None):
    server, _ = served
    env = {"MODELYARD_URL": server.url, "MODELYARD_ADMIN_KEY": ADMIN_KEY, "COLUMNS": "200"}
    return CliRunner().invoke(cli_app, ["index", *args], env=env, input=input)


def ok(served, *args: str) -> str:
    result = run(served, *args)
    assert result.exit_code == 0, f"modelyard index {' '.join(args)}:\n{result.output}"
    return result.output


def test_create_from_a_folder_then_query_add_remove_and_delete(served, docs):
    out = ok(served, "create", "handbook", "--from", str(docs), "--embed", "embed", "--chunk", "300", "--overlap", "50")
    assert "4 documents added" in out and "1 skipped" in out
    assert "broken.txt: is binary, not text" in out

    answer = ok(served, "query", "handbook", "how do I rotate a key", "--top-k", "2")
    assert answer.index("1.") < answer.index("keys.md") and "section Rotating keys" in answer

    as_json = json.loads(ok(served, "query", "handbook", "lunch", "--filter", "format=html", "--json"))
    assert [h["document"]["path"] for h in as_json["data"]] == ["cafeteria.html"]

    listed = ok(served, "list")
    assert "handbook" in listed and "300/50" in listed and "384" in listed

    (docs / "guide" / "new.md").write_text("# New\n\nA new page about zebras.")
    (docs / "backups.txt").write_text("Backups now run every hour.")
    added = ok(served, "add", "handbook", str(docs / "guide" / "new.md"), str(docs / "backups.txt"))
    assert "2 documents added" in added
    shown = ok(served, "show", "handbook")
    assert "guide/new.md" in shown and "5 documents" in shown  # named relative to the folder it was created from

    removed = ok(served, "remove", "handbook", "guide/new.md", str(docs / "backups.txt"))
    assert "removed guide/new.md" in removed and "removed backups.txt" in removed

    assert "deleted" in ok(served, "delete", "handbook", "--yes")
    assert "handbook" not in ok(served, "list")


def test_a_create_stopped_by_the_endpoint_continues_when_run_again(served, tmp_path):
    _, gateway = served
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        (folder / f"doc{i:02}.txt").write_text(f"Document {i}. " + "Some words of text. " * 20)
    gateway.embedder = HashEmbedder(fail_from_call=2)
    first = run(served, "create", "kb", "--from", str(folder), "--chunk", "200", "--overlap", "0")
    assert first.exit_code == 1
    assert "stopped" in first.output and "run the same command again" in first.output.lower()
    stored = len(gateway.indexes.get("kb"))
    assert 0 < stored < 40

    gateway.embedder = HashEmbedder()
    second = ok(served, "create", "kb", "--from", str(folder), "--chunk", "200", "--overlap", "0")
    assert "exists: adding what it does not hold yet" in second
    assert f"{40 - stored} documents added" in second and f"{stored} unchanged" in second
    assert len(gateway.indexes.get("kb")) == 40

    other = run(served, "create", "kb", "--from", str(folder), "--chunk", "500")
    assert other.exit_code == 1 and "exists with other settings" in other.output


def test_errors_from_the_server_are_one_line(served):
    result = run(served, "query", "missing", "hello")
    assert result.exit_code == 1 and "error 404" in result.output and "no index named 'missing'" in result.output


def test_filters_are_parsed_as_json_values_where_they_can_be():
    assert parse_filters(["section=Keys", "page=3", "tag=a", "tag=b", 'title="2024"', "flag=true"]) == {
        "section": "Keys", "page": 3, "tag": ["a", "b"], "title": "2024", "flag": True}
    with pytest.raises(typer.BadParameter):
        parse_filters(["nokey"])


def test_batches_too_large_for_the_server_are_split_and_a_huge_file_is_listed(tmp_path):
    registry = IndexRegistry(tmp_path / "indexes")
    gateway = fake_gateway(registry, HashEmbedder(), max_body_bytes=40_000)
    server = LiveServer(index_app(gateway))
    try:
        folder = tmp_path / "docs"
        folder.mkdir()
        for i in range(6):
            (folder / f"page{i}.txt").write_text(f"Page {i}. " + "Plenty of words on this page. " * 400)  # ~12 KB
        (folder / "huge.txt").write_text("Huge. " * 20_000)  # ~120 KB: more than one request may carry
        result = run((server, gateway), "create", "kb", "--from", str(folder))
        assert result.exit_code == 0, result.output
        assert "6 documents added" in result.output
        assert "huge.txt: larger than the server accepts" in result.output
    finally:
        server.stop()
        registry.close()
