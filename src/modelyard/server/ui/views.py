"""What the console's templates show, in words: sizes, prices, memory, and how to call an endpoint."""

from __future__ import annotations

from typing import Any

#: The header that sends a request to one deployment, whatever the traffic split.
DEPLOYMENT_HEADER = "modelyard-deployment"
#: Stands for a key of the endpoint in the snippets.
KEY_PLACEHOLDER = "$MODELYARD_API_KEY"


def human_bytes(size: int | None) -> str:
    """``253113024`` -> ``253 MB`` (decimal units, as download sizes are quoted)."""
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


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


def snippets(endpoint: str, base_url: str, task: str = "chat") -> list[dict[str, str]]:
    """Python (openai), curl and JavaScript calls of ``endpoint`` at ``base_url`` (``.../v1``)."""
    if task == "embedding":
        python = f'''from openai import OpenAI

client = OpenAI(base_url="{base_url}", api_key="{KEY_PLACEHOLDER}")
result = client.embeddings.create(model="{endpoint}", input=["Hello!"])
print(len(result.data[0].embedding))'''
        curl = f'''curl {base_url}/embeddings \\
  -H "Authorization: Bearer {KEY_PLACEHOLDER}" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{endpoint}", "input": ["Hello!"]}}\''''
        javascript = f'''import OpenAI from "openai";

const client = new OpenAI({{ baseURL: "{base_url}", apiKey: process.env.MODELYARD_API_KEY }});
const result = await client.embeddings.create({{ model: "{endpoint}", input: ["Hello!"] }});
console.log(result.data[0].embedding.length);'''
    else:
        python = f'''from openai import OpenAI

client = OpenAI(base_url="{base_url}", api_key="{KEY_PLACEHOLDER}")
reply = client.chat.completions.create(
    model="{endpoint}",
    messages=[{{"role": "user", "content": "Hello!"}}],
)
print(reply.choices[0].message.content)'''
        curl = f'''curl {base_url}/chat/completions \\
  -H "Authorization: Bearer {KEY_PLACEHOLDER}" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{endpoint}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\''''
        javascript = f'''import OpenAI from "openai";

const client = new OpenAI({{ baseURL: "{base_url}", apiKey: process.env.MODELYARD_API_KEY }});
const reply = await client.chat.completions.create({{
  model: "{endpoint}",
  messages: [{{ role: "user", content: "Hello!" }}],
}});
console.log(reply.choices[0].message.content);'''
    return [{"id": "python", "title": "Python", "hint": "pip install openai", "code": python},
            {"id": "curl", "title": "curl", "hint": "", "code": curl},
            {"id": "javascript", "title": "JavaScript", "hint": "npm install openai", "code": javascript}]


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
