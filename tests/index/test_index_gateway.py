"""An index built through a real gateway: the `embed` endpoint's all-MiniLM-L6-v2 embeds every chunk through the
gateway's own request path (usage recorded), queries find the right document, and the index survives a restart."""

from __future__ import annotations

import sqlite3

import pytest
from typer.testing import CliRunner

from modelyard.cli import app as cli
from tests.live_gateway import start_server

pytestmark = pytest.mark.model

DOCS = {
    "keys.md": "# API keys\n\nTo rotate a key, create a new key with `modelyard keys create`, move your application "
               "to it, then revoke the old one with `modelyard keys revoke ID`. Revoked keys stop working at once.\n",
    "leave.md": "# Leave\n\nEmployees get 25 days of paid holiday a year. Ask your manager before booking a trip.\n",
    "kitchen.txt": "The office kitchen is cleaned every Friday. Label your food in the fridge.\n",
    "broken.pdf": "this is not a PDF at all",
}


def start(home):
    srv = start_server(home, "--no-defaults")
    if srv.api("GET", "/api/endpoints/embed").status_code == 404:
        r = srv.api("POST", "/api/apply", json={"kind": "endpoint", "spec": {"name": "embed"}})
        assert r.status_code == 201, r.text
        r = srv.api("POST", "/api/apply", json={"kind": "deployment", "spec": {
            "name": "minilm", "endpoint_name": "embed", "model": "all-minilm-l6-v2"}})
        assert r.status_code == 201, r.text
        srv.stop()
        srv = start_server(home, "--no-defaults")  # ready once its instance is
    return srv


def cli_run(srv, *args: str) -> str:
    env = {**srv.env(), "COLUMNS": "200"}
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_an_index_built_and_queried_through_the_gateway_survives_a_restart(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    home = tmp_path / "home"
    srv = start(home)
    try:
        out = cli_run(srv, "index", "create", "handbook", "--from", str(docs), "--embed", "embed", "--chunk", "400",
                      "--overlap", "50")
        assert "broken.pdf" in out  # an unreadable document is skipped and listed
        out = cli_run(srv, "index", "query", "handbook", "how do I rotate a key", "--top-k", "1", "--json")
        assert "keys.md" in out and "revoke" in out
        srv.api("GET", "/api/usage")  # flushes the usage writer
        with sqlite3.connect(home / "modelyard.db") as db:
            embeddings = db.execute("select count(*), sum(prompt_tokens) from usage_records "
                                    "where endpoint = 'embed' and status = 200").fetchone()
        assert embeddings[0] >= 2 and embeddings[1] > 0  # the chunks and the query went through the gateway
    finally:
        srv.stop()
    srv = start_server(home, "--no-defaults")
    try:
        out = cli_run(srv, "index", "query", "handbook", "how many days of holiday", "--top-k", "1", "--json")
        assert "leave.md" in out
    finally:
        srv.stop()
