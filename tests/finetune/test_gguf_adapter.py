"""peft's LoRA weights written as a llama.cpp GGUF adapter: names, layout and alpha as llama.cpp reads them."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from modelyard.finetune.gguf_adapter import read_adapter_info, write_adapter  # noqa: E402


def test_lora_weights_keep_their_layout_under_the_base_tensors_names(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 640)).astype(np.float32), rng.normal(size=(1024, 8)).astype(np.float32)
    state = {"base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight": a,
             "base_model.model.model.layers.3.self_attn.q_proj.lora_B.default.weight": b,
             "base_model.model.model.layers.0.mlp.down_proj.lora_A.default.weight": a[:, :64]}
    path = write_adapter(tmp_path / "adapter.gguf", state, architecture="gemma3", alpha=16)
    info = read_adapter_info(path)
    assert info == {"type": "adapter", "adapter_type": "lora", "architecture": "gemma3", "alpha": 16.0, "tensors": 3}
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    assert sorted(tensors) == ["blk.0.ffn_down.weight.lora_a", "blk.3.attn_q.weight.lora_a",
                               "blk.3.attn_q.weight.lora_b"]
    # ggml's dimensions run the other way: lora_a is [n_in, rank], lora_b [rank, n_out]
    assert list(tensors["blk.3.attn_q.weight.lora_a"].shape) == [640, 8]
    assert list(tensors["blk.3.attn_q.weight.lora_b"].shape) == [8, 1024]
    assert np.array_equal(np.asarray(tensors["blk.3.attn_q.weight.lora_b"].data).reshape(1024, 8), b)
    assert not (tmp_path / "adapter.gguf.tmp").exists()


def test_an_adapter_on_a_module_llama_cpp_cannot_take_is_refused(tmp_path):
    state = {"base_model.model.model.layers.0.self_attn.q_norm.lora_A.default.weight": np.zeros((2, 4), np.float32)}
    with pytest.raises(ValueError, match="q_norm"):
        write_adapter(tmp_path / "a.gguf", state, architecture="gemma3", alpha=8)
    with pytest.raises(ValueError, match="no LoRA weights"):
        write_adapter(tmp_path / "a.gguf", {"other": np.zeros(2)}, architecture="gemma3", alpha=8)
    assert not (tmp_path / "a.gguf").exists()
