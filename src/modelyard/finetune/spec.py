"""What a fine-tuning job is on the wire: the create request, its hyperparameters, and the OpenAI objects.

The create request is OpenAI's (``model``, ``training_file``, ``validation_file``,
``hyperparameters``, ``method``, ``suffix``, ``seed``, ``metadata``). Hyperparameters
come in the older top-level ``hyperparameters`` or in the newer
``method.supervised.hyperparameters``; both may be given if they agree:

| name | default | meaning |
|---|---|---|
| ``n_epochs`` | auto → 3 | passes over the training file |
| ``batch_size`` | auto → min(8, training examples) | examples per optimiser step |
| ``learning_rate_multiplier`` | auto → 1.0 | scales the trainer's base learning rate |
| ``lora_rank`` | 8 | rank of the LoRA matrices (modelyard) |
| ``lora_alpha`` | 16 | LoRA scaling numerator (modelyard) |
| ``max_length`` | 512 | tokens per example; longer ones are cut (modelyard) |

`describe_job`, `describe_event` and `describe_checkpoint` build the
``fine_tuning.job``, ``fine_tuning.job.event`` and ``fine_tuning.job.checkpoint``
objects exactly as the ``openai`` client reads them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from ..errors import from_validation_error, invalid
from ..store.finetune import WIDTHS, CheckpointRecord, EventRecord, JobRecord

#: what ``"auto"`` becomes, where it does not depend on the training file
AUTO = {"n_epochs": 3, "learning_rate_multiplier": 1.0}
#: modelyard's LoRA settings, with their defaults
LORA_DEFAULTS = {"lora_rank": 8, "lora_alpha": 16, "max_length": 512}
#: the longest suffix, as OpenAI allows
MAX_SUFFIX = 64
SUFFIX_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: the organization every job belongs to (OpenAI's object has one)
ORGANIZATION = "modelyard"

#: each hyperparameter's bounds: (may be "auto", whole numbers only, lowest, highest, lowest excluded)
BOUNDS: dict[str, tuple[bool, bool, float, float, bool]] = {
    "n_epochs": (True, True, 1, 50, False),
    "batch_size": (True, True, 1, 256, False),
    "learning_rate_multiplier": (True, False, 0, 100, True),
    "lora_rank": (False, True, 1, 256, False),
    "lora_alpha": (False, False, 0, 4096, True),
    "max_length": (False, True, 16, 131072, False),
}


def _check(name: str, value: Any) -> Any:
    """A hyperparameter's value if it is within its bounds; the ValueError that says what it may be otherwise."""
    auto, whole, low, high, open_low = BOUNDS[name]
    if value is None or (auto and value == "auto"):
        return value
    number = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
    inside = number and (value > low if open_low else value >= low) and value <= high
    if not inside:
        kind = "a whole number" if whole else "a number"
        span = f"above {low:g} and at most {high:g}" if open_low else f"from {low:g} to {high:g}"
        raise ValueError(f"must be {repr('auto') + ' or ' if auto else ''}{kind} {span}, not {value!r}")
    return value


class Hyperparameters(BaseModel):
    """Hyperparameters as a client sends them; bounds keep a typo from becoming a week-long job."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Any = None
    batch_size: Any = None
    learning_rate_multiplier: Any = None
    lora_rank: Any = None
    lora_alpha: Any = None
    max_length: Any = None

    @field_validator(*BOUNDS)
    @classmethod
    def _bounded(cls, v: Any, info: Any) -> Any:
        return _check(info.field_name, v)

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    supervised: Supervised | None = None

    @field_validator("type")
    @classmethod
    def _supervised_only(cls, v: str) -> str:
        if v != "supervised":
            raise ValueError(f"only 'supervised' fine-tuning runs on local models, not {v[:40]!r}")
        return v


class FineTuneCreate(BaseModel):
    """The body of ``POST /v1/fine_tuning/jobs``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=WIDTHS["model"] - MAX_SUFFIX - 12)
    training_file: str = Field(min_length=1, max_length=WIDTHS["training_file"])
    validation_file: str | None = Field(default=None, min_length=1, max_length=WIDTHS["validation_file"])
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(default=None, max_length=MAX_SUFFIX)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None

    @field_validator("model", "training_file", "validation_file")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("it contains a NUL character, which no id or name has")
        return v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and v != "" and not SUFFIX_PATTERN.match(v):
            raise ValueError(f"{v!r} may hold only letters, digits, '.', '_' and '-' and must start with a letter or "
                             "digit (it becomes part of the model's name)")
        return v or None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            if len(v) > 16:
                raise ValueError("at most 16 keys are allowed")
            for key, value in v.items():
                if len(key) > 64 or len(value) > 512:
                    raise ValueError(f"keys are at most 64 characters and values 512 ({key[:64]!r} is too long)")
        return v

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, v: list[Any] | None) -> list[Any] | None:
        if v:
            raise ValueError("integrations (Weights & Biases) are not supported; the job's events and checkpoints "
                             "hold its metrics")
        return None

    @classmethod
    def parse(cls, body: Any) -> "FineTuneCreate":
        """Validate a request body: a 400 naming the first bad field."""
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.", code="invalid_json")
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise from_validation_error(exc) from None

    def requested(self) -> dict[str, Any]:
        """The hyperparameters asked for, from ``hyperparameters`` and ``method.supervised.hyperparameters``
        (which must agree where both name one); the 400 naming the field otherwise."""
        top = self.hyperparameters.given() if self.hyperparameters else {}
        nested_model = self.method.supervised.hyperparameters if self.method and self.method.supervised else None
        nested = nested_model.given() if nested_model else {}
        for name, value in nested.items():
            if name in top and top[name] != value:
                raise invalid(f"hyperparameters.{name} ({top[name]!r}) and method.supervised.hyperparameters.{name} "
                              f"({value!r}) disagree; give it once (method.supervised is the current place).",
                              param=f"method.supervised.hyperparameters.{name}")
        return {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto", **LORA_DEFAULTS,
                **top, **nested}


def resolve(hyperparameters: dict[str, Any], training_examples: int) -> dict[str, Any]:
    """The values a job trains with: ``"auto"`` replaced, now that the training file's size is known."""
    out = dict(hyperparameters)
    if out.get("n_epochs", "auto") == "auto":
        out["n_epochs"] = AUTO["n_epochs"]
    if out.get("batch_size", "auto") == "auto":
        out["batch_size"] = max(1, min(8, training_examples))
    if out.get("learning_rate_multiplier", "auto") == "auto":
        out["learning_rate_multiplier"] = AUTO["learning_rate_multiplier"]
    out["learning_rate_multiplier"] = float(out["learning_rate_multiplier"])
    for name, default in LORA_DEFAULTS.items():
        out.setdefault(name, default)
    return out


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def describe_job(job: JobRecord) -> dict[str, Any]:
    """The OpenAI ``fine_tuning.job`` object (modelyard's LoRA settings ride along in ``hyperparameters``)."""
    hyper = dict(job.hyperparameters)
    openai_hyper = {name: hyper.get(name, "auto") for name in ("batch_size", "learning_rate_multiplier", "n_epochs")}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": _ts(job.created_at),
        "error": job.error,
        "fine_tuned_model": job.fine_tuned_model if job.status == "succeeded" else None,
        "finished_at": _ts(job.finished_at),
        "hyperparameters": hyper,
        "model": job.model,
        "organization_id": ORGANIZATION,
        "result_files": list(job.result_files or []),
        "seed": job.seed,
        "status": job.status,
        "trained_tokens": job.trained_tokens,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "estimated_finish": _ts(job.estimated_finish) if job.status == "running" else None,
        "integrations": [],
        "metadata": job.meta,
        "method": {"type": job.method, job.method: {"hyperparameters": openai_hyper}},
        "user_provided_suffix": job.suffix,
    }


def event_id(record: EventRecord) -> str:
    return f"ftevent-{record.id}"


def checkpoint_id(record: CheckpointRecord) -> str:
    return f"ftckpt-{record.id}"


def parse_row_id(text: str | None, prefix: str) -> int | None:
    """The number in an ``ftevent-N`` / ``ftckpt-N`` id, or None when ``text`` is not one."""
    if text is None or not text.startswith(prefix):
        return None
    digits = text[len(prefix):]
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 18 else None


def describe_event(record: EventRecord) -> dict[str, Any]:
    """The OpenAI ``fine_tuning.job.event`` object."""
    return {"id": event_id(record), "object": "fine_tuning.job.event", "created_at": _ts(record.created_at),
            "level": record.level, "message": record.message, "type": record.type, "data": record.data or {}}


def describe_checkpoint(record: CheckpointRecord) -> dict[str, Any]:
    """The OpenAI ``fine_tuning.job.checkpoint`` object."""
    metrics = {"step": float(record.step), **{k: v for k, v in record.metrics.items() if k != "step"}}
    return {"id": checkpoint_id(record), "object": "fine_tuning.job.checkpoint", "created_at": _ts(record.created_at),
            "fine_tuned_model_checkpoint": record.fine_tuned_model_checkpoint, "fine_tuning_job_id": record.job_id,
            "metrics": metrics, "step_number": record.step}
