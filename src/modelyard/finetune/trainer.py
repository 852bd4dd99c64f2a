"""LoRA training on CPU (or a GPU where torch sees one) with transformers + peft, resumable from checkpoints.

**The base model** is the card's own GGUF file: transformers loads a GGUF
and dequantises it to float32 (`load_base`). That takes a minute or two and
much of it is converting the tokenizer, so the first load keeps the result
under ``~/.cache/modelyard/finetune-base/`` (the tokenizer's files, the
weights as safetensors, the config; keyed by the file's content, the two
most recently used kept) and later jobs on the same file load in seconds.

**Where the time goes.** Gemma 3 270M has a 262,144-token vocabulary: the
output projection over every position costs more than the 18 layers
together. Loss is only taken on answer tokens (`data.encode`), so the
training step runs the layers over the whole sequence but the output
projection only over the positions that are learned (`_loss`): on the
demonstration task that is a third of the positions, and a step is about
twice as fast as a `labels=`-style forward that projects every position.

**Checkpoints** (`Checkpoints`) hold the adapter's weights, the optimiser's
state and the step; they are written to a temporary folder and renamed, so
a process killed at any moment leaves the last complete one, and the next
run starts from it with the same order of batches (each epoch's order is
fixed by the seed), so a resumed job trains exactly what an uninterrupted
one would have.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import Encoded

log = logging.getLogger(__name__)

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_LEARNING_RATE = 2e-4
#: converted base models kept in the cache
KEEP_CONVERTED = 2
#: validation loss is measured on at most this many validation conversations
MAX_VALIDATION_EXAMPLES = 64


class TrainingError(Exception):
    """A job that cannot go on, with the OpenAI-style code and field it is about."""

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


@dataclass
class Hyperparameters:
    n_epochs: int = 3
    batch_size: int = 8
    learning_rate_multiplier: float = 1.0
    lora_rank: int = 8
    lora_alpha: int = 16
    max_length: int = 512

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.learning_rate_multiplier


# -- the base model ------------------------------------------------------------------------


def cache_root() -> Path:
    """MODELYARD_FINETUNE_CACHE, else ``$XDG_CACHE_HOME/modelyard/finetune-base`` (``~/.cache`` by default)."""
    if os.environ.get("MODELYARD_FINETUNE_CACHE"):
        return Path(os.environ["MODELYARD_FINETUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelyard" / "finetune-base"


def _file_key(path: Path) -> str:
    """The file's size and the sha256 of its first and last MiB: the same model assembled into several homes
    is one cache entry, and a changed file is a new one."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def load_base(gguf_path: Path, *, cache: Path | None = None) -> tuple[Any, Any]:
    """(model in float32, fast tokenizer) for a GGUF file, through the cache described above."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise TrainingError(f"the base model's file {gguf_path} is missing; pull the model first",
                            code="model_load_failed", param="model")
    folder = (cache or cache_root()) / f"{gguf_path.stem}-{_file_key(gguf_path)}"
    if (folder / "complete").exists():
        os.utime(folder / "complete")  # recently used: kept by `_prune`
        return (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                AutoTokenizer.from_pretrained(folder))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - whatever a foreign file makes transformers raise, the job says so
        raise TrainingError(f"transformers cannot load {gguf_path.name} for training ({type(exc).__name__}: "
                            f"{str(exc)[:300]})", code="model_load_failed", param="model") from None
    if not getattr(tokenizer, "is_fast", False):
        raise TrainingError(f"{gguf_path.name}: training needs a fast tokenizer (offsets), and this one is not",
                            code="model_load_failed", param="model")
    if not model.config.architectures:
        model.config.architectures = [type(model).__name__]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tokenizer.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "complete").write_text(str(gguf_path))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except Exception as exc:  # noqa: BLE001 - no room for the cache (safetensors raises its own error): train anyway
        log.warning("could not keep the converted base model in %s: %s", folder, exc)
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(folder.parent, keep=KEEP_CONVERTED)
    return model, tokenizer


def _prune(root: Path, keep: int) -> None:
    """Keep the ``keep`` most recently used converted models (each is about 1 GB for Gemma 3 270M)."""
    done = sorted((p for p in root.glob("*") if (p / "complete").exists()),
                  key=lambda p: (p / "complete").stat().st_mtime, reverse=True)
    for old in done[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def architecture_of(gguf_path: Path) -> tuple[str, int, int]:
    """(llama.cpp architecture, heads, key/value heads) from the GGUF's metadata."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    arch = reader.fields["general.architecture"].contents()

    def number(key: str) -> int:
        f = reader.fields.get(f"{arch}.{key}")
        value = f.contents() if f is not None else 0
        return int(value[0] if isinstance(value, list) else value)

    return arch, number("attention.head_count"), number("attention.head_count_kv")


# -- training ------------------------------------------------------------------------------


@dataclass
class Step:
    step: int
    total_steps: int
    epoch: int
    train_loss: float
    tokens: int
    seconds: float
    valid_loss: float | None = None


@dataclass
class Result:
    steps: int
    trained_tokens: int
    train_loss: float
    valid_loss: float | None
    state: dict[str, Any] = field(repr=False, default_factory=dict)


def _batches(n: int, batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _tensors(batch: Sequence[Encoded], pad: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    learned = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, e in enumerate(batch):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        attention[row, : len(e.ids)] = 1
        learned[row, : len(e.ids)] = torch.tensor(e.learned)
    return ids, attention, learned


def _loss(model: Any, ids: Any, attention: Any, learned: Any) -> tuple[Any, int]:
    """Mean cross-entropy over the learned tokens; the output projection runs on their positions only."""
    import torch

    inner = model.get_base_model()
    device = inner.lm_head.weight.device
    ids, attention, learned = ids.to(device), attention.to(device), learned.to(device)
    hidden = inner.model(input_ids=ids, attention_mask=attention).last_hidden_state
    targets = learned[:, 1:]  # position t predicts token t + 1
    picked = hidden[:, :-1][targets]
    logits = inner.lm_head(picked).float()
    softcap = getattr(inner.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    labels = ids[:, 1:][targets]
    return torch.nn.functional.cross_entropy(logits, labels), int(targets.sum())


class Checkpoints:
    """``step-N`` folders under one directory; the newest complete one is where a run resumes."""

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def latest(self) -> Path | None:
        done = [p for p in self.root.glob("step-*") if (p / "state.json").exists() and p.name[5:].isdigit()]
        return max(done, key=lambda p: int(p.name[5:]), default=None)

    def save(self, step: int, adapter: dict[str, Any], optimizer: dict[str, Any], meta: dict[str, Any]) -> Path:
        import torch

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{step}"
        tmp = self.root / f".step-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for name, obj in (("adapter.pt", adapter), ("optimizer.pt", optimizer)):
                # serialised in memory (a few MB), written with plain file I/O: a full disk is then an OSError
                # with its errno (torch's own writer raises a RuntimeError that says nothing of the disk)
                buffer = io.BytesIO()
                torch.save(obj, buffer)
                with open(tmp / name, "wb") as handle:
                    handle.write(buffer.getbuffer())
                    handle.flush()
                    os.fsync(handle.fileno())
            (tmp / "state.json").write_text(json.dumps({"step": step} | meta))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # never half a checkpoint
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(self.root.glob("step-*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else -1)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        import torch

        return (torch.load(path / "adapter.pt", weights_only=True, map_location="cpu"),
                torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"),
                json.loads((path / "state.json").read_text()))


def lora_model(model: Any, hp: Hyperparameters) -> Any:
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in TARGET_MODULES if m in present]
    config = LoraConfig(r=hp.lora_rank, lora_alpha=hp.lora_alpha, target_modules=targets, lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def adapter_state(peft_model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in peft_model.named_parameters() if v.requires_grad}


def evaluate(peft_model: Any, examples: Sequence[Encoded], *, batch_size: int, pad: int) -> float | None:
    """Mean loss per learned token over (at most `MAX_VALIDATION_EXAMPLES`) conversations."""
    import torch

    examples = list(examples)[:MAX_VALIDATION_EXAMPLES]
    if not examples:
        return None
    total, count = 0.0, 0
    peft_model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            loss, n = _loss(peft_model, *_tensors(examples[i:i + batch_size], pad))
            total += float(loss) * n
            count += n
    peft_model.train()
    return total / max(count, 1)


def train(model: Any, train_set: Sequence[Encoded], valid_set: Sequence[Encoded], hp: Hyperparameters, *,
          seed: int, checkpoints: Checkpoints, checkpoint_every: int, pad: int,
          on_step: Callable[[Step], None] = lambda s: None,
          on_checkpoint: Callable[[Step, Path], None] = lambda s, p: None) -> Result:
    """Train LoRA on ``model`` (a transformers causal LM, on the device it is on), resuming from the newest
    checkpoint."""
    import torch

    torch.manual_seed(seed)
    peft_model = lora_model(model, hp)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=0.0)
    per_epoch = math.ceil(len(train_set) / hp.batch_size)
    total = per_epoch * hp.n_epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(total, 1)))
    start, trained_tokens, last_loss, valid = 0, 0, float("nan"), None
    resume = checkpoints.latest()
    if resume is not None:
        adapter, optim_state, meta = Checkpoints.load(resume)
        named = dict(peft_model.named_parameters())
        with torch.no_grad():
            for k, v in adapter.items():
                named[k].copy_(v)
        optimizer.load_state_dict(optim_state["optimizer"])
        schedule.load_state_dict(optim_state["schedule"])
        start, trained_tokens = int(meta["step"]), int(meta.get("trained_tokens", 0))
        last_loss, valid = float(meta.get("train_loss", float("nan"))), meta.get("valid_loss")
    peft_model.train()
    step = start
    for epoch in range(start // per_epoch, hp.n_epochs):
        for index, batch in enumerate(_batches(len(train_set), hp.batch_size, epoch, seed)):
            if epoch * per_epoch + index < start:
                continue
            began = time.perf_counter()
            items = [train_set[i] for i in batch]
            ids, attention, learned = _tensors(items, pad)
            loss, _ = _loss(peft_model, ids, attention, learned)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens = int(attention.sum())
            trained_tokens += tokens
            last_loss = float(loss.detach())
            info = Step(step, total, epoch + 1, last_loss, tokens, time.perf_counter() - began)
            if step % checkpoint_every == 0 or step == total:
                valid = evaluate(peft_model, valid_set, batch_size=hp.batch_size, pad=pad)
                info.valid_loss = valid
            on_step(info)
            if step % checkpoint_every == 0 and step < total:
                path = checkpoints.save(step, adapter_state(peft_model),
                                        {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()},
                                        {"trained_tokens": trained_tokens, "train_loss": last_loss, "valid_loss": valid})
                on_checkpoint(info, path)
    return Result(step, trained_tokens, last_loss, valid, adapter_state(peft_model))
