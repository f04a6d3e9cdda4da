"""The models the emulator serves, with the fields models.get returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EMBED_METHODS = ("embedContent", "batchEmbedContents", "asyncBatchEmbedContent", "countTokens")


@dataclass(frozen=True)
class Model:
    """An embedding model: its id, default (and largest) dimensionality, display name."""

    id: str
    dims: int
    display_name: str
    description: str
    version: str
    input_token_limit: int = 2048

    @property
    def name(self) -> str:
        """`models/<id>`."""
        return f"models/{self.id}"

    def to_json(self) -> dict[str, Any]:
        """The Model resource as the API returns it."""
        return {
            "name": self.name,
            "version": self.version,
            "displayName": self.display_name,
            "description": self.description,
            "inputTokenLimit": self.input_token_limit,
            "outputTokenLimit": 1,
            "supportedGenerationMethods": list(EMBED_METHODS),
        }


MODELS: tuple[Model, ...] = (
    Model("gemini-embedding-001", 3072, "Gemini Embedding 001",
          "Obtain a distributed representation of a text.", "001"),
    # Multimodal: one Content of several parts is one vector, of all its parts together
    # (inputs._text joins them), as the real model answers. text-embedding-004 and
    # gemini-embedding-exp-03-07 are retired and so 404 like any unknown model.
    Model("gemini-embedding-2", 3072, "Gemini Embedding 2",
          "Obtain a distributed representation of text, images, audio and video.", "2", 8192),
)

_BY_NAME = {model.name: model for model in MODELS}


def find(name: str) -> Model | None:
    """The model called `name` (`models/<id>` or a bare id), if served."""
    return _BY_NAME.get(name if name.startswith("models/") else f"models/{name}")
