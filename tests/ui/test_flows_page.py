"""The console's Flows pages in a real browser: the list, a flow's graph and YAML, a streamed test run that
fills each node's output as the node ends, the run history and a run's trace waterfall.

The module runs its own gateway (``--no-defaults``): two hosted endpoints, ``small`` and ``large``, on the
stub's tiers (tests/openai_stub.py), and a two-node chat flow ``ask`` over them applied through the flow
API, as tests/flows/test_flow_gateway.py does. The tests build on each other in order.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.cards import tier_cards
from tests.live_gateway import add_endpoint, start_server, write_catalog
from tests.openai_stub import Script

pytestmark = [pytest.mark.ui, pytest.mark.timeout(300)]

PRICES = {"small": (1.0, 2.0), "large": (10.0, 30.0)}
REWRITTEN = "capital of France?"
ANSWER = "The capital of France is Paris, on the Seine."

ASK = """
inputs:
  question: {type: string, is_chat_input: true, default: "capital of france"}
  chat_history: {type: list, is_chat_history: true}
outputs:
  answer: {type: string, reference: "${compose.output}", is_chat_output: true}
nodes:
- name: rewrite
  type: llm
  source: {type: inline, content: "user:\\nRewrite: {{question}}"}
  inputs: {endpoint: small, question: "${inputs.question}", max_tokens: 32}
- name: compose
  use_variants: true
node_variants:
  compose:
    default_variant_id: careful
    variants:
      careful:
        node:
          type: llm
          source: {type: inline, content: "system:\\nYou answer questions.\\nuser:\\nAnswer: {{q}}"}
          inputs: {endpoint: large, q: "${rewrite.output}"}
      cheap:
        node:
          type: llm
          source: {type: inline, content: "user:\\nAnswer briefly: {{q}}"}
          inputs: {endpoint: small, q: "${rewrite.output}"}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, stub):
    """This module's gateway (it replaces tests/ui/conftest.py's): endpoints ``small`` and ``large`` on the
    stub's tiers and the flow ``ask`` over them."""
    home = tmp_path_factory.mktemp("flows-console") / "home"
    write_catalog(home, tier_cards(stub, PRICES), name="tiers.yaml")
    srv = start_server(home, "--no-defaults", extra_env={"HF_HUB_OFFLINE": "1", "MODELYARD_USAGE_FLUSH_S": "0.2"})
    try:
        for name in ("small", "large"):
            add_endpoint(srv, name, f"tier-{name}")
        r = srv.api("PUT", "/api/flows/ask", json={"yaml": ASK, "files": {}, "description": "Rewrites, then answers"})
        assert r.status_code == 201, r.text
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def scripts(stub):
    stub.tiers.clear()
    stub.tiers["small"] = Script(answer=REWRITTEN)
    # Word by word, slowly enough to see the answer arrive after the first node's output.
    stub.tiers["large"] = Script(answer=ANSWER, chunk_delay_s=0.25)


def usd(text: str) -> float:
    return float(re.search(r"\$([0-9.]+)", text).group(1))


def test_the_flows_list_shows_the_flow_with_its_nodes_and_no_runs_yet(console):
    page = console.page
    page.goto(console.url("/ui/flows"))
    expect(page.locator("body[data-loaded=true]")).to_have_count(1)
    expect(page.locator(".mainnav a[aria-current=page]")).to_have_text("Flows")
    row = page.locator("#flows-table tr[data-flow=ask]")
    expect(row.locator("a")).to_have_text("ask")
    expect(row).to_contain_text("Rewrites, then answers")
    expect(row.locator(".flow-chat")).to_have_text("chat")
    expect(row.locator(".flow-nodes")).to_have_text("2 rewrite, compose")
    expect(row.locator("td.num")).to_have_text("v1")
    expect(row.locator(".flow-last-run")).to_have_text("never")
    console.shoot("flows")


def test_the_flow_page_draws_the_graph_shows_the_yaml_and_offers_inputs_and_variants(console):
    page = console.page
    page.click("#flows-table tr[data-flow=ask] a")
    expect(page).to_have_url(console.url("/ui/flows/ask"))
    boxes = page.locator("#dag g[data-node]")
    expect(boxes).to_have_count(2)
    expect(page.locator('#dag g[data-node=rewrite]')).to_contain_text("rewrite")
    expect(page.locator('#dag g[data-node=rewrite]')).to_contain_text("endpoint small")
    expect(page.locator('#dag g[data-node=compose]')).to_contain_text("llm · careful")
    expect(page.locator('#dag g[data-node=compose]')).to_contain_text("endpoint large")
    expect(page.locator("#dag path.dag-edge")).to_have_count(1)
    edge = page.locator("#dag path.dag-edge")
    assert (edge.get_attribute("data-source"), edge.get_attribute("data-target")) == ("rewrite", "compose")
    # top to bottom: compose sits below rewrite, the node it reads
    top = {n: page.locator(f"#dag g[data-node={n}]").bounding_box()["y"] for n in ("rewrite", "compose")}
    assert top["compose"] > top["rewrite"]
    expect(page.locator("#flow-yaml")).to_contain_text("default_variant_id: careful")
    assert page.locator("#flow-yaml").evaluate("e => e.tagName") == "PRE"
    expect(page.locator("[data-input=question]")).to_have_value("capital of france")
    expect(page.locator("[data-input=chat_history]")).to_have_value("[]")
    variant = page.locator("select[data-variant-of=compose]")
    expect(variant).to_have_value("careful")
    expect(variant.locator("option")).to_have_text(["careful (default)", "cheap"])
    expect(page.locator("#no-runs")).to_be_visible()
    console.shoot("flow")


def test_a_test_run_fills_each_nodes_output_as_it_ends_then_the_answer(console):
    page = console.page
    page.fill("[data-input=question]", "capital of france")
    page.click("#run")
    rewrite = page.locator("#node-outputs li[data-node=rewrite]")
    compose = page.locator("#node-outputs li[data-node=compose]")
    # The answer is still arriving word by word while the first node's output is already there.
    expect(compose).to_have_attribute("data-state", "streaming")
    expect(rewrite).to_have_attribute("data-state", "ok")
    expect(rewrite.locator(".node-output")).to_have_text(REWRITTEN)
    expect(rewrite.locator(".node-meta")).to_contain_text("small/small")
    expect(page.locator('#dag g[data-node=rewrite]')).to_have_attribute("data-state", "ok")
    assert compose.locator(".node-output").inner_text() != ANSWER
    # Then the run ends: the streamed node, the graph and the flow's output all show the answer.
    expect(compose).to_have_attribute("data-state", "ok", timeout=30_000)
    expect(compose.locator(".node-output")).to_have_text(ANSWER)
    expect(compose.locator(".node-meta")).to_contain_text("large/large")
    expect(page.locator('#dag g[data-node=compose]')).to_have_attribute("data-state", "ok")
    expect(page.locator("#run-outputs [data-output=answer]")).to_have_text(ANSWER)
    expect(page.locator("#run-status")).to_contain_text("done")
    assert usd(page.locator("#run-status").inner_text()) > 0
    console.shoot("flow-run")


def test_the_run_appears_in_history_with_its_waterfall_one_bar_per_node(console, gateway):
    page = console.page
    run_id = page.locator("#run-status code").inner_text()
    row = page.locator(f"#runs-table tr[data-run='{run_id}']")
    expect(row).to_be_visible()
    expect(row).to_contain_text("ok")
    expect(row).to_contain_text("streamed")
    assert usd(row.inner_text()) > 0
    expect(row).to_have_attribute("aria-selected", "true")
    expect(page.locator("#trace-title")).to_contain_text(run_id)
    bars = page.locator("#waterfall .wf-row[data-node]")
    expect(bars).to_have_count(2)
    expect(page.locator("#waterfall .wf-bar")).to_have_count(2)
    assert [b.get_attribute("data-node") for b in bars.all()] == ["rewrite", "compose"]
    for node, where in (("rewrite", "small/small"), ("compose", "large/large")):
        bar = page.locator(f"#waterfall .wf-row[data-node={node}]")
        expect(bar.locator(".wf-bar.status-ok")).to_have_count(1)
        expect(bar.locator(".wf-where")).to_contain_text(where)
        assert usd(bar.locator(".wf-cost").inner_text()) > 0
    # the answer started after the rewrite and took longer: its bar is further right and wider
    first, second = (page.locator(f"#waterfall .wf-row[data-node={n}] .wf-bar").bounding_box()
                     for n in ("rewrite", "compose"))
    assert second["x"] > first["x"] and second["width"] > first["width"]
    total = usd(page.locator("#trace-cost").inner_text())
    run = gateway.api("GET", f"/api/flows/ask/runs/{run_id}").json()
    assert total == pytest.approx(run["cost_usd"], rel=1e-3)

    # A second run, on the cheap variant, made by a client; clicking it in history loads its waterfall.
    other = gateway.api("POST", "/api/flows/ask/run",
                        json={"inputs": {"question": "q"}, "variants": {"compose": "cheap"}})
    assert other.status_code == 200, other.text
    other_id = other.json()["id"]
    page.click("#runs-refresh")
    page.click(f"#runs-table tr[data-run='{other_id}'] button")
    expect(page.locator("#trace-title")).to_contain_text(other_id)
    expect(page.locator("#waterfall .wf-row[data-node=compose]")).to_contain_text("cheap")
    expect(page.locator("#waterfall .wf-row[data-node=compose] .wf-where")).to_contain_text("small/small")
    expect(page.locator(f"#runs-table tr[data-run='{other_id}']")).to_have_attribute("aria-selected", "true")
    # back on the list, the flow's last run shows
    page.goto(console.url("/ui/flows"))
    expect(page.locator("#flows-table tr[data-flow=ask] .flow-last-run")).to_contain_text("ok")
    page.go_back()
    expect(page.locator("body[data-loaded=true]")).to_have_count(1)

    def open_on_phone(p):
        p.click("#runs-refresh")
        p.click(f"#runs-table tr[data-run='{other_id}'] button")
        expect(p.locator("#waterfall .wf-bar")).to_have_count(2)

    console.shoot("flow-trace", phone_setup=open_on_phone)


def test_a_node_that_fails_shows_the_error_and_the_run_is_in_history(console, stub):
    stub.tiers["large"] = Script(status=400)
    page = console.page
    page.goto(console.url("/ui/flows/ask"))
    expect(page.locator("body[data-loaded=true]")).to_have_count(1)
    before = page.locator("#runs-table tbody tr").count()
    page.click("#run")
    expect(page.locator("#run-error")).to_be_visible(timeout=30_000)
    expect(page.locator("#run-error")).to_contain_text("compose")
    expect(page.locator("#run-status")).to_contain_text("failed")
    expect(page.locator("#runs-table tbody tr")).to_have_count(before + 1)
    expect(page.locator("#runs-table tbody tr").first).not_to_contain_text("ok")
    # the failed run's trace: the first node ok, the failing one red
    expect(page.locator("#waterfall .wf-row[data-node=rewrite] .wf-bar.status-ok")).to_have_count(1)
    expect(page.locator("#waterfall .wf-row[data-node=compose] .wf-bar.status-error")).to_have_count(1)


def test_the_run_route_takes_the_consoles_session_only_with_its_csrf_token(console, new_console):
    refused = console.page.request.post(console.url("/api/flows/ask/run"), data={"inputs": {}})
    assert refused.status == 403 and refused.json()["error"]["code"] == "csrf_failed"
    stranger = new_console()
    assert stranger.page.request.post(stranger.url("/api/flows/ask/run"), data={"inputs": {}}).status == 401
