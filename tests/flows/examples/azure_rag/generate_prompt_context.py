from typing import List

from promptflow import tool


@tool
def generate_prompt_context(search_result: List[dict], faq_result: List[dict]) -> str:
    docs = [f"Content: {r['text']}\nSource: {r.get('metadata', {}).get('source', '')}" for r in search_result]
    faq = [f"FAQ: {r['text']}" for r in faq_result]
    return "\n\n".join(docs + faq)
