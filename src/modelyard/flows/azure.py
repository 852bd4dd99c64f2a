"""How an Azure ML prompt flow's names map onto modelyard's.

An Azure flow names Azure resources: a *connection* (an Azure OpenAI or AI
Search resource with its key) and a *deployment* inside it. In modelyard the
**endpoint** is that whole thing — a stable name, its deployments, its keys
and credentials — so the flow's deployment name is read as an endpoint name
and the connection is not needed. The table, which the package docstring
repeats for users:

=========================================  =============================================
prompt flow                                modelyard
=========================================  =============================================
llm ``inputs.endpoint``                    the endpoint (modelyard's own spelling)
llm ``inputs.deployment_name``             the endpoint of that name
llm ``inputs.model`` (OpenAI provider)     the endpoint, when neither of the above is set
node ``connection``, ``inputs.connection``  ignored: the endpoint holds the credentials
node ``provider``, ``module``              ignored (``AzureOpenAI``/``OpenAI``, ``promptflow.tools.aoai``)
python ``promptflow.tools.embedding        an ``embed`` node: ``deployment_name``/``model``
.embedding``                               → endpoint, ``input`` → input
python tool whose name contains            a ``retrieve`` node: ``index`` ← ``index``, the
``index_lookup``                           ``index.index`` of ``mlindex_content``,
                                           ``index_name`` or ``path``; ``query`` ← ``query``
                                           or ``queries``; ``top_k``; ``query_type`` ignored
=========================================  =============================================
"""

from __future__ import annotations

from typing import Any

import yaml

#: Inputs naming the endpoint of an ``llm`` or ``embed`` node, in order of precedence.
ENDPOINT_INPUTS = ("endpoint", "deployment_name", "model")
#: Inputs that are accepted and not used: the endpoint holds credentials.
IGNORED_INPUTS = ("connection",)

#: Package tools that become an ``embed`` node.
EMBEDDING_TOOLS = frozenset({"promptflow.tools.embedding.embedding"})
#: The substring that makes a package tool a ``retrieve`` node.
INDEX_LOOKUP_MARK = "index_lookup"

#: ``retrieve`` inputs and the names a lookup tool may give them, in order of precedence.
RETRIEVE_ALIASES: dict[str, tuple[str, ...]] = {
    "index": ("index", "mlindex_content", "index_name", "path", "mlindex_path"),
    "query": ("query", "queries"),
    "top_k": ("top_k",),
    "filter": ("filter",),
}
#: Lookup-tool inputs accepted and not used (modelyard's index decides how to search).
RETRIEVE_IGNORED = ("connection", "query_type", "mlindex_asset_id")
#: Default ``top_k`` of a ``retrieve`` node that does not set one.
DEFAULT_TOP_K = 3


def package_tool_kind(tool: str) -> str | None:
    """``embed`` or ``retrieve`` for a prompt flow package tool modelyard runs itself, else None."""
    if tool in EMBEDDING_TOOLS:
        return "embed"
    if INDEX_LOOKUP_MARK in tool:
        return "retrieve"
    return None


def index_name_from_mlindex(content: Any) -> str | None:
    """The index name in an ``mlindex_content`` YAML string (``index.index``, else ``index.name``)."""
    if not isinstance(content, str):
        return None
    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError:
        return None
    index = data.get("index") if isinstance(data, dict) else None
    if not isinstance(index, dict):
        return None
    for key in ("index", "name"):
        if isinstance(index.get(key), str) and index[key].strip():
            return index[key].strip()
    return None
