"""A finished job's adapter becomes a catalog model that deploys like any other.

`publish` copies the adapter to ``MODELYARD_HOME/models/fine-tuned/<id>/``
(the job's folder may be cleaned up; the model must not go with it) and
installs a catalog file ``ft-<job id>.yaml`` holding one card: the base
card's fields (template, stop sequences, price; its weights as a local path
to the base's file, so every tuned model shares that one file), a new id
(``<base>:ft-[<suffix>-]<6 hex>``) and an ``adapter`` with the file and its
lineage — the job, the data files and their sha256, the hyperparameters and
the metrics. A deployment of that id runs the base GGUF with the adapter
applied by llama.cpp (`backends.llamacpp`); if the adapter file is gone,
creating the deployment is a 409 naming it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..catalog.card import ModelCard
from ..catalog.sources import resolve_path
from .process import sha256_of


def _folder_name(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", model_id)


def publish(settings: Any, catalog: Any, *, job_id: str, base_card: ModelCard, model_id: str, adapter: Path,
            lineage: dict[str, Any]) -> ModelCard:
    """Install the tuned model (see the module docstring) and return its card."""
    adapter = Path(adapter)
    folder = settings.models_dir / "fine-tuned" / _folder_name(model_id)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "adapter.gguf"
    tmp = folder / "adapter.gguf.tmp"
    shutil.copyfile(adapter, tmp)
    os.replace(tmp, target)
    base = base_card.model_dump(mode="json", exclude_none=True)
    base.pop("adapter", None)
    # The base model's weights where they already are: a package's model is assembled under its card's id, so
    # copying the base's source would assemble a second copy of the file for every tuned model.
    base_path = resolve_path(base_card, settings)
    card = ModelCard.model_validate(base | {
        "id": model_id,
        "source": {"type": "local", "path": str(Path(base_path).resolve())},
        "name": f"{base_card.name or base_card.id} fine-tuned ({model_id.split(':', 1)[-1]})",
        "size_bytes": (base_card.size_bytes or 0) + target.stat().st_size,
        "description": f"LoRA fine-tune of {base_card.id} by job {job_id}. {base_card.description}".strip(),
        "adapter": {"path": str(target), "base": base_card.id, "lineage": lineage | {"job": job_id,
                                                                                   "adapter_sha256": sha256_of(target)}},
    })
    staging = folder / f"ft-{job_id}.yaml"
    staging.write_text(yaml.safe_dump([card.model_dump(mode="json", exclude_none=True)], sort_keys=False))
    catalog.add_file(staging)
    return card
