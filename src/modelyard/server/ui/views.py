"""What the console's templates show, in words: sizes, prices, memory, how to call an endpoint, a flow's graph."""

from __future__ import annotations

import re
from typing import Any

from ...catalog import format_size

#: The header that sends a request to one deployment, whatever the traffic split.
DEPLOYMENT_HEADER = "modelyard-deployment"


def human_bytes(size: int | None) -> str:
    """``253113024`` -> ``253 MB``; ``—`` when unknown."""
    return "—" if size is None else format_size(size)


def memory_text(mb: int | None) -> str:
    """``372`` -> ``≈ 372 MB``, ``4803`` -> ``≈ 4.8 GB``."""
    if mb is None:
        return "—"
    return f"≈ {mb} MB" if mb < 1000 else f"≈ {mb / 1000:.1f} GB"


def price_text(card: dict[str, Any]) -> str:
    """Hosted: ``$2.50 in / $10.00 out per 1M tokens``; local: ``$0.02 per instance-hour``."""
    price = card.get("price") or {}
    if card.get("format") == "hosted":
        inp, out = price.get("input_per_1m") or 0, price.get("output_per_1m") or 0
        if not (inp or out):
            return "—"
        if card.get("task") == "embedding" or not out:
            return f"${inp:.2f} per 1M tokens"
        return f"${inp:.2f} in / ${out:.2f} out per 1M tokens"
    hourly = price.get("per_instance_hour") or 0
    return f"${hourly:.2f} per instance-hour" if hourly else "—"


def context_text(tokens: int | None) -> str:
    """``32768`` -> ``32K``, ``131072`` -> ``128K``, ``16385`` -> ``16K``, ``1047576`` -> ``1M``, ``256`` -> ``256``."""
    if not tokens:
        return "—"
    if tokens >= 1_000_000:
        return f"{tokens / 1_000_000:.1f}".removesuffix(".0") + "M"
    if tokens >= 1024 and tokens % 1024 == 0:
        return f"{tokens // 1024}K"
    return f"{round(tokens / 1000)}K" if tokens >= 1000 else str(tokens)


def source_text(card: dict[str, Any]) -> str:
    """Where the weights come from, in a few words."""
    source = card.get("source") or {}
    kind = source.get("type")
    if kind == "package":
        return f"Python package {source.get('package')}"
    if kind == "hub":
        file = f"/{source['file']}" if source.get("file") else ""
        return f"Hugging Face Hub {source.get('repo')}{file} @ {source.get('revision')}"
    if kind == "local":
        return f"local file {source.get('path')}"
    if kind == "hosted":
        return f"{source.get('provider')} API at {source.get('base_url')}"
    return "—"


def endpoint_task(desc: dict[str, Any], cards: dict[str, Any]) -> str:
    """``embedding`` when every deployment of the endpoint serves an embedding model, else ``chat``."""
    tasks = {cards[d["model"]].task for d in desc.get("deployments", []) if d.get("model") in cards}
    return "embedding" if tasks == {"embedding"} else "chat"


FILTERS = {
    "human_bytes": human_bytes,
    "memory_text": memory_text,
    "price_text": price_text,
    "context_text": context_text,
    "source_text": source_text,
}


# --- flows ---------------------------------------------------------------------------------

#: The flow graph's box size, the gaps between boxes, and the margin, in SVG units.
NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 188, 62, 28, 46, 8
#: A reference to a whole node's output: ``${compose.output}``.
_NODE_OUTPUT = re.compile(r"^\$\{([^.}]+)\.output\}$")
#: How many characters of a node's name or endpoint fit in its box.
LABEL_CHARS = 24


def clip(text: str, limit: int = LABEL_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked: ``clip("retrieve_documents", 12)`` -> ``retrieve_do…``."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def node_levels(nodes: list[dict[str, Any]]) -> dict[str, int]:
    """Each node's level: 0 for a node that reads no other node, else one below the deepest node it reads.

    >>> node_levels([{"name": "b", "depends_on": ["a"]}, {"name": "a", "depends_on": []},
    ...              {"name": "c", "depends_on": ["a", "b"]}])
    {'b': 1, 'a': 0, 'c': 2}
    """
    deps = {n["name"]: [d for d in n.get("depends_on") or () if d != n["name"]] for n in nodes}
    levels: dict[str, int] = {}

    def level(name: str, seen: frozenset[str]) -> int:
        if name not in levels:
            parents = [d for d in deps.get(name, ()) if d in deps and d not in seen]  # a cycle cannot loop here
            levels[name] = 1 + max((level(d, seen | {name}) for d in parents), default=-1)
        return levels[name]

    for name in deps:
        level(name, frozenset())
    return {name: levels[name] for name in deps}


def dag_layout(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """A flow's DAG laid out top to bottom by `node_levels`, for the flow page's SVG.

    Within a level nodes keep the flow's order, then are sorted by where the nodes they read sit (the
    mean of their parents' columns), which keeps most edges from crossing. Boxes carry their position
    and three label lines (name; type and variant; endpoint or index); edges carry an SVG path from the
    bottom of the node read to the top of the node reading it.

    >>> g = dag_layout([{"name": "rewrite", "type": "llm", "depends_on": [], "endpoint": "small"},
    ...                 {"name": "compose", "type": "llm", "depends_on": ["rewrite"], "endpoint": "large"}])
    >>> [(b["name"], b["level"], b["detail"]) for b in g["boxes"]], [(e["source"], e["target"]) for e in g["edges"]]
    ([('rewrite', 0, 'endpoint small'), ('compose', 1, 'endpoint large')], [('rewrite', 'compose')])
    >>> g["width"], g["height"]
    (204, 186)
    """
    levels = node_levels(nodes)
    by_level: dict[int, list[dict[str, Any]]] = {}
    for node in nodes:
        by_level.setdefault(levels[node["name"]], []).append(node)
    column: dict[str, float] = {}
    rows: list[list[dict[str, Any]]] = []
    for lvl in sorted(by_level):
        row = by_level[lvl]
        if lvl:
            def parents_at(node: dict[str, Any]) -> float:
                seen = [column[d] for d in node.get("depends_on") or () if d in column]
                return sum(seen) / len(seen) if seen else float("inf")
            row = sorted(row, key=parents_at)  # stable: ties keep the flow's order
        for i, node in enumerate(row):
            column[node["name"]] = i - (len(row) - 1) / 2  # centred, so one-node levels line up
        rows.append(row)
    widest = max((len(r) for r in rows), default=1)
    width = 2 * MARGIN + widest * NODE_W + (widest - 1) * GAP_X
    height = 2 * MARGIN + len(rows) * NODE_H + max(len(rows) - 1, 0) * GAP_Y
    boxes: list[dict[str, Any]] = []
    where: dict[str, tuple[float, float]] = {}
    for lvl, row in enumerate(rows):
        left = (width - (len(row) * NODE_W + (len(row) - 1) * GAP_X)) / 2
        y = MARGIN + lvl * (NODE_H + GAP_Y)
        for i, node in enumerate(row):
            x = left + i * (NODE_W + GAP_X)
            where[node["name"]] = (x, y)
            kind = str(node.get("type") or "")
            if node.get("variant"):
                kind += f" · {node['variant']}"
            detail = (f"endpoint {node['endpoint']}" if node.get("endpoint") else
                      f"index {node['index']}" if node.get("index") else "")
            if node.get("activate"):
                detail = (detail + " · " if detail else "") + "conditional"
            boxes.append({"name": node["name"], "label": clip(node["name"]), "type": node.get("type") or "",
                          "kind": clip(kind), "detail": clip(detail), "level": lvl, "x": x, "y": y,
                          "title": " · ".join(filter(None, (node["name"], kind, detail)))})
    edges = []
    for node in nodes:
        for dep in node.get("depends_on") or ():
            if dep not in where or dep == node["name"]:
                continue
            (x1, y1), (x2, y2) = where[dep], where[node["name"]]
            x1, y1, x2 = x1 + NODE_W / 2, y1 + NODE_H, x2 + NODE_W / 2
            bend = max((y2 - y1) / 2, GAP_Y / 2)
            edges.append({"source": dep, "target": node["name"],
                          "d": f"M{x1:g},{y1:g} C{x1:g},{y1 + bend:g} {x2:g},{y2 - bend:g} {x2:g},{y2 - 2:g}"})
    return {"width": width, "height": height, "boxes": boxes, "edges": edges,
            "node_w": NODE_W, "node_h": NODE_H}


def streamed_node(flow: dict[str, Any]) -> str | None:
    """The node whose answer a streamed run sends as ``delta`` events: the llm node the chat output is
    (``${node.output}``), as `flows.FlowEngine.stream_node` picks it; None when the output is not streamed.

    >>> streamed_node({"is_chat": True, "nodes": [{"name": "compose", "type": "llm"}],
    ...                "outputs": {"answer": {"reference": "${compose.output}", "is_chat_output": True}}})
    'compose'
    """
    if not flow.get("is_chat"):
        return None
    llm = {n["name"] for n in flow.get("nodes") or () if n.get("type") == "llm"}
    for out in (flow.get("outputs") or {}).values():
        match = _NODE_OUTPUT.match(str(out.get("reference") or ""))
        if out.get("is_chat_output") and match and match.group(1) in llm:
            return match.group(1)
    return None
