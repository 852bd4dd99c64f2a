"""`modelyard flow` against a real gateway whose tiers are the OpenAI stub: apply a folder, test a run node by
node, read its trace, evaluate two variants of a retrieval flow against each other, delete."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.flows import load_flow
from modelyard.cli.flow import parse_inputs, read_flow_folder
from modelyard.cli.flow_eval import exact_match, is_hit, normalise, percentile, retrieved_hits
from tests.cards import hosted_card, tier_cards
from tests.live_gateway import add_endpoint, start_server, write_catalog
from tests.openai_stub import Script

PRICES = {"small": (1.0, 2.0), "large": (10.0, 30.0)}
EXAMPLE = Path(__file__).parents[2] / "examples" / "ask-docs"

# Retrieve from `docs`, format the hits, answer with `small` (variant_1, the default) or `large` (variant_2).
QA = """
inputs:
  question: {type: string}
outputs:
  answer: {type: string, reference: "${compose.output}"}
nodes:
- name: search
  type: retrieve
  inputs: {index: docs, query: "${inputs.question}", top_k: 2}
- name: context
  type: prompt
  source: {type: code, path: prompts/context.jinja2}
  inputs: {hits: "${search.output}"}
- name: compose
  use_variants: true
node_variants:
  compose:
    default_variant_id: variant_1
    variants:
      variant_1:
        node:
          type: llm
          source: {type: code, path: answer.jinja2}
          inputs: {endpoint: small, question: "${inputs.question}", context: "${context.output}", max_tokens: 16}
      variant_2:
        node:
          type: llm
          source: {type: code, path: answer.jinja2}
          inputs: {endpoint: large, question: "${inputs.question}", context: "${context.output}", max_tokens: 16}
"""

FILES = {
    "prompts/context.jinja2": "{% for hit in hits %}- {{ hit.text[:400] }}\n{% endfor %}",
    "answer.jinja2": "system:\nAnswer from this text:\n{{ context }}\nuser:\n{{ question }}\n",
    "notes.md": "Why this flow exists.",
}

DATA = [
    {"question": "What is the capital of France?", "answer": "Paris", "doc": "geo.md"},
    {"question": "How many days of leave do I get?", "answer": "25 days", "doc": "leave.md"},
    {"question": "Who cleans the kitchen?", "answer": "the cleaners", "doc": "kitchen.md"},  # not in the index
]

METRIC = '''
def contains(prediction, expected, inputs):
    assert "question" in inputs
    return 1.0 if expected.lower() in prediction.lower() else 0.0
'''

runner = CliRunner()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, stub):
    home = tmp_path_factory.mktemp("flow-cli") / "home"
    write_catalog(home, tier_cards(stub, PRICES), hosted_card("tier-emb", stub.base_url("emb"), task="embedding"),
                  name="tiers.yaml")
    srv = start_server(home, "--no-defaults")
    endpoints = {"small": "tier-small", "large": "tier-large", "emb": "tier-emb", "default": "tier-small"}
    for name, model in endpoints.items():
        add_endpoint(srv, name, model)
    r = srv.api("POST", "/api/indexes", json={"name": "docs", "embed": "emb"})
    assert r.status_code == 201, r.text
    r = srv.api("POST", "/api/indexes/docs/documents", json={"documents": [
        {"path": "geo.md", "text": "Paris is the capital of France."},
        {"path": "leave.md", "text": "Employees get 25 days of paid leave a year."}]})
    assert r.status_code == 200, r.text
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def scripts(stub):
    stub.tiers.clear()
    stub.tiers["small"] = Script(answer="No idea.", answers={"capital": "paris."})
    stub.tiers["large"] = Script(answer="No idea.", answers={"capital": "Paris", "leave": "25 days",
                                                             "kitchen": "The cleaners!"})


@pytest.fixture(scope="module")
def qa_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("flows") / "docs_qa"
    write_folder(folder, QA, FILES)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "tool.cpython-311.py").write_text("not sent")
    (folder / ".ignored").mkdir()
    (folder / ".ignored" / "secret.txt").write_text("not sent")
    (folder / "data.csv").write_text("not sent")
    return folder


@pytest.fixture(scope="module")
def qa(gw, qa_folder) -> str:
    """The `qa` flow, applied from its folder; its two keys."""
    first = ok(gw, "flow", "apply", "-f", str(qa_folder))
    assert "flow docs-qa created (version 1" in first
    return first


def write_folder(folder: Path, dag: str, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flow.dag.yaml").write_text(textwrap.dedent(dag).lstrip("\n"))
    for path, text in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    return folder


def cli(srv, *args: str, input: str | None = None):
    """`modelyard ARGS...` against ``srv``, with a wide terminal so table cells stay on one line."""
    return runner.invoke(app, list(args), env={**srv.env(), "COLUMNS": "220"}, input=input)


def ok(srv, *args: str) -> str:
    result = cli(srv, *args)
    assert result.exit_code == 0, f"modelyard {' '.join(args)}:\n{result.output}"
    return result.output


def row(output: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{output}")


def write_data(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- apply ---------------------------------------------------------------------------------------------------


def test_apply_sends_the_folders_text_files_and_prints_the_keys_once(gw, qa, qa_folder):
    keys = dict(re.findall(r"^(primary|secondary): (\S+)$", qa, re.M))
    assert set(keys) == {"primary", "secondary"} and "shown only now" in qa
    assert "search" in qa and "index docs" in qa and "variant_2 → large" in qa
    stored = gw.api("GET", "/api/flows/docs-qa").json()
    assert set(stored["files"]) == {"prompts/context.jinja2", "answer.jinja2", "notes.md"}

    again = ok(gw, "flow", "apply", "-f", str(qa_folder / "flow.dag.yaml"), "--description", "docs QA")
    assert "flow docs-qa updated (version 2" in again and "primary:" not in again
    assert gw.api("GET", "/api/flows/docs-qa").json()["description"] == "docs QA"


def test_a_broken_flow_prints_its_file_and_line_and_exits_1(gw, tmp_path):
    folder = write_folder(tmp_path / "broken", QA.replace("endpoint: large", "endpoint: nowhere"), FILES)
    for extra in ([], ["--check"]):
        result = cli(gw, "flow", "apply", "-f", str(folder), *extra)
        assert result.exit_code == 1
        assert re.search(r"flow\.dag\.yaml:\d+", result.output) and "nowhere" in result.output
    assert gw.api("GET", "/api/flows/broken").status_code == 404

    checked = ok(gw, "flow", "apply", "-f", str(write_folder(tmp_path / "fine", QA, FILES)), "--check")
    assert "is valid: 3 nodes" in checked and "nothing stored" in checked
    assert gw.api("GET", "/api/flows/fine").status_code == 404


def test_list_and_show_describe_the_flow(gw, qa):
    listed = ok(gw, "flow", "list")
    assert row(listed, "docs-qa")[3:5] == ["3", "index docs, small"]
    shown = ok(gw, "flow", "show", "docs-qa")
    assert row(shown, "question")[1:4] == ["string", "", "yes"]
    assert row(shown, "answer")[2] == "${compose.output}"
    assert row(shown, "context")[1:4] == ["prompt", "", "search"]  # what each node reads
    assert row(shown, "compose")[1:5] == ["llm", "small", "context", "variant_1* → small, variant_2 → large"]


# -- test and runs ---------------------------------------------------------------------------------------------


def test_test_prints_each_node_with_its_endpoint_and_cost_then_the_answer(gw, qa):
    printed = ok(gw, "flow", "test", "docs-qa", "--input", "question=What is the capital of France?")
    lines = printed.splitlines()
    search = next(line for line in lines if line.startswith("search ok"))
    compose = next(line for line in lines if line.startswith("compose ok"))
    assert "index docs → emb" in search and "10+0 tokens" in search
    assert re.search(r"endpoint small · \d+\+1 tokens · \$0\.0000\d\d · \d+ ms", compose)
    assert lines.index(search) < lines.index(compose)
    assert "answer: paris." in printed
    assert re.search(r"run \S+: \d+\+\d+ tokens, \$0\.0000\d+, \d+ ms", printed)

    larger = ok(gw, "flow", "test", "docs-qa", "-i", "question=capital?", "--variant", "compose=variant_2")
    assert re.search(r"compose ok llm variant_2\s+endpoint large", larger) and "answer: Paris" in larger

    as_json = json.loads(ok(gw, "flow", "test", "docs-qa", "-i", "question=42", "--json"))
    assert as_json["outputs"] == {"answer": "No idea."}  # 42 stays text: `question` is a string input


def test_a_wrong_variant_or_a_failed_run_exits_1(gw, qa):
    wrong = cli(gw, "flow", "test", "docs-qa", "-i", "question=x", "--variant", "compose=variant_9")
    assert wrong.exit_code != 0 and "variant_9" in wrong.output
    missing = cli(gw, "flow", "test", "docs-qa")
    assert missing.exit_code == 1 and "question" in missing.output


def test_runs_lists_runs_and_shows_one_trace(gw, qa):
    ok(gw, "flow", "test", "docs-qa", "-i", "question=capital of France")
    listed = ok(gw, "flow", "runs", "docs-qa", "--limit", "1")
    run_id = gw.api("GET", "/api/flows/docs-qa/runs").json()["data"][0]["id"]
    assert row(listed, run_id)[2] == "200"
    trace = ok(gw, "flow", "runs", "docs-qa", "--id", run_id)
    assert f"run {run_id}" in trace and "streamed, status 200" in trace
    assert row(trace, "search")[1:4] == ["retrieve", "ok", "docs → emb"]
    assert row(trace, "compose variant_1")[1:4] == ["llm", "ok", "small"]
    assert "compose → paris." in trace and "output answer: paris." in trace
    assert cli(gw, "flow", "runs", "docs-qa", "--id", "nope").exit_code == 1


# -- eval --------------------------------------------------------------------------------------------------------


def test_eval_compares_two_variants(gw, qa, tmp_path):
    data = write_data(tmp_path, DATA)
    report = tmp_path / "report.json"
    printed = ok(gw, "flow", "eval", "docs-qa", "--data", str(data), "--variant", "compose=variant_1",
                 "--variant", "compose=variant_2", "--gold-doc-field", "doc", "--concurrency", "2", "-o", str(report))
    assert row(printed, "compose=variant_1")[1:4] == ["0", "33.3%", "66.7%"]
    assert row(printed, "compose=variant_2")[1:4] == ["0", "100.0%", "66.7%"]
    assert "3 answers per setting" in printed and "hit@2" in printed

    body = json.loads(report.read_text())
    small, large = body["settings"]
    assert small["variants"] == {"compose": "variant_1"} and large["variants"] == {"compose": "variant_2"}
    assert small["score"] == pytest.approx(1 / 3) and large["score"] == 1.0
    assert large["mean_cost_usd"] > small["mean_cost_usd"] > 0  # the large tier's tokens cost more
    assert small["mean_tokens"] == large["mean_tokens"] > 0
    assert 0 < small["p50_ms"] <= small["p95_ms"]
    assert [a["hit"] for a in small["answers"]] == [True, True, False]
    assert [a["prediction"] for a in large["answers"]] == ["Paris", "25 days", "The cleaners!"]
    assert all(a["run_id"] for a in large["answers"])


def test_eval_with_a_user_metric_and_the_flows_default_variant(gw, qa, tmp_path):
    data = write_data(tmp_path, [{"question": r["question"], "ground_truth": r["answer"]} for r in DATA])
    metric = tmp_path / "metric.py"
    metric.write_text(METRIC)
    printed = ok(gw, "flow", "eval", "docs-qa", "--data", str(data), "--metric", f"{metric}:contains")
    assert row(printed, "default")[1:3] == ["0", "0.333"]  # "paris." contains "Paris"; the others "No idea."
    assert "contains" in printed

    broken = cli(gw, "flow", "eval", "docs-qa", "--data", str(data), "--metric", f"{metric}:nothing")
    assert broken.exit_code != 0 and "nothing" in broken.output


def test_eval_counts_failed_runs_as_errors(gw, qa, tmp_path):
    data = write_data(tmp_path, [{"question": "capital", "answer": "paris"}, {"answer": "no question"}])
    printed = ok(gw, "flow", "eval", "docs-qa", "--data", str(data))
    assert row(printed, "default")[1:3] == ["1", "50.0%"]
    assert "line 2" in printed and "question" in printed


# -- delete ------------------------------------------------------------------------------------------------------


def test_delete_removes_the_flow_and_revokes_its_keys(gw, tmp_path):
    folder = write_folder(tmp_path / "gone", QA, FILES)
    keys = dict(re.findall(r"^(primary|secondary): (\S+)$", ok(gw, "flow", "apply", "-f", str(folder)), re.M))
    assert "flow gone deleted" in ok(gw, "flow", "delete", "gone", "--yes")
    assert "gone" not in ok(gw, "flow", "list")
    r = gw.openai(keys["primary"]).with_options(max_retries=0)
    with pytest.raises(Exception) as caught:
        r.chat.completions.create(model="gone", messages=[{"role": "user", "content": "x"}])
    assert getattr(caught.value, "status_code", None) == 401


# -- the example ------------------------------------------------------------------------------------------------


def test_the_ask_docs_example_applies_runs_and_evaluates(gw, tmp_path):
    """examples/ask-docs as its README runs it, with `default` on a stub tier and a small `docs` index."""
    applied = ok(gw, "flow", "apply", "-f", str(EXAMPLE))
    assert "flow ask-docs created" in applied and "with_docs* → default" in applied
    printed = ok(gw, "flow", "test", "ask-docs", "--input", "question=What is the capital of France?")
    assert "index docs → emb" in printed and "answer: paris." in printed
    run_id = gw.api("GET", "/api/flows/ask-docs/runs").json()["data"][0]["id"]
    spans = {s["node"]: s for s in gw.api("GET", f"/api/flows/ask-docs/runs/{run_id}").json()["trace"]["spans"]}
    assert json.loads(spans["context"]["output"]).startswith("- Paris is the capital of France.")
    report = tmp_path / "report.json"
    ok(gw, "flow", "eval", "ask-docs", "--data", str(EXAMPLE / "qa.jsonl"), "--variant", "answer=with_docs",
       "--variant", "answer=no_docs", "--metric", f"{EXAMPLE / 'metric.py'}:contains", "--gold-doc-field", "section",
       "-o", str(report))
    settings = json.loads(report.read_text())["settings"]
    assert [(s["label"], s["n"], s["errors"]) for s in settings] == [
        ("answer=with_docs", 7, 0), ("answer=no_docs", 7, 0)]
    ok(gw, "flow", "delete", "ask-docs", "--yes")


# -- the pieces, without a server --------------------------------------------------------------------------------


def test_the_example_flow_is_valid():
    flow = load_flow(EXAMPLE)
    assert [n.name for n in flow.nodes] == ["search", "context", "answer"] and not flow.warnings
    rows = [json.loads(line) for line in (EXAMPLE / "qa.jsonl").read_text().splitlines()]
    assert 5 <= len(rows) <= 8 and all({"question", "answer", "section"} <= set(r) for r in rows)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert all(r["answer"] in readme for r in rows)


def test_a_folder_is_read_with_its_text_files_only(qa_folder):
    folder, dag, files = read_flow_folder(qa_folder)
    assert folder == qa_folder and dag.startswith("inputs:")
    assert sorted(files) == ["answer.jinja2", "notes.md", "prompts/context.jinja2"]


def test_inputs_are_json_when_they_parse_and_text_for_string_inputs():
    assert parse_inputs(["n=3", "tags=[\"a\", \"b\"]", "q=What is X?", "s=42"], {"s": "string"}) == {
        "n": 3, "tags": ["a", "b"], "q": "What is X?", "s": "42"}


def test_exact_match_ignores_case_blank_space_and_punctuation_at_the_ends():
    assert normalise("  The  Cleaners!\n") == "the cleaners"
    assert exact_match("Paris.", "paris") == 1.0 and exact_match("Paris is", "paris") == 0.0
    assert exact_match("25 days", ["twenty-five days", "25 Days"]) == 1.0


def test_retrieval_hits_are_read_from_a_trace_even_when_the_output_was_cut():
    hits = [{"text": "x", "score": 0.9, "document": {"path": "guide/keys.md", "title": "Keys"}, "chunk": {}}]
    trace = {"spans": [{"kind": "retrieve", "status": "ok", "output": json.dumps(hits)}]}
    found = retrieved_hits(trace)
    assert found == [["guide/keys.md", "Keys"]]
    assert is_hit(found, "guide/keys.md") and is_hit(found, "keys.md") and not is_hit(found, "leave.md")
    cut_output = json.dumps(hits * 50)[:4096] + "… [9 characters]"
    cut = {"spans": [{"kind": "retrieve", "status": "ok", "output": cut_output}]}
    assert is_hit(retrieved_hits(cut), "keys.md")
    assert retrieved_hits({"spans": [{"kind": "llm", "status": "ok", "output": "\"x\""}]}) is None


def test_percentiles_interpolate_between_ranks():
    assert percentile([], 50) is None
    assert percentile([10.0], 95) == 10.0
    assert percentile([10.0, 20.0, 30.0, 40.0], 50) == 25.0
