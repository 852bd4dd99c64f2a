from promptflow import tool


@tool
def detect_language(text: str) -> str:
    return "German" if any(w in text.lower().split() for w in ("bitte", "danke")) else "English"


@tool
def open_ticket(message: str, priority: int = 3) -> dict:
    return {"id": f"T-{abs(hash(message)) % 10000}", "priority": priority}


@tool
def merge(refund: str | None = None, general: str | None = None, ticket: str | None = None) -> str:
    reply = refund or general or ""
    return f"{reply}\n(ticket {ticket})" if ticket else reply
