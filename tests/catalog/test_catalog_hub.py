"""Pulling hub models, against a fake Hugging Face Hub on 127.0.0.1 (see conftest.py)."""

from __future__ import annotations

import hashlib
import os

import pytest

from modelyard.catalog import ModelCard, hub_dir, is_available, pull, resolve_path
from modelyard.errors import ModelyardError
from modelyard.settings import Settings

REPO = "test-org/tiny-model-GGUF"
FILE = "tiny-model-q4_k_m.gguf"


def _card(sha256: str | None = None, *, file: str = FILE, extra_files: list[str] | None = None, revision: str = "main") -> ModelCard:
    source = {"type": "hub", "repo": REPO, "file": file, "revision": revision}
    if sha256:
        source["sha256"] = sha256
    if extra_files:
        source["extra_files"] = extra_files
    return ModelCard.model_validate(
        {"id": "tiny", "family": "tiny", "task": "chat", "format": "gguf", "license": "mit",
         "context_length": 2048, "source": source}
    )


@pytest.fixture
def payload() -> bytes:
    return os.urandom(300 * 1024)  # a few hundred KB of random bytes


def test_pull_downloads_the_file_byte_identical_into_models_dir(fake_hub, payload, settings: Settings):
    sha = fake_hub.add(REPO, FILE, payload)
    card = _card(sha)

    path = pull(card, settings, progress=False)

    assert path == hub_dir(card.source, settings) / FILE
    assert path.is_relative_to(settings.models_dir)
    assert path.read_bytes() == payload
    assert {(r.method, r.path) for r in fake_hub.requests} == {
        ("HEAD", f"/{REPO}/resolve/main/{FILE}"),
        ("GET", f"/{REPO}/resolve/main/{FILE}"),
    }
    assert is_available(card, settings)


def test_pulled_model_resolves_without_the_network(fake_hub, payload, settings: Settings, monkeypatch):
    sha = fake_hub.add(REPO, FILE, payload)
    card = _card(sha)
    pulled = pull(card, settings, progress=False)
    seen = len(fake_hub.requests)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there

    assert resolve_path(card, settings) == pulled
    assert len(fake_hub.requests) == seen


def test_second_pull_checks_the_hub_but_does_not_download_again(fake_hub, payload, settings: Settings):
    sha = fake_hub.add(REPO, FILE, payload)
    card = _card(sha)
    first = pull(card, settings, progress=False)

    second = pull(card, settings, progress=False)

    assert second == first
    assert len(fake_hub.gets()) == 1
    assert second.read_bytes() == payload


def test_unpulled_hub_model_asks_the_user_to_pull(settings: Settings):
    card = _card()

    with pytest.raises(ModelyardError) as info:
        resolve_path(card, settings)

    assert info.value.status == 409
    assert info.value.code == "model_not_pulled"
    assert "modelyard catalog pull tiny" in info.value.message
    assert not is_available(card, settings)


def test_sha256_mismatch_is_refused_and_the_file_deleted(fake_hub, payload, settings: Settings):
    fake_hub.add(REPO, FILE, payload)
    wrong = hashlib.sha256(b"something else").hexdigest()
    card = _card(wrong)

    with pytest.raises(ModelyardError) as info:
        pull(card, settings, progress=False)

    assert info.value.code == "checksum_mismatch"
    assert wrong in info.value.message
    assert not (hub_dir(card.source, settings) / FILE).exists()
    assert not is_available(card, settings)
    with pytest.raises(ModelyardError, match="not been downloaded"):
        resolve_path(card, settings)


def test_file_damaged_after_download_is_caught_when_resolved(fake_hub, payload, settings: Settings):
    sha = fake_hub.add(REPO, FILE, payload)
    card = _card(sha)
    path = pull(card, settings, progress=False)
    path.write_bytes(payload[:-1] + bytes([payload[-1] ^ 0xFF]))  # same size, one byte flipped

    with pytest.raises(ModelyardError) as info:
        resolve_path(card, settings)

    assert info.value.code == "checksum_mismatch"
    assert not path.exists()


def test_dropped_connection_is_resumed_with_a_range_request(fake_hub, payload, settings: Settings, monkeypatch):
    import huggingface_hub.constants as hf_constants

    # huggingface_hub writes (and so can resume) in DOWNLOAD_CHUNK_SIZE pieces, 10 MB by
    # default; smaller pieces let a few hundred KB stand in for a multi-GB model.
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    sha = fake_hub.add(REPO, FILE, payload)
    half = len(payload) // 2
    fake_hub.drop_first_get_after = half

    path = pull(_card(sha), settings, progress=False)

    assert path.read_bytes() == payload
    gets = fake_hub.gets()
    assert len(gets) == 2
    assert gets[0].range is None
    # the second request asks only for what is missing (huggingface_hub may have
    # received a little less than was sent before the connection closed)
    assert gets[1].range is not None
    resumed_from = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= half


def test_partial_file_left_by_an_interrupted_pull_is_replaced(fake_hub, payload, settings: Settings):
    sha = fake_hub.add(REPO, FILE, payload)
    card = _card(sha)
    folder = hub_dir(card.source, settings)
    folder.mkdir(parents=True)
    (folder / FILE).write_bytes(payload[: len(payload) // 3])  # a crash left a third of the file in place
    scratch = folder / ".cache" / "huggingface" / "download"
    scratch.mkdir(parents=True)
    (scratch / f"{FILE}.{sha}.incomplete").write_bytes(b"junk" * 100)  # and some junk in the scratch area

    path = pull(card, settings, progress=False)

    assert path.read_bytes() == payload


def test_progress_callback_sees_every_byte(fake_hub, payload, settings: Settings):
    sha = fake_hub.add(REPO, FILE, payload)
    seen: list[tuple[str, int, int | None]] = []

    pull(_card(sha), settings, progress=lambda name, done, total: seen.append((name, done, total)))

    assert seen[-1] == (FILE, len(payload), len(payload))
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)


def test_split_gguf_pulls_every_shard_and_resolves_to_the_first(fake_hub, settings: Settings):
    first, second = "m-00001-of-00002.gguf", "m-00002-of-00002.gguf"
    part1, part2 = os.urandom(1000), os.urandom(500)
    fake_hub.add(REPO, first, part1)
    fake_hub.add(REPO, second, part2)
    card = _card(hashlib.sha256(part1).hexdigest(), file=first, extra_files=[second])

    path = pull(card, settings, progress=False)

    assert path.name == first and path.read_bytes() == part1
    assert (path.parent / second).read_bytes() == part2
    (path.parent / second).unlink()
    assert not is_available(card, settings)


def test_pinned_revision_is_requested_and_kept_apart(fake_hub, settings: Settings):
    revision = "4f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a"
    old, new = b"old weights" * 100, b"new weights" * 100
    fake_hub.add(REPO, FILE, old, revision=revision)
    fake_hub.add(REPO, FILE, new, revision="main")

    pinned = pull(_card(hashlib.sha256(old).hexdigest(), revision=revision), settings, progress=False)
    latest = pull(_card(hashlib.sha256(new).hexdigest()), settings, progress=False)

    assert pinned.read_bytes() == old and latest.read_bytes() == new
    assert pinned != latest
    assert f"/{REPO}/resolve/{revision}/{FILE}" in {r.path for r in fake_hub.requests}


def test_missing_file_on_the_hub_is_a_clear_error(fake_hub, settings: Settings):
    with pytest.raises(ModelyardError) as info:
        pull(_card(), settings, progress=False)

    assert info.value.code == "download_failed"
    assert REPO in info.value.message and FILE in info.value.message
    assert "source.file" in info.value.message


def test_missing_file_error_does_not_depend_on_digits_in_the_url(fake_hub, settings: Settings):
    """The hint comes from the error's kind: a "401" in the repository name (or the port) is not a gated repo."""
    card = _card().model_copy(update={"source": _card().source.model_copy(update={"repo": "test-org/model-401"})})

    with pytest.raises(ModelyardError) as info:
        pull(card, settings, progress=False)

    assert "source.file" in info.value.message
    assert "gated" not in info.value.message


def test_offline_pull_says_hf_hub_offline_is_set(fake_hub, payload, settings: Settings, monkeypatch):
    """Offline, huggingface_hub reports a file missing from its local cache as a missing entry: the hint is
    about HF_HUB_OFFLINE, not about the card."""
    import huggingface_hub.constants as hf_constants

    fake_hub.add(REPO, FILE, payload)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(ModelyardError) as info:
        pull(_card(), settings, progress=False)

    assert "HF_HUB_OFFLINE" in info.value.message and "source.file" not in info.value.message
    assert fake_hub.requests == []


def test_gated_repository_asks_for_a_token(fake_hub, payload, settings: Settings):
    fake_hub.add(REPO, FILE, payload)
    fake_hub.gated.add(REPO)

    with pytest.raises(ModelyardError) as info:
        pull(_card(), settings, progress=False)

    assert info.value.code == "download_failed"
    assert "gated" in info.value.message and "HF_TOKEN" in info.value.message


def test_hf_endpoint_is_read_when_pulling_not_when_imported(fake_hub, payload, settings: Settings, monkeypatch):
    """huggingface_hub freezes HF_ENDPOINT at import; modelyard passes the current value each time."""
    import huggingface_hub.constants as hf_constants

    assert hf_constants.ENDPOINT != fake_hub.url  # imported before the fake hub existed
    sha = fake_hub.add(REPO, FILE, payload)

    assert pull(_card(sha), settings, progress=False).read_bytes() == payload
    assert fake_hub.requests  # the request reached the fake, not huggingface.co


def test_whole_repository_pull_for_a_card_without_file(fake_hub, settings: Settings):
    files = {"config.json": b'{"hidden_size": 8}', "model.safetensors": os.urandom(50_000), "1_Pooling/config.json": b"{}"}
    for name, data in files.items():
        fake_hub.add("test-org/tiny-embedder", name, data)
    card = ModelCard.model_validate(
        {"id": "tiny-embedder", "family": "tiny", "task": "embedding", "format": "transformers", "license": "mit",
         "context_length": 128, "source": {"type": "hub", "repo": "test-org/tiny-embedder"}}
    )
    with pytest.raises(ModelyardError, match="catalog pull tiny-embedder"):
        resolve_path(card, settings)

    folder = pull(card, settings, progress=False)

    assert folder == hub_dir(card.source, settings) and folder.is_dir()
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    assert resolve_path(card, settings) == folder
    assert is_available(card, settings)
