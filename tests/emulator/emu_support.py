"""Helpers for the emulator's tests: JSONL inputs, vector checks, SDK calls."""

from __future__ import annotations

import io
import json
import math
from typing import Any

from google import genai
from google.genai import errors, types


def jsonl(texts: list[str], *, dims: int | None = None, snake: bool = True) -> bytes:
    """A batch input file: one `{"key", "request"}` line per text, keys r0, r1, ..."""
    lines = []
    for index, text in enumerate(texts):
        request: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
        if dims is not None:
            request["output_dimensionality" if snake else "outputDimensionality"] = dims
        lines.append(json.dumps({"key": f"r{index}", "request": request}))
    return ("\n".join(lines) + "\n").encode()


def read_lines(data: bytes) -> list[dict[str, Any]]:
    """The objects of a JSONL output file."""
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def is_unit(values: list[float]) -> bool:
    """True when `values` has length 1 (within float32 error)."""
    return math.isclose(math.fsum(v * v for v in values), 1.0, rel_tol=1e-6)


async def upload(client: genai.Client, data: bytes, display_name: str = "in") -> types.File:
    """Upload `data` as JSONL with the async client."""
    return await client.aio.files.upload(
        file=io.BytesIO(data),
        config={"mime_type": "application/jsonl", "display_name": display_name},
    )


async def file_job(client: genai.Client, texts: list[str], *, dims: int | None = None,
                   display_name: str | None = None) -> types.BatchJob:
    """Upload `texts` and create an embeddings job from the file."""
    uploaded = await upload(client, jsonl(texts, dims=dims))
    config = {"display_name": display_name} if display_name else None
    return await client.aio.batches.create_embeddings(
        model="gemini-embedding-001", src={"file_name": uploaded.name}, config=config
    )


async def inline_job(client: genai.Client, texts: list[str], *, dims: int | None = None,
                     model: str = "gemini-embedding-001") -> types.BatchJob:
    """Create an embeddings job with inlined requests."""
    src: dict[str, Any] = {"contents": texts}
    if dims is not None:
        src["config"] = {"output_dimensionality": dims}
    return await client.aio.batches.create_embeddings(model=model, src={"inlined_requests": src})


async def client_error(awaitable: Any) -> errors.ClientError:
    """The ClientError `awaitable` raises (fails the test if it raises none)."""
    try:
        await awaitable
    except errors.ClientError as error:
        return error
    raise AssertionError("expected a ClientError")


def error_info_reason(error: errors.APIError) -> str | None:
    """The ErrorInfo reason in an SDK error's body, if any."""
    for detail in error.details["error"].get("details", []):
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return str(detail["reason"])
    return None


def detail(error: errors.APIError, kind: str) -> dict[str, Any] | None:
    """The `google.rpc.<kind>` detail of an SDK error's body, if any."""
    for item in error.details["error"].get("details", []):
        if item.get("@type") == f"type.googleapis.com/google.rpc.{kind}":
            return dict(item)
    return None
