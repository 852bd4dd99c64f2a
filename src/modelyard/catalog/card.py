"""The ModelCard: one catalog entry, and where its weights come from.

A card says what a model is (task, size, format, license, context length),
how to get it (a `source`), how to talk to it (a chat template name for GGUF
files that carry none of their own) and what it costs: a price per million
input and output tokens for hosted models, or a cost per instance-hour for
models this machine runs.

Example, as written in a catalog YAML file::

    - id: qwen2.5-0.5b-instruct
      family: qwen2.5
      task: chat
      format: gguf
      size: 0.5B
      quantization: Q4_K_M
      license: apache-2.0
      context_length: 32768
      chat_template: chatml
      source: {type: hub, repo: Qwen/Qwen2.5-0.5B-Instruct-GGUF,
               file: qwen2.5-0.5b-instruct-q4_k_m.gguf, revision: main}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Task = Literal["chat", "completion", "embedding"]
Format = Literal["gguf", "transformers", "hosted"]


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PackageSource(_Source):
    """Weights shipped inside a Python package (nothing to download at run time).

    `entry` names ``module:function``; calling it returns the model's path
    (a function that takes ``output_path`` is handed a path under
    ``MODELYARD_HOME/models/packages``). ``module:ATTRIBUTE`` names a path
    constant instead. Without `entry` the package's module folder is the path.
    """

    type: Literal["package"] = "package"
    package: str
    entry: str | None = None


class HubSource(_Source):
    """A file (GGUF) or whole repository (transformers) on the Hugging Face Hub."""

    type: Literal["hub"] = "hub"
    repo: str
    file: str | None = None
    revision: str = "main"
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$", description="sha256 of `file`, checked after download")
    extra_files: list[str] = Field(
        default_factory=list,
        description="more files fetched beside `file`, e.g. the other shards of a split GGUF; `file` is the first shard",
    )


class LocalSource(_Source):
    type: Literal["local"] = "local"
    path: str


class HostedSource(_Source):
    """A model behind an OpenAI-compatible API (OpenAI, Azure OpenAI, vLLM, Ollama, modelyard)."""

    type: Literal["hosted"] = "hosted"
    provider: Literal["openai", "azure", "vllm", "ollama", "modelyard", "openai-compatible"] = "openai"
    base_url: str
    model: str | None = Field(default=None, description="the upstream model (or Azure deployment) name; defaults to the card id")
    api_key_env: str | None = None
    api_version: str | None = Field(default=None, description="Azure OpenAI api-version query parameter")


Source = Annotated[Union[PackageSource, HubSource, LocalSource, HostedSource], Field(discriminator="type")]


class Price(BaseModel):
    """List price. Hosted: USD per 1M tokens. Local: USD per instance-hour (an estimate the operator sets)."""

    model_config = ConfigDict(extra="forbid")
    input_per_1m: float = Field(default=0.0, ge=0)
    output_per_1m: float = Field(default=0.0, ge=0)
    per_instance_hour: float = Field(default=0.0, ge=0)

    def token_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1_000_000


class Adapter(BaseModel):
    """A fine-tuned model's LoRA adapter (a GGUF file) and where it came from."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="the adapter's GGUF file")
    base: str = Field(description="the catalog id of the model it was trained on")
    scale: float = Field(default=1.0, gt=0, le=4)
    #: how it was made: job id, data files with their sha256, hyperparameters, metrics
    lineage: dict[str, Any] = Field(default_factory=dict)


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: ``:`` appears in fine-tuned models' ids (``gemma-3-270m:ft-orders-1a2b3c``), as in OpenAI's
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
    name: str | None = None
    family: str
    task: Task
    format: Format
    size: str | None = Field(default=None, description="parameter count, e.g. 270M, 7B")
    size_bytes: int | None = Field(default=None, ge=0, description="download size")
    quantization: str | None = None
    license: str
    context_length: int = Field(ge=1)
    embedding_dimensions: int | None = None
    chat_template: str | None = Field(default=None, description="template name for models whose file carries none")
    stop: list[str] = Field(default_factory=list, description="stop sequences the template needs")
    source: Source
    price: Price = Field(default_factory=Price)
    description: str = ""
    #: a LoRA adapter llama.cpp applies on the base weights (`source`): fine-tuned models
    adapter: Adapter | None = None

    @property
    def is_hosted(self) -> bool:
        return self.format == "hosted"

    @property
    def tasks(self) -> tuple[str, ...]:
        """The request kinds this model answers: a chat model also does plain completions."""
        if self.task == "embedding":
            return ("embedding",)
        return ("chat", "completion")
