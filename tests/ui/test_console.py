"""The web console in a real browser against a real gateway: what a person sees and does.

One gateway (`modelyard up`, Gemma 3 270M as ``default``) and one headless
Chromium serve the whole module; the tests run in order and build on each
other like a session at the console: sign in, try gemma from the catalog,
deploy a second deployment through the wizard, split traffic 90/10, watch
the split in monitoring, regenerate keys, look at usage and batch jobs.
Every bad input is tried in the browser and checked through the management
API to have changed nothing. Screenshots land in ``test-artifacts/ui/``.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.ui, pytest.mark.model, pytest.mark.timeout(600)]


def endpoints(gateway) -> dict[str, dict]:
    return {e["name"]: e for e in gateway.api("GET", "/api/endpoints").json()["data"]}


def deployment_names(gateway, name: str) -> list[str]:
    return [d["name"] for d in endpoints(gateway)[name]["deployments"]]


def walk_wizard(page, *, endpoint: str, name: str, new: bool = False, traffic: str | None = None) -> None:
    """From the wizard's first step to its review, with the settings as they are."""
    page.click("#w-next")
    if new:
        page.check("#w-ep-new")
        page.fill("#w-ep-name", endpoint)
    else:
        page.check("#w-ep-existing")
        page.select_option("#w-ep-select", endpoint)
    page.click("#w-next")
    page.fill("#w-dep-name", name)
    page.click("#w-next")
    page.click("#w-next")
    if traffic:
        page.check(traffic)
    page.click("#w-next")
    expect(page.locator("#w-yaml")).to_contain_text(f"name: {name}")


# --- signing in ---------------------------------------------------------------------------------


def test_wrong_admin_key_shows_a_message_and_gives_no_session(new_console, gateway):
    visitor = new_console()
    page = visitor.page
    page.goto(visitor.url("/ui/endpoints"))
    expect(page).to_have_url(visitor.url("/ui/login?next=/ui/endpoints"))
    visitor.sign_in("my-not-the-admin-key")
    expect(page.locator("#login-error")).to_have_text("That is not the admin key.")
    expect(page.locator("#key")).to_have_attribute("aria-invalid", "true")
    assert not [c for c in visitor.context.cookies() if c["name"] == "modelyard_session"]
    # The API refuses the browser too: no cookie, no access.
    assert page.request.get(visitor.url("/api/endpoints")).status == 401
    def wrong_key_on_phone(p):
        p.fill("#key", "my-not-the-admin-key")
        p.click("#login-form button[type=submit]")
        expect(p.locator("#login-error")).to_be_visible()

    visitor.shoot("login-wrong-key", phone_setup=wrong_key_on_phone)


def test_session_cookie_is_httponly_strict_and_state_changes_need_the_csrf_header(console, gateway):
    cookie = next(c for c in console.context.cookies() if c["name"] == "modelyard_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert console.page.evaluate("document.cookie") == ""  # scripts cannot read it
    request = console.page.request
    assert request.get(console.url("/api/endpoints")).status == 200
    refused = request.patch(console.url("/api/endpoints/default"), data={"description": "csrf"})
    assert refused.status == 403 and refused.json()["error"]["code"] == "csrf_failed"
    assert endpoints(gateway)["default"]["description"] == ""


# --- catalog and try-it -------------------------------------------------------------------------


def test_catalog_finds_gemma_and_try_it_streams_an_answer(console):
    page = console.page
    page.goto(console.url("/ui/catalog"))
    total = page.locator(".model-card").count()
    assert total >= 10
    console.shoot("catalog")
    page.fill("#q", "gemma")
    expect(page.locator("#count")).to_have_text(f"1 of {total} models")
    card = page.locator(".model-card:visible")
    expect(card).to_have_count(1)
    expect(card).to_contain_text("Gemma 3 270M")
    expect(card).to_contain_text("32K tokens")
    expect(card).to_contain_text("≈")  # a memory estimate for a local model
    page.select_option("#f-format", "hosted")
    expect(page.locator("#no-match")).to_be_visible()
    page.select_option("#f-format", "")
    card.click()
    expect(page).to_have_url(console.url("/ui/models/gemma-3-270m"))
    expect(page.locator("#try-target-name")).to_have_text("default/gemma-3-270m")

    page.fill("#chat-max", "12")
    page.fill("#chat-input", "Tell me about the sea.")
    page.click("#chat-send")
    answer = page.locator(".bubble.assistant[data-done=true]")
    expect(answer).to_have_count(1, timeout=120_000)
    assert int(answer.get_attribute("data-chunks")) >= 2, "the answer arrived as several streamed chunks"
    assert answer.locator(".text").inner_text().strip()
    expect(answer.locator(".meta")).to_contain_text("gemma-3-270m")
    console.shoot("model-gemma")


def test_a_model_that_runs_nowhere_offers_to_deploy_it(console):
    page = console.page
    page.goto(console.url("/ui/models/qwen2.5-0.5b-instruct"))
    expect(page.locator("#try-it")).to_contain_text("not running anywhere")
    expect(page.locator("#try-it a.button")).to_have_attribute("href", "/ui/deploy?model=qwen2.5-0.5b-instruct")


# --- bad input: names, a failing deploy ---------------------------------------------------------


def test_invalid_endpoint_name_is_refused_with_the_servers_message(console, gateway):
    before = sorted(endpoints(gateway))
    page = console.page
    page.goto(console.url("/ui/endpoints"))
    expect(page.locator("#endpoints-table tbody tr")).to_have_count(len(before))
    console.shoot("endpoints")
    page.fill("#ne-name", "9 lives!")
    page.click("#new-endpoint button[type=submit]")
    error = page.locator("#ne-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("'name'")
    expect(error).to_contain_text("not a valid name")
    expect(page.locator("#ne-name")).to_have_attribute("aria-invalid", "true")
    assert sorted(endpoints(gateway)) == before

    def bad_name_on_phone(p):
        p.fill("#ne-name", "9 lives!")
        p.click("#new-endpoint button[type=submit]")
        expect(p.locator("#ne-error")).to_be_visible()

    console.shoot("endpoints-invalid-name", phone_setup=bad_name_on_phone)
    assert sorted(endpoints(gateway)) == before

    # The wizard checks a new endpoint's name as it is typed, and will not go on.
    page.goto(console.url("/ui/deploy?model=gemma-3-270m"))
    page.click("#w-next")
    page.check("#w-ep-new")
    page.fill("#w-ep-name", "x!")
    expect(page.locator("#w-ep-name-error")).to_contain_text("3–32 characters")
    expect(page.locator("#w-next")).to_be_disabled()
    page.fill("#w-ep-name", "default")
    expect(page.locator("#w-ep-name-error")).to_contain_text('already an endpoint "default"')
    assert sorted(endpoints(gateway)) == before


def test_a_deploy_that_cannot_download_shows_why_and_changes_nothing(console, gateway):
    before = endpoints(gateway)
    page = console.page
    page.goto(console.url("/ui/deploy?model=qwen2.5-0.5b-instruct"))
    expect(page.locator("#w-model-info")).to_contain_text("Not downloaded yet")
    walk_wizard(page, endpoint="qwen-chat", name="blue", new=True)  # the first deployment takes all traffic
    expect(page.locator("#w-yaml")).to_contain_text("model: qwen2.5-0.5b-instruct")
    page.click("#w-next")  # Deploy
    error = page.locator("#w-deploy-error")
    expect(error).to_be_visible(timeout=60_000)
    expect(error).to_contain_text("Could not download")
    expect(error).to_contain_text("HF_HUB_OFFLINE")
    expect(error).to_contain_text("Nothing was changed")
    expect(page.locator("#w-progress li.failed")).to_contain_text("Download weights")
    def fail_on_phone(p):
        walk_wizard(p, endpoint="qwen-chat", name="blue", new=True)
        p.click("#w-next")
        expect(p.locator("#w-deploy-error")).to_be_visible(timeout=60_000)

    console.shoot("deploy-failed", phone_setup=fail_on_phone)
    after = endpoints(gateway)
    assert sorted(after) == sorted(before) and "qwen-chat" not in after
    assert deployment_names(gateway, "default") == [d["name"] for d in before["default"]["deployments"]]
    assert after["default"]["traffic"] == before["default"]["traffic"]


# --- the wizard ---------------------------------------------------------------------------------


def test_wizard_deploys_a_second_deployment_with_live_progress(console, gateway, artifacts):
    page = console.page
    page.goto(console.url("/ui/deploy?model=gemma-3-270m"))
    console.shoot("deploy-model")
    page.click("#w-next")
    page.check("#w-ep-existing")
    page.select_option("#w-ep-select", "default")
    page.click("#w-next")
    expect(page.locator("#w-dep-name")).to_have_value("gemma-3-270m-2")  # a free name is suggested
    page.fill("#w-dep-name", "gemma-3-270m")
    expect(page.locator("#w-dep-name-error")).to_contain_text("already has a deployment")
    page.fill("#w-dep-name", "green")
    page.click("#w-next")
    page.fill("#w-instances", "0")
    expect(page.locator("#w-settings-error")).to_contain_text("1 to 64")
    page.fill("#w-instances", "1")
    page.fill("#w-timeout", "60000")
    page.click("#w-next")
    page.check("#w-tr-none")
    page.click("#w-next")
    expect(page.locator("#w-yaml")).to_contain_text("name: green")
    expect(page.locator("#w-yaml")).to_contain_text("endpoint_name: default")
    expect(page.locator("#w-yaml")).to_contain_text("request_timeout_ms: 60000")
    expect(page.locator("#w-cli")).to_have_text(
        "modelyard deployment create default green --model gemma-3-270m --instances 1 --timeout-ms 60000")
    console.shoot("deploy-review", phone_setup=lambda p: walk_wizard(p, endpoint="default", name="green",
                                                                      traffic="#w-tr-none"))
    page.click("#w-next")
    expect(page.locator("#w-progress li")).to_have_count(4)
    expect(page.locator("#w-done")).to_be_visible(timeout=240_000)
    expect(page.locator("#w-progress li.done")).to_have_count(4)
    expect(page.locator("#w-progress")).to_contain_text("1/1 instances ready")
    expect(page.locator("#w-progress")).to_contain_text("0% of live traffic")
    page.screenshot(path=str(artifacts / "deploy-done-1280.png"), full_page=True)

    desc = endpoints(gateway)["default"]
    green = next(d for d in desc["deployments"] if d["name"] == "green")
    assert green["state"] == "ready" and green["model"] == "gemma-3-270m"
    assert green["request_settings"]["request_timeout_ms"] == 60000
    assert desc["traffic"] == {"gemma-3-270m": 100}


# --- the endpoint page --------------------------------------------------------------------------


def test_traffic_that_does_not_sum_to_100_is_refused_inline_then_90_10_is_saved(console, gateway):
    page = console.page
    page.goto(console.url("/ui/endpoints/default#traffic"))
    weights = page.locator("#traffic-form input.weight")
    expect(weights).to_have_count(2)
    page.fill("input[name='weight-gemma-3-270m']", "80")
    page.fill("input[name='weight-green']", "10")
    error = page.locator("#traffic-error")
    expect(error).to_contain_text("must add up to 100% — now 90%")
    expect(page.locator("#traffic-save")).to_be_disabled()
    console.shoot("endpoint-traffic-invalid", phone_setup=lambda p: p.fill("input[name='weight-green']", "10"))
    assert endpoints(gateway)["default"]["traffic"] == {"gemma-3-270m": 100}

    # A mirror onto a deployment with live traffic is refused too.
    page.fill("input[name='weight-gemma-3-270m']", "90")
    page.check("input[name='mirror-target'][value='green']")
    expect(error).to_contain_text("cannot also be the mirror")
    page.check("input[name='mirror-target'][value='']")
    expect(error).to_be_hidden()
    expect(page.locator("#traffic-sum")).to_have_text("Total live traffic: 100%")
    page.click("#traffic-save")
    expect(page.locator("#toast")).to_have_text("Traffic saved")
    assert endpoints(gateway)["default"]["traffic"] == {"gemma-3-270m": 90, "green": 10}
    page.click("#tab-deployments")
    expect(page.locator("article.deployment[data-deployment=green]")).to_contain_text("10% live")
    console.shoot("endpoint-deployments")


def test_monitoring_shows_the_90_10_split_and_charts_with_data(console, gateway):
    def per_deployment() -> dict[str, int]:
        data = gateway.api("GET", "/api/endpoints/default/metrics?window=15m").json()
        return {name: s["totals"]["requests"] for name, s in data["by_deployment"].items()}

    before = per_deployment()
    client = gateway.openai()
    seen = {"gemma-3-270m": 0, "green": 0}
    for _ in range(150):  # until both have answered at least once (90/10: about ten requests)
        raw = client.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        seen[raw.headers["x-modelyard-deployment"]] += 1
        if seen["green"] >= 2 and sum(seen.values()) >= 12:
            break
    assert seen["green"] >= 1 and seen["gemma-3-270m"] > seen["green"], seen

    page = console.page
    page.goto(console.url("/ui/monitoring/default?window=15m"))
    row = {name: page.locator(f"#by-deployment tr[data-deployment='{name}']") for name in seen}
    for name, count in seen.items():
        expect(row[name].locator("[data-field=requests]")).to_contain_text(str(before.get(name, 0) + count),
                                                                           timeout=15_000)
    expect(row["gemma-3-270m"]).to_contain_text("90%")
    expect(row["green"]).to_contain_text("10%")
    for chart in ("requests", "latency", "split", "cost", "tokens"):
        canvas = page.locator(f"#chart-{chart}")
        expect(canvas).to_have_attribute("data-points", _nonzero())
    green_share = float(row["green"].locator("[data-field=share]").inner_text().rstrip("%"))
    assert 0 < green_share < 50
    expect(page.locator("#tiles [data-tile='Requests'] .v")).not_to_have_text("0")
    console.shoot("monitoring")

    # One deployment, a shorter window: the page follows, and says it updates live.
    page.select_option("#m-deployment", "green")
    expect(page).to_have_url(console.url("/ui/monitoring/default?window=15m&deployment=green"))
    expect(page.locator("#chart-split")).to_have_count(0)
    expect(page.locator("#live")).to_contain_text("every 5 s")


def _nonzero():
    import re

    return re.compile(r"^[1-9]\d*$")


def test_keys_are_masked_revealed_copied_and_regenerated(console, gateway):
    page = console.page
    page.goto(console.url("/ui/endpoints/default#keys"))
    key_text = page.locator("#key-primary")
    expect(key_text).to_have_text("none yet")
    expect(page.locator("#reveal-primary")).to_be_disabled()

    def regenerate() -> str:
        page.click("#regenerate-primary")
        expect(page.locator("dialog.confirm")).to_be_visible()
        page.click("#confirm-yes")
        expect(page.locator("#toast")).to_contain_text("New primary key made")
        expect(key_text).to_contain_text("•")  # masked until revealed
        expect(page.locator("#reveal-primary")).to_be_enabled()
        page.click("#reveal-primary")
        expect(key_text).not_to_contain_text("•")
        return key_text.inner_text()

    first = regenerate()
    assert first.startswith("my-") and len(first) > 30
    assert gateway.openai(first).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=1).choices
    page.click("[data-slot=primary] button:has-text('Copy')")
    assert page.evaluate("navigator.clipboard.readText()") == first

    # Regenerating asks first; cancelling keeps the key.
    page.click("#regenerate-primary")
    page.click("#confirm-no")
    assert gateway.openai(first).models.list().data

    second = regenerate()
    assert second != first
    with pytest.raises(openai.AuthenticationError):
        gateway.openai(first).models.list()
    assert [m.id for m in gateway.openai(second).models.list().data] == ["default"]
    page.click("#reveal-primary")  # hide it again before the screenshot
    console.shoot("endpoint-keys")


def test_consume_snippets_and_the_test_tab_reach_one_deployment(console, gateway):
    page = console.page
    page.goto(console.url("/ui/endpoints/default#consume"))
    python = page.locator("#snippet-python")
    expect(python).to_contain_text(f'base_url="{gateway.url}/v1"')
    expect(python).to_contain_text('model="default"')
    page.click("[data-snippet=curl]")
    expect(page.locator("#snippet-curl")).to_be_visible()
    page.click("button[data-copy='#snippet-curl']")
    assert page.evaluate("navigator.clipboard.readText()").startswith(f"curl {gateway.url}/v1/chat/completions")
    console.shoot("endpoint-consume")

    page.click("#tab-test")
    page.select_option("#test-target", "green")
    page.fill("#test-max", "4")
    page.click("#test-send")
    expect(page.locator("#test-meta [data-field='Answered by']")).to_have_text("green", timeout=120_000)
    expect(page.locator("#test-meta [data-field='Route']")).to_have_text("target:green")
    console.shoot("endpoint-test")


def test_rollout_steps_and_cancel(console, gateway):
    page = console.page
    page.goto(console.url("/ui/endpoints/default#rollouts"))
    page.select_option("#ro-dep", "green")
    page.fill("#ro-steps", "50, 100")
    page.fill("#ro-interval", "600")
    page.click("#rollout-form button[type=submit]")
    card = page.locator("article.rollout").first
    expect(card).to_have_attribute("data-state", "running")
    expect(card.locator("ol.steps li.current")).to_have_text("50%")
    assert endpoints(gateway)["default"]["traffic"]["green"] == 50
    console.shoot("endpoint-rollouts")
    card.locator("button:has-text('Cancel rollout')").click()
    page.click("#confirm-yes")
    expect(page.locator("article.rollout").first).to_have_attribute("data-state", "cancelled")
    assert endpoints(gateway)["default"]["traffic"] == {"gemma-3-270m": 90, "green": 10}


# --- usage and batch jobs -----------------------------------------------------------------------


def test_usage_page_shows_spend_by_endpoint_key_and_day(console, gateway):
    report = gateway.api("GET", "/api/usage/spend?days=7").json()
    assert report["totals"]["requests"] > 0 and report["totals"]["cost_usd"] > 0
    page = console.page
    page.goto(console.url("/ui/usage"))
    expect(page.locator("body[data-loaded=true]")).to_have_count(1)
    expect(page.locator("#u-tiles [data-tile='Spent'] .v")).not_to_have_text("$0.00")
    expect(page.locator("#u-endpoints")).to_contain_text("default")
    expect(page.locator("#u-keys")).to_contain_text("admin key")
    expect(page.locator("#u-keys")).to_contain_text("primary of default")
    expect(page.locator("#u-chart-days")).to_have_attribute("data-points", _nonzero())
    console.shoot("usage")


BATCH = {"id": "batch_abc123", "object": "batch", "endpoint": "/v1/chat/completions", "errors":
         {"object": "list", "data": [{"code": "invalid_value", "message": "max_tokens must be at least 1", "param": "max_tokens", "line": 3}]},
         "input_file_id": "file-in1", "completion_window": "24h", "status": "in_progress", "output_file_id": "file-out1",
         "error_file_id": "file-err1", "created_at": 1767225600, "in_progress_at": 1767225660, "expires_at": 1767312000,
         "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
         "cancelled_at": None, "request_counts": {"total": 10, "completed": 4, "failed": 1}, "metadata": {"description": "nightly eval"}}


def test_batch_jobs_page_degrades_without_jobs_and_shows_progress_of_one(console, gateway):
    page = console.page
    page.goto(console.url("/ui/batches"))
    expect(page.locator("body[data-loaded=true]")).to_have_count(1)
    live = httpx.get(gateway.url + "/v1/batches", headers={"Authorization": f"Bearer {gateway.admin_key}"})
    if live.status_code == 200 and live.json().get("data"):
        expect(page.locator("#batch-table")).to_be_visible()
    else:
        expect(page.locator("#no-batches")).to_contain_text("No batch jobs")

    # A job in the OpenAI Batch shape, served in place of the gateway's answer: progress, counts, files, errors.
    def serve_fake_batch(p):
        p.route("**/ui/proxy/v1/batches?limit=100", lambda route: route.fulfill(json={
            "object": "list", "data": [BATCH], "first_id": BATCH["id"], "last_id": BATCH["id"], "has_more": False}))
        p.route("**/ui/proxy/v1/batches/batch_abc123", lambda route: route.fulfill(json=BATCH))
        p.reload()
        expect(p.locator("body[data-loaded=true]")).to_have_count(1)

    serve_fake_batch(page)
    bar = page.locator("[data-batch=batch_abc123] [role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", "50")
    expect(page.locator("[data-batch=batch_abc123]")).to_contain_text("5/10 (50%) · 1 failed")
    console.shoot("batches", phone_setup=serve_fake_batch)
    page.click("a:has-text('batch_abc123')")
    expect(page.locator("#batch")).to_contain_text("10 total · 4 completed · 1 failed")
    expect(page.locator("#batch")).to_contain_text("max_tokens must be at least 1")
    expect(page.locator("a:has-text('Results (output file)')")).to_have_attribute(
        "href", "/ui/proxy/v1/files/file-out1/content")
    expect(page.locator("#b-actions button")).to_have_text("Cancel batch")
    console.shoot("batch-detail", phone_setup=serve_fake_batch)
    for p in (page, console.phone):
        p.unroute("**/ui/proxy/v1/batches?limit=100")
        p.unroute("**/ui/proxy/v1/batches/batch_abc123")


def test_sign_out_ends_the_session(new_console, gateway):
    other = new_console()
    other.sign_in()
    other.page.wait_for_url("**/ui/catalog")
    token = next(c for c in other.context.cookies() if c["name"] == "modelyard_session")["value"]
    other.page.click(".signout button")
    expect(other.page).to_have_url(gateway.url + "/ui/login")
    # The old cookie, replayed, no longer opens the API.
    replay = httpx.get(gateway.url + "/api/endpoints", cookies={"modelyard_session": token})
    assert replay.status_code == 401
    assert json.loads(replay.text)["error"]["code"] == "invalid_api_key"
