"""``modelyard index``: retrieval indexes for flows — create from a folder, add, remove, list, query, delete.

::

    modelyard index create handbook --from ./docs --embed embed --chunk 800 --overlap 100
    modelyard index query handbook "how do I rotate a key" --top-k 3 [--filter section=Keys]
    modelyard index add handbook ./docs/new.md        # new files, and new versions of changed ones
    modelyard index remove handbook guide/old.md
    modelyard index list | show handbook | delete handbook

The files are read here (``.md .txt .html .pdf``; PDF needs ``pypdf``, the
``index`` extra) and sent to the server in batches, with a progress bar; the
server cuts them into chunks, embeds them through the index's endpoint and
stores each document whole. Files the index holds already, unchanged, are
not sent again — so when the endpoint fails half-way, running the same
command again continues where it stopped. Unreadable files are listed at
the end. Every command calls the running server's management API
(``/api/indexes``) with the admin key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import httpx
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..index.loaders import FORMATS, UnreadableDocument, find_files, load_file
from ..index.spec import DEFAULT_CHUNK, DEFAULT_OVERLAP
from ..settings import server_url
from .output import err, out
from .remote import admin_key, call_api

app = typer.Typer(name="index", no_args_is_help=True,
                  help="Retrieval indexes: create from a folder, add, remove, list, show, query, delete.")

#: a request carries at most this many documents …
BATCH_DOCUMENTS = 32
#: … and about this many bytes of JSON (the server refuses more than MODELYARD_MAX_BODY_BYTES, 8 MiB by default)
BATCH_BYTES = 2 * 1024 * 1024


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _path(name: str, *rest: str) -> str:
    return "/api/indexes/" + "/".join(quote(p, safe="") for p in (name, *rest))


def _post(path: str, body: Any) -> Any:
    """POST to the server; `_Refused` on an error answer (so the caller can end its progress bar first)."""
    url = server_url().rstrip("/") + path
    try:
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {admin_key()}"}, timeout=600)
    except httpx.ConnectError:
        raise _Refused(0, f"cannot reach the modelyard server at {server_url()} — start it with "
                          "`modelyard up`") from None
    except httpx.TimeoutException:
        raise _Refused(0, f"the server at {server_url()} did not answer in time") from None
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except Exception:
            message = r.text[:500]
        raise _Refused(r.status_code, message)
    return r.json()


def _fail(message: str, code: int = 1) -> typer.Exit:
    err().print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


# --- sending files --------------------------------------------------------------------


def _name_in_index(file: Path, base: Path) -> str:
    try:
        return file.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return file.resolve().as_posix()


def _upload(name: str, files: list[tuple[Path, str]]) -> None:
    """Read `files` (each with its name in the index), send the new and changed ones in batches with a progress
    bar, and print what happened; exit 1 when the server stops the build."""
    stored = {d["path"]: d["sha256"] for d in call_api("GET", _path(name, "documents"))["data"]}
    console = out()
    added = unchanged = chunks = 0
    skipped: list[tuple[str, str]] = []
    failure: _Refused | None = None
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[chunks]:,} chunks"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("reading", total=len(files), chunks=0)
        batch: list[dict[str, Any]] = []
        batch_bytes = 0

        def send(documents: list[dict[str, Any]]) -> None:
            nonlocal added, unchanged, chunks
            try:
                answer = _post(_path(name, "documents"), {"documents": documents})
            except _Refused as exc:
                if exc.status == 413 and len(documents) > 1:  # too large together: in halves
                    half = len(documents) // 2
                    send(documents[:half])
                    send(documents[half:])
                    return
                if exc.status == 413:
                    skipped.append((documents[0]["path"], "larger than the server accepts in one request "
                                                          "(MODELYARD_MAX_BODY_BYTES)"))
                    progress.advance(task)
                    return
                raise
            added += len(answer["added"])
            unchanged += len(answer["unchanged"])
            chunks += answer["chunks"]
            skipped.extend((s["path"], s["reason"]) for s in answer["skipped"])
            progress.update(task, advance=len(documents), chunks=chunks)

        try:
            for file, doc_name in files:
                progress.update(task, description=escape(doc_name[-40:]))
                try:
                    document = load_file(file, doc_name)
                except UnreadableDocument as exc:
                    skipped.append((exc.path, exc.reason))
                    progress.advance(task)
                    continue
                if stored.get(document.path) == document.sha256:
                    unchanged += 1
                    progress.advance(task)
                    continue
                item = {"path": document.path, "text": document.text, "sha256": document.sha256,
                        "metadata": document.metadata,
                        "sections": [{"offset": offset, **meta} for offset, meta in document.sections]}
                size = len(json.dumps(item))
                if batch and (len(batch) >= BATCH_DOCUMENTS or batch_bytes + size > BATCH_BYTES):
                    send(batch)
                    batch, batch_bytes = [], 0
                batch.append(item)
                batch_bytes += size
            if batch:
                send(batch)
            progress.update(task, description="done")
        except _Refused as exc:
            failure = exc
            progress.update(task, description="[red]stopped")
    console.print(f"index [bold]{escape(name)}[/]: {added:,} document{'s' if added != 1 else ''} added "
                  f"({chunks:,} chunks), {unchanged:,} unchanged, {len(skipped):,} skipped")
    if skipped:
        console.print("[yellow]skipped[/] (not indexed):")
        for path, reason in skipped:
            console.print(f"  {escape(path)}: {escape(reason)}", soft_wrap=True)
    if failure is not None:
        where = f"error {failure.status}: " if failure.status else ""
        err().print(f"[red]stopped:[/] {escape(where + failure.message)}", soft_wrap=True)
        err().print("[dim]what was added is kept, each document whole; run the same command again to continue[/]")
        raise typer.Exit(1)


def _files_under(folder: Path, base: Path) -> list[tuple[Path, str]]:
    found, other = find_files(folder)
    if other:
        out().print(f"[dim]{len(other):,} file{'s' if len(other) != 1 else ''} of other types left out "
                    f"(an index reads {' '.join(sorted(FORMATS))})[/]")
    return [(f, _name_in_index(f, base)) for f in found]


# --- commands ---------------------------------------------------------------------------


@app.command()
def create(
    name: str = typer.Argument(..., help="the index's name (letters, digits, '.', '_', '-')"),
    source: Path = typer.Option(..., "--from", exists=True, file_okay=True, dir_okay=True,
                                help="the folder to index (.md .txt .html .pdf, in subfolders too), or one file"),
    embed: str = typer.Option("embed", "--embed", help="the embeddings endpoint for chunks and queries"),
    chunk: int = typer.Option(DEFAULT_CHUNK, "--chunk", min=100, max=20_000, help="characters per chunk, at most"),
    overlap: int = typer.Option(DEFAULT_OVERLAP, "--overlap", min=0,
                                help="characters a chunk repeats from the one before (at most half of --chunk)"),
) -> None:
    """Create an index from the files in a folder (or from one file). Running it again continues where it stopped (files already
    in the index, unchanged, are not sent again)."""
    existing = {i["name"]: i for i in call_api("GET", "/api/indexes")["data"]}
    if name in existing:
        have = existing[name]
        if (have.get("embed"), have.get("chunk_size"), have.get("overlap")) != (embed, chunk, overlap):
            raise _fail(f"index '{name}' exists with other settings (--embed {have.get('embed')} --chunk "
                        f"{have.get('chunk_size')} --overlap {have.get('overlap')}); add files with `modelyard index "
                        f"add`, or delete it first")
        out().print(f"[dim]index {escape(name)} exists: adding what it does not hold yet[/]")
    else:
        folder = source if source.is_dir() else source.parent
        call_api("POST", "/api/indexes", json={"name": name, "embed": embed, "chunk_size": chunk, "overlap": overlap,
                                               "source": str(folder.resolve())})
    if source.is_dir():
        _upload(name, _files_under(source, source))
    else:
        _upload(name, [(source, _name_in_index(source, source.parent))])


@app.command()
def add(
    name: str = typer.Argument(..., help="the index"),
    paths: list[Path] = typer.Argument(..., exists=True, help="files or folders to add"),
    base: Optional[Path] = typer.Option(None, "--base", file_okay=False,
                                        help="name files relative to this folder (default: the folder the index "
                                             "was created from, when they are in it)"),
) -> None:
    """Add files, or new versions of changed ones (unchanged ones are left alone)."""
    info = call_api("GET", _path(name))
    root = base or (Path(info["source"]) if info.get("source") else None)
    files: list[tuple[Path, str]] = []
    for path in paths:
        inside = root is not None and _within(path, root)
        if path.is_dir():
            files += _files_under(path, root if inside else path)  # type: ignore[arg-type]
        else:
            files.append((path, _name_in_index(path, root if inside else path.parent)))  # type: ignore[arg-type]
    _upload(name, files)


def _within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


@app.command()
def remove(
    name: str = typer.Argument(..., help="the index"),
    paths: list[str] = typer.Argument(..., help="documents as the index names them (see `index show`), or local "
                                                "files in the folder it was created from"),
) -> None:
    """Remove documents and their chunks."""
    info = call_api("GET", _path(name))
    root = Path(info["source"]) if info.get("source") else None
    for given in paths:
        local = Path(given)
        doc = _name_in_index(local, root) if root is not None and local.exists() and _within(local, root) else given
        body = call_api("DELETE", _path(name, "documents"), params={"path": doc})
        out().print(f"removed {escape(body['path'])} ({body['chunks']:,} chunks)")


@app.command("list")
def list_indexes() -> None:
    """The indexes, their embedding endpoint, size and settings."""
    rows = call_api("GET", "/api/indexes")["data"]
    table = Table(show_edge=False)
    for col in ("name", "embed", "documents", "chunks", "chunk/overlap", "dims", "disk"):
        table.add_column(col, justify="right" if col in ("documents", "chunks", "dims", "disk") else "left",
                         no_wrap=col == "name")
    for r in rows:
        if "error" in r:
            table.add_row(escape(r["name"]), f"[red]{escape(r['error'])}[/]", "", "", "", "", "")
            continue
        table.add_row(escape(r["name"]), escape(r["embed"]), f"{r['documents']:,}", f"{r['chunks']:,}",
                      f"{r['chunk_size']}/{r['overlap']}", str(r.get("dimensions") or "–"), _size(r["disk_bytes"]))
    out().print(table)


@app.command()
def show(name: str = typer.Argument(..., help="the index")) -> None:
    """An index's settings and documents."""
    info = call_api("GET", _path(name))
    docs = call_api("GET", _path(name, "documents"))["data"]
    console = out()
    console.print(f"[bold]{escape(name)}[/]: {info['documents']:,} documents, {info['chunks']:,} chunks, "
                  f"embedded by [bold]{escape(info['embed'])}[/] ({info.get('dimensions') or '?'} dimensions, "
                  f"{info['search']} search); chunks of {info['chunk_size']} characters, overlap {info['overlap']}; "
                  f"{_size(info['disk_bytes'])} on disk, {_size(info['memory_bytes'])} in memory")
    if info.get("source"):
        console.print(f"  created from {escape(info['source'])}")
    table = Table(show_edge=False)
    for col in ("path", "title", "chunks", "added"):
        table.add_column(col, justify="right" if col == "chunks" else "left", overflow="fold")
    for d in docs:
        table.add_row(escape(d["path"]), escape(str(d["metadata"].get("title", ""))), f"{d['chunks']:,}",
                      d["added_at"][:19].replace("T", " "))
    console.print(table)


def parse_filters(values: list[str]) -> dict[str, Any]:
    """``["section=Keys", "page=3", "tag=a", "tag=b"]`` -> ``{"section": "Keys", "page": 3, "tag": ["a", "b"]}``.

    A value is read as JSON when it is a number, ``true``, ``false``, ``null`` or quoted, else as the text it
    is; a key given twice matches either value.
    """
    found: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{value!r}: write KEY=VALUE", param_hint="--filter")
        try:
            parsed = json.loads(raw)
            if isinstance(parsed, (dict, list)):
                parsed = raw
        except ValueError:
            parsed = raw
        key = key.strip()
        if key in found:
            found[key] = (found[key] if isinstance(found[key], list) else [found[key]]) + [parsed]
        else:
            found[key] = parsed
    return found


@app.command()
def query(
    name: str = typer.Argument(..., help="the index"),
    text: str = typer.Argument(..., help="what to look for"),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, max=100, help="how many chunks"),
    filters: list[str] = typer.Option([], "--filter", "-f",
                                      help="KEY=VALUE: only chunks whose metadata (section, page, path, title, "
                                           "format …) has this value; repeat for more (a key twice: either value)"),
    as_json: bool = typer.Option(False, "--json", help="print the API's JSON"),
) -> None:
    """The chunks nearest to TEXT, best first, with their scores."""
    body: dict[str, Any] = {"query": text, "top_k": top_k}
    if filters:
        body["filter"] = parse_filters(filters)
    answer = call_api("POST", _path(name, "query"), json=body)
    if as_json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    console = out()
    if not answer["data"]:
        console.print("[dim]no chunk found[/]")
    for n, hit in enumerate(answer["data"], start=1):
        where = hit["document"]["path"]
        for key in ("section", "page"):
            if key in hit["chunk"]:
                where += f" · {key} {hit['chunk'][key]}"
        console.print(f"[bold]{n}.[/] [cyan]{hit['score']:.3f}[/]  {escape(where)}")
        console.print(escape(hit["text"]), soft_wrap=True)
        console.print()


@app.command()
def delete(
    name: str = typer.Argument(..., help="the index"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
) -> None:
    """Delete an index and its files."""
    if not yes:
        typer.confirm(f"Delete index '{name}' and everything in it?", abort=True)
    call_api("DELETE", _path(name))
    out().print(f"index {escape(name)} deleted")
