"""Revoking an API key: through the API and the CLI, seen by a second gateway on the same database."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from typer.testing import CliRunner

from modelyard.cli import app as cli
from tests.live_gateway import start_server


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("keys") / "home"


@pytest.fixture(scope="module")
def gw(home):
    srv = start_server(home, "--no-defaults", extra_env={"MODELYARD_KEYS_RELOAD_S": "0.3"})
    yield srv
    srv.stop()


def models_status(url: str, key: str) -> int:
    return httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def test_a_revoked_key_is_refused_at_once_and_listed_as_revoked(gw):
    created = gw.api("POST", "/api/keys", json={"name": "app"}).json()
    assert models_status(gw.url, created["key"]) == 200

    r = gw.api("DELETE", f"/api/keys/{created['id']}")
    assert r.status_code == 200 and r.json()["revoked"] is True
    with pytest.raises(openai.AuthenticationError):
        gw.openai(created["key"]).models.list()
    listed = {k["id"]: k for k in gw.api("GET", "/api/keys").json()["data"]}
    assert listed[created["id"]]["revoked"] is True
    assert gw.api("DELETE", f"/api/keys/{created['id']}").status_code == 200  # revoking twice is fine


@pytest.mark.parametrize("key_id", ["999999", "160571204936508122056599157088452608", "abc", "-1"])
def test_revoking_a_key_that_does_not_exist_is_a_404_naming_it(gw, key_id):
    r = gw.api("DELETE", f"/api/keys/{key_id}")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "key_not_found" and r.json()["error"]["param"] == "key_id"


def test_an_admin_key_cannot_revoke_itself(gw):
    me = next(k for k in gw.api("GET", "/api/keys").json()["data"] if k["is_admin"])
    r = gw.api("DELETE", f"/api/keys/{me['id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "cannot_revoke_own_key"
    assert models_status(gw.url, gw.admin_key) == 200
    other = gw.api("POST", "/api/keys", json={"name": "plain"}).json()
    r = httpx.delete(f"{gw.url}/api/keys/{me['id']}", headers={"Authorization": f"Bearer {other['key']}"})
    assert r.status_code == 403  # only an admin key revokes


def test_cli_keys_revoke(gw, monkeypatch):
    for k, v in gw.env().items():
        monkeypatch.setenv(k, v)
    created = gw.api("POST", "/api/keys", json={"name": "cli-app"}).json()
    result = CliRunner().invoke(cli, ["keys", "revoke", str(created["id"])])
    assert result.exit_code == 0, result.output
    assert "revoked" in result.output and "cli-app" in result.output
    assert models_status(gw.url, created["key"]) == 401
    result = CliRunner().invoke(cli, ["keys", "revoke", "424242"])
    assert result.exit_code == 1 and "No API key with id '424242'" in result.output


def test_a_key_revoked_through_one_gateway_stops_working_on_another_sharing_the_database(gw, home):
    created = gw.api("POST", "/api/keys", json={"name": "shared"}).json()
    second = start_server(home, "--no-defaults", extra_env={"MODELYARD_KEYS_RELOAD_S": "0.3"})
    try:
        assert models_status(second.url, created["key"]) == 200
        assert gw.api("DELETE", f"/api/keys/{created['id']}").status_code == 200
        deadline = time.monotonic() + 10
        while models_status(second.url, created["key"]) != 401:
            assert time.monotonic() < deadline, "the second gateway kept accepting a revoked key"
            time.sleep(0.1)
        # and a key created on the second gateway is accepted by the first
        fresh = second.api("POST", "/api/keys", json={"name": "from-second"}).json()
        deadline = time.monotonic() + 10
        while models_status(gw.url, fresh["key"]) != 200:
            assert time.monotonic() < deadline, "the first gateway never saw the new key"
            time.sleep(0.1)
    finally:
        second.stop()
