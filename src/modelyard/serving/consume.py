"""Code that calls an endpoint: the snippets `modelyard endpoint consume` prints and the console's Consume tab shows."""

from __future__ import annotations

#: the environment variable the snippets read the endpoint's key from
KEY_VARIABLE = "MODELYARD_API_KEY"
KEY_PLACEHOLDER = f"${KEY_VARIABLE}"

LANGUAGES = (("python", "Python", "pip install openai"), ("curl", "curl", ""),
             ("javascript", "JavaScript", "npm install openai"))


def snippets(endpoint: str, base_url: str, task: str = "chat") -> list[dict[str, str]]:
    """Python (openai), curl and JavaScript calls of ``endpoint`` at ``base_url`` (``.../v1``)."""
    if task == "embedding":
        python = f'''import os

from openai import OpenAI

client = OpenAI(base_url="{base_url}", api_key=os.environ["{KEY_VARIABLE}"])
result = client.embeddings.create(model="{endpoint}", input=["Hello!"])
print(len(result.data[0].embedding))'''
        curl = f'''curl {base_url}/embeddings \\
  -H "Authorization: Bearer {KEY_PLACEHOLDER}" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{endpoint}", "input": ["Hello!"]}}\''''
        javascript = f'''import OpenAI from "openai";

const client = new OpenAI({{ baseURL: "{base_url}", apiKey: process.env.{KEY_VARIABLE} }});
const result = await client.embeddings.create({{ model: "{endpoint}", input: ["Hello!"] }});
console.log(result.data[0].embedding.length);'''
    else:
        python = f'''import os

from openai import OpenAI

client = OpenAI(base_url="{base_url}", api_key=os.environ["{KEY_VARIABLE}"])
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

const client = new OpenAI({{ baseURL: "{base_url}", apiKey: process.env.{KEY_VARIABLE} }});
const reply = await client.chat.completions.create({{
  model: "{endpoint}",
  messages: [{{ role: "user", content: "Hello!" }}],
}});
console.log(reply.choices[0].message.content);'''
    codes = {"python": python, "curl": curl, "javascript": javascript}
    return [{"id": key, "title": title, "hint": hint, "code": codes[key]} for key, title, hint in LANGUAGES]
