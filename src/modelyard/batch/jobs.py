"""What a batch job is on the wire: settings, the create request, the Batch object, output lines.

The create request is OpenAI's (``input_file_id``, ``endpoint``,
``completion_window``, ``metadata``) plus the Azure-ML batch settings, which
a client passes as extra body fields or, as strings, in ``metadata``
(``client.batches.create(..., extra_body={"mini_batch_size": 16})`` or
``metadata={"deployment": "blue"}``):

| setting | default | meaning |
|---|---|---|
| ``model`` | each line's ``body.model`` | the endpoint every line goes to |
| ``deployment`` | the endpoint's traffic split | the one deployment every line goes to |
| ``mini_batch_size`` | 10 | lines read, run by one worker and committed together |
| ``max_retries`` | 3 | attempts per line (the first counts) on a retryable error (408, 429, 5xx) |
| ``error_threshold`` | -1 | more failed lines than this fail the job; -1: never |
| ``output_action`` | ``append_row`` | ``summary_only``: count results, write no output files |
| ``max_share`` | MODELYARD_BATCH_MAX_SHARE | share (0-1] of a deployment's capacity the job may hold |
| ``engine`` | ``local`` | ``ray-data``: the lines run on a Ray cluster as a Ray Dataset (see `batch.ray_data`) |

Output lines are OpenAI's: ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``; a line that never ran (the job was
cancelled, failed or expired first) has ``response: null`` and ``error:
{"code": "batch_cancelled" | "batch_failed" | "batch_expired", "message"}``.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import from_validation_error, invalid
from ..store.batches import WIDTHS, JobRecord, LineRecord
from .validate import BATCH_URLS, line_request_id

COMPLETION_WINDOW_S = 24 * 3600
#: create-request settings that may also come as metadata strings
SETTINGS = ("model", "deployment", "mini_batch_size", "max_retries", "error_threshold", "output_action", "max_share",
            "engine")
#: where a job's lines run: the gateway's own deployments, or a Ray cluster (`batch.ray_data`)
ENGINES = ("local", "ray-data")
#: statuses a line is attempted again on (up to ``max_retries`` attempts)
RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: why lines that never ran did not, by the job's final status
NOT_RUN = {
    "cancelled": ("batch_cancelled", "The batch was cancelled before this request ran."),
    "failed": ("batch_failed", "The batch failed (too many failed requests) before this request ran."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
}


class BatchConfig(BaseSettings):
    """Gateway-wide batch settings, from the environment (read once; a bad value names its variable).

    | variable | default | meaning |
    |---|---|---|
    | MODELYARD_BATCH_MAX_FILE_BYTES | 200 MiB | larger uploads get 413 |
    | MODELYARD_BATCH_MAX_LINES | 50000 | requests per input file |
    | MODELYARD_BATCH_MAX_SHARE | 1.0 | share of a deployment's capacity batch work may hold |
    | MODELYARD_BATCH_RETRY_BACKOFF_S | 1.0 | wait before a line's 2nd attempt; doubles each time, at most 30 s |
    | MODELYARD_BATCH_MAX_WORKERS | 64 | lines one job runs at once, at most |
    | MODELYARD_BATCH_COMPLETION_WINDOW_S | 86400 | what ``completion_window: "24h"`` gives a job before it expires |
    | MODELYARD_BATCH_KEY_QUOTA_BYTES | 5 GiB | bytes of files one endpoint key may keep (its inputs and outputs) |
    | MODELYARD_BATCH_KEY_QUOTA_FILES | 5000 | files one endpoint key may keep |
    | MODELYARD_BATCH_SWEEP_INTERVAL_S | 600 | how often expired files are deleted (and once at start) |
    | MODELYARD_BATCH_RAY_MAX_ACTORS | unset | most Ray actors a ray-data job's pool grows to (unset: the deployment's most instances) |

    The quota is what keeps one endpoint key from filling the disk the database and the usage records live
    on: an upload that would pass it gets 413 ``storage_quota_exceeded`` (see `files.KeyQuota`). A job's output
    files count towards its key's quota but are always written. The admin key has no quota: it is the
    operator's, who owns the disk.
    """

    model_config = SettingsConfigDict(env_prefix="MODELYARD_BATCH_", env_ignore_empty=True, frozen=True,
                                      extra="ignore")

    max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_lines: int = Field(default=50_000, gt=0)
    max_share: float = Field(default=1.0, gt=0, le=1)
    retry_backoff_s: float = Field(default=1.0, ge=0)
    max_workers: int = Field(default=64, ge=1)
    completion_window_s: float = Field(default=COMPLETION_WINDOW_S, gt=0)
    key_quota_bytes: int = Field(default=5 * 1024**3, gt=0)
    key_quota_files: int = Field(default=5000, gt=0)
    sweep_interval_s: float = Field(default=600.0, gt=0)
    ray_max_actors: int | None = Field(default=None, ge=1)

    @classmethod
    def from_env(cls) -> "BatchConfig":
        return cls()


class OutputExpiry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class BatchCreate(BaseModel):
    """The body of ``POST /v1/batches``."""

    model_config = ConfigDict(extra="forbid")

    # the widths of the columns they are stored in: SQLite would keep a longer value, PostgreSQL refuse it
    input_file_id: str = Field(min_length=1, max_length=WIDTHS["batch_jobs.input_file_id"])
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    #: OpenAI's ``{"anchor": "created_at", "seconds": 3600..2592000}``: the output and error files expire
    output_expires_after: OutputExpiry | None = None
    model: str | None = Field(default=None, min_length=1, max_length=WIDTHS["batch_jobs.model"])
    deployment: str | None = Field(default=None, min_length=1, max_length=WIDTHS["batch_jobs.deployment"])
    mini_batch_size: int = Field(default=10, ge=1, le=1000)
    max_retries: int = Field(default=3, ge=1, le=10)
    error_threshold: int = Field(default=-1, ge=-1)
    output_action: Literal["append_row", "summary_only"] = "append_row"
    max_share: float | None = Field(default=None, gt=0, le=1)
    engine: Literal["local", "ray-data"] = "local"

    @field_validator("input_file_id", "model", "deployment")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("it contains a NUL character, which no id or name has")
        return v

    @field_validator("endpoint")
    @classmethod
    def _known_endpoint(cls, v: str) -> str:
        if v not in BATCH_URLS:
            raise ValueError(f"{v!r} is not supported; a batch calls one of {', '.join(BATCH_URLS)}")
        return v

    @field_validator("completion_window")
    @classmethod
    def _window(cls, v: str) -> str:
        if v != "24h":
            raise ValueError(f"only '24h' is supported, not {v!r}")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            if len(v) > 16:
                raise ValueError("at most 16 keys are allowed")
            for key, value in v.items():
                if len(key) > 64 or len(value) > 512:
                    raise ValueError(f"keys are at most 64 characters and values 512 ({key!r} is too long)")
        return v

    @classmethod
    def parse(cls, body: Any) -> "BatchCreate":
        """Validate a request body; settings in ``metadata`` apply unless the body sets them itself."""
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.", code="invalid_json")
        data = dict(body)
        meta = data.get("metadata")
        if isinstance(meta, dict):
            for name in SETTINGS:
                if name in meta and data.get(name) is None:
                    data[name] = meta[name]
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise from_validation_error(exc) from None


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def describe_job(job: JobRecord, usage: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI Batch object, plus modelyard's settings and spend under ``modelyard``."""
    started = job.in_progress_at
    ended = job.completed_at or job.failed_at or job.cancelled_at or job.expired_at
    elapsed = ((ended.timestamp() if ended else time.time()) - started.timestamp()) if started else 0.0
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": job.endpoint,
        "model": job.model,
        "errors": {"object": "list", "data": job.errors} if job.errors else None,
        "input_file_id": job.input_file_id,
        "completion_window": job.completion_window,
        "status": job.status,
        "output_file_id": job.output_file_id,
        "error_file_id": job.error_file_id,
        "created_at": _ts(job.created_at),
        "in_progress_at": _ts(job.in_progress_at),
        "expires_at": _ts(job.expires_at),
        "finalizing_at": _ts(job.finalizing_at),
        "completed_at": _ts(job.completed_at),
        "failed_at": _ts(job.failed_at),
        "expired_at": _ts(job.expired_at),
        "cancelling_at": _ts(job.cancelling_at),
        "cancelled_at": _ts(job.cancelled_at),
        "request_counts": {"total": job.total, "completed": job.completed, "failed": job.failed},
        "metadata": job.meta,
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
        },
        "modelyard": {
            "deployment": job.deployment,
            "mini_batch_size": job.mini_batch_size,
            "max_retries": job.max_retries,
            "error_threshold": job.error_threshold,
            "output_action": job.output_action,
            "max_share": job.max_share,
            "engine": job.engine,
            "requests": usage["requests"],
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "cost_usd": usage["cost_usd"],
            "elapsed_s": round(max(elapsed, 0.0), 3),
        },
    }


def key_revoked(key_id: int) -> dict[str, Any]:
    """The job error of a batch whose key was revoked while it ran."""
    return {"code": "key_revoked", "line": None, "param": None,
            "message": f"The API key that created this batch (id {key_id}) was revoked; no further requests "
                       "were sent."}


def output_line(job_id: str, line: LineRecord, not_run: tuple[str, str] | None = None) -> bytes:
    """One line of an output or error file (with its newline)."""
    out: dict[str, Any] = {"id": line_request_id(job_id, line.line), "custom_id": line.custom_id}
    if line.state == "pending":
        code, message = not_run or NOT_RUN["cancelled"]
        out.update(response=None, error={"code": code, "message": message})
    else:
        body = orjson.Fragment(line.response) if line.response else None
        out.update(response={"status_code": line.status_code, "request_id": line.request_id, "body": body},
                   error=None)
    return orjson.dumps(out) + b"\n"
