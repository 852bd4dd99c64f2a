from promptflow.core import tool


def _line(hit: dict) -> str:
    return f"- {hit['text']} (source: {hit.get('source', 'unknown')})"


@tool
def format_context(hits: list, max_chars: int = 4000) -> str:
    """The search hits as a bulleted list, cut at max_chars."""
    text = "\n".join(_line(h) for h in hits)
    return text[:max_chars]
