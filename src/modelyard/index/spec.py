"""An index's settings and name: what `modelyard index create` fixes once.

The settings are stored in the index's own file and never change: chunks cut
another way, or embedded by another model, would not be comparable with the
ones already there. To change them, create a new index.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

#: an index name is a file name too: letters, digits, ``.``, ``_``, ``-``; 64 characters at most
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)

DEFAULT_CHUNK = 800
DEFAULT_OVERLAP = 100


class IndexSettings(BaseModel):
    """How an index cuts and embeds its documents.

    >>> IndexSettings(embed="embed", chunk_size=800, overlap=100).dimensions is None
    True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the embeddings endpoint every chunk and every query goes through
    embed: str = Field(min_length=1, max_length=200)
    #: about how many characters a chunk holds (it never holds more)
    chunk_size: int = Field(default=DEFAULT_CHUNK, ge=100, le=20_000)
    #: about how many characters a chunk repeats from the one before it
    overlap: int = Field(default=DEFAULT_OVERLAP, ge=0)
    #: the vectors' size, learnt from the first document's embeddings
    dimensions: int | None = Field(default=None, ge=1, le=65_536)
    #: how vectors are stored on disk: float16 halves the file; cosine scores move by about 1e-3
    vector_dtype: Literal["float16", "float32"] = "float16"
    #: the folder it was created from, if any (``modelyard index add`` names files relative to it)
    source: str | None = Field(default=None, max_length=4096)

    @field_validator("overlap")
    @classmethod
    def _overlap_below_half(cls, overlap: int, info: ValidationInfo) -> int:
        size = info.data.get("chunk_size")
        if size is not None and overlap > size // 2:
            raise ValueError(f"overlap must be at most half of chunk_size ({size // 2}), not {overlap}")
        return overlap


def check_name(name: str) -> str:
    """`name` if it can name an index, else a ValueError that says what is allowed."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{str(name)[:80]!r} cannot name an index: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name
