"""Models: get, list, and online embedding (`batchEmbedContents`, `embedContent`).

Each request is one vector whatever its parts: a Content of several parts (what the SDK
sends for a list of texts on gemini-embedding-2) is embedded as their joined text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from . import catalogue, embed, errors, inputs
from .call import Call
from .catalogue import Model
from .wire import page_size, paginate

MAX_ONLINE_REQUESTS = 100


async def get(call: Call) -> web.StreamResponse:
    """One model."""
    return call.respond(call.model("get").to_json())


async def list_models(call: Call) -> web.StreamResponse:
    """A page of models."""
    query = call.request.query
    size = page_size(query.get("pageSize"), default=50, maximum=1000)
    count = len(catalogue.MODELS)
    numbered = list(enumerate(catalogue.MODELS))
    page, token = paginate(numbered, lambda pair: count - pair[0], query.get("pageToken"), size)
    body: dict[str, Any] = {"models": [model.to_json() for _, model in page]}
    if token:
        body["nextPageToken"] = token
    return call.respond(body)


def _values(call: Call, model: Model, item: inputs.Item) -> Sequence[float | str]:
    values = embed.vector(model.id, item.text, item.dims)
    faults = call.state.faults
    if faults.bad_vector is not None and call.state.dice.chance(faults.bad_vector_rate):
        return embed.corrupt(values, faults.bad_vector)
    return values


async def batch_embed(call: Call) -> web.StreamResponse:
    """`models/{m}:batchEmbedContents`: up to 100 texts embedded at once."""
    model = call.model("batchEmbedContents")
    requests = (await call.json()).get("requests")
    if not isinstance(requests, list) or not requests:
        raise errors.invalid_argument("* BatchEmbedContentsRequest.requests: requests is empty\n")
    if len(requests) > MAX_ONLINE_REQUESTS:
        raise errors.invalid_argument(
            "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n"
        )
    items = [inputs.require(inputs.read_request(request, model)) for request in requests]
    embeddings = [{"values": _values(call, model, item)} for item in items]
    call.state.tokens["online"] += embed.estimate_tokens([item.text for item in items])
    if call.state.faults.online_drop_one:
        embeddings.pop()
    return call.respond({"embeddings": embeddings})


async def embed_content(call: Call) -> web.StreamResponse:
    """`models/{m}:embedContent`: one text."""
    model = call.model("embedContent")
    item = inputs.require(inputs.read_request(await call.json(), model))
    call.state.tokens["online"] += embed.estimate_tokens([item.text])
    return call.respond({"embedding": {"values": _values(call, model, item)}})
