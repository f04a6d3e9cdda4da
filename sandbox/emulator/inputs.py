"""Embedding requests read from request bodies and JSONL input files."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from . import errors
from .catalogue import Model
from .wire import pick


@dataclass(frozen=True)
class Item:
    """One request of a batch: its key (or inlined metadata), text and dimensionality, or
    why it cannot run."""

    key: Any
    text: str
    dims: int
    problem: str | None = None
    metadata: dict[str, Any] | None = None  # an inlined request's, echoed on its response


def _text(content: Any) -> str | None:
    if not isinstance(content, dict):
        return None
    parts = content.get("parts")
    if not isinstance(parts, list):
        return None
    texts = [part["text"] for part in parts if isinstance(part, dict)
             and isinstance(part.get("text"), str)]
    # An empty part is an unset `data` oneof to the API, as is no part at all.
    return "".join(texts) or None


def _dims(request: dict[str, Any], model: Model) -> int | str:
    value = pick(request, "output_dimensionality")
    if value is None:
        return model.dims
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return f"Invalid value at 'output_dimensionality' (TYPE_INT32), {json.dumps(value)}"
    if not 1 <= value <= model.dims:
        return (
            f"* EmbedContentRequest.output_dimensionality: Output dimensionality must be"
            f" between 1 and {model.dims}, got {value}.\n"
        )
    return value


def read_request(request: Any, model: Model, key: Any = None) -> Item:
    """An EmbedContentRequest (either spelling of its fields) as an Item."""
    if not isinstance(request, dict):
        return Item(key, "", model.dims, "* EmbedContentRequest: request must be an object.\n")
    dims = _dims(request, model)
    if isinstance(dims, str):
        return Item(key, "", model.dims, dims)
    text = _text(request.get("content"))
    if text is None:
        return Item(key, "", dims, "* EmbedContentRequest.content: contents is not specified\n")
    return Item(key, text, dims)


def require(item: Item) -> Item:
    """`item`, or the 400 its problem deserves when it is sent synchronously."""
    if item.problem is not None:
        raise errors.invalid_argument(item.problem)
    return item


def read_inline(requests: Any, model: Model) -> list[Item]:
    """Inlined batch requests (`{"requests": [{"request": ..., "metadata"?}]}`)."""
    if isinstance(requests, dict):
        requests = requests.get("requests")
    if not isinstance(requests, list):
        raise errors.invalid_argument(
            "* EmbedContentBatch.input_config.requests: must be a list.\n"
        )
    items = []
    for entry in requests:
        request = entry.get("request") if isinstance(entry, dict) else None
        item = require(read_request(request, model))
        metadata = entry.get("metadata") if isinstance(entry, dict) else None
        if metadata is not None and not isinstance(metadata, dict):
            raise errors.invalid_argument(  # a google.protobuf.Struct on the wire
                "* EmbedContentBatch.input_config.requests.metadata: must be an object.\n"
            )
        items.append(replace(item, metadata=metadata) if metadata is not None else item)
    return items


def read_jsonl(data: bytes, model: Model, file_name: str) -> list[Item]:
    """Items from a JSONL input file; a line that is not a JSON object fails the batch."""
    items = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            entry = None
        if not isinstance(entry, dict):
            raise errors.invalid_argument(
                f"Invalid JSON in {file_name} at line {number}: each line must be a JSON object."
            )
        items.append(read_request(entry.get("request"), model, entry.get("key")))
    return items
