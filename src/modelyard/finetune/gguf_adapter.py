"""A peft LoRA adapter written as a llama.cpp GGUF adapter, for `Llama(lora_path=…)` on the base GGUF.

llama.cpp reads a LoRA adapter as a GGUF file whose ``general.type`` is
``adapter``, ``adapter.type`` is ``lora``, ``adapter.lora.alpha`` the
scaling numerator (llama.cpp scales by alpha / rank, as peft does), and
whose tensors are named after the base model's, with ``.lora_a`` /
``.lora_b`` appended. peft's ``lora_A.weight`` is (rank, in) and
``lora_B.weight`` (out, rank) in row-major order, which is exactly the
layout llama.cpp wants for them (ggml's dimensions run the other way), so
the tensors are written as they are — except the query and key projections
of the architectures whose converter permutes those rows for its rotary
embedding (llama), where B's rows are permuted the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Hugging Face module name → the GGUF tensor name of the weight it adapts
MODULES = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}
#: architectures whose GGUF converter permutes the query/key rows (and by how many heads)
_PERMUTED = {"llama"}
_KEY = re.compile(r"\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.(?:\w+\.)?weight$")


def _permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """The llama converter's rotary permutation, applied to the output rows of a matrix."""
    out = rows.shape[0]
    return rows.reshape(n_head, 2, out // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def adapter_tensors(state: Mapping[str, Any], *, architecture: str, n_head: int = 0,
                    n_head_kv: int = 0) -> dict[str, np.ndarray]:
    """The GGUF tensors of a peft state dict (``…layers.N.self_attn.q_proj.lora_A.weight`` and so on)."""
    tensors: dict[str, np.ndarray] = {}
    for key, value in state.items():
        m = _KEY.search(key)
        if m is None:
            continue
        layer, module, which = int(m.group(1)), m.group(2), m.group(3)
        if module not in MODULES:
            raise ValueError(f"LoRA on {module!r} cannot be written for llama.cpp (known: {', '.join(MODULES)})")
        array = value.detach().to("cpu").float().numpy() if hasattr(value, "detach") else np.asarray(value)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if which == "B" and architecture in _PERMUTED and module in ("q_proj", "k_proj"):
            array = _permute(array, n_head if module == "q_proj" else n_head_kv)
        tensors[f"blk.{layer}.{MODULES[module]}.weight.lora_{which.lower()}"] = array
    if not tensors:
        raise ValueError("the adapter holds no LoRA weights")
    return tensors


def write_adapter(path: Path, state: Mapping[str, Any], *, architecture: str, alpha: float, n_head: int = 0,
                  n_head_kv: int = 0, name: str = "") -> Path:
    """Write the adapter to ``path`` (through a temporary file and a rename: never half a file)."""
    import gguf

    path = Path(path)
    tensors = adapter_tensors(state, architecture=architecture, n_head=n_head, n_head_kv=n_head_kv)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), architecture)
    try:
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(alpha))
        if name:
            writer.add_name(name)
        for tensor_name in sorted(tensors):
            writer.add_tensor(tensor_name, tensors[tensor_name])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def read_adapter_info(path: Path) -> dict[str, Any]:
    """What an adapter file says about itself: its architecture, alpha and tensor count (for checks)."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(name: str) -> Any:
        f = reader.fields.get(name)
        return f.contents() if f is not None else None

    return {"type": field("general.type"), "adapter_type": field("adapter.type"),
            "architecture": field("general.architecture"), "alpha": field("adapter.lora.alpha"),
            "tensors": len(reader.tensors)}
