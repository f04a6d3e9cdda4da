"""The Batch API for embeddings: create, get, list, cancel, delete."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import embed, errors, inputs
from .call import Call
from .catalogue import Model
from .jobs import Job
from .wire import json_response, page_size, paginate, pick


def _operation(call: Call, job: Job) -> web.StreamResponse:
    body = job.operation(call.state.clock.now(), call.wall)
    return call.respond(body)


def _read_source(call: Call, model: Model, config: dict[str, Any]) -> tuple[
    list[inputs.Item], dict[str, Any], str | None
]:
    file_name = pick(config, "file_name")
    requests = config.get("requests")
    if (file_name is None) == (requests is None):
        raise errors.invalid_argument(
            "* EmbedContentBatch.input_config: exactly one of file_name or requests must be"
            " set.\n"
        )
    if requests is not None:
        return inputs.read_inline(requests, model), {"requests": requests}, None
    if not isinstance(file_name, str):
        raise errors.invalid_argument("* EmbedContentBatch.input_config.file_name: must be a"
                                      " string.\n")
    stored = call.state.files.get(file_name.removeprefix("files/"))
    items = inputs.read_jsonl(stored.data, model, stored.name)
    return items, {"fileName": stored.name}, stored.name


async def create(call: Call) -> web.StreamResponse:
    """`models/{m}:asyncBatchEmbedContent`: a new job from a file or inlined requests."""
    model = call.model("asyncBatchEmbedContent")
    body = await call.json()
    batch = pick(body, "batch")
    if not isinstance(batch, dict):
        raise errors.invalid_argument("* AsyncBatchEmbedContentRequest.batch: batch is required.\n")
    config = pick(batch, "input_config")
    if not isinstance(config, dict):
        raise errors.invalid_argument(
            "* EmbedContentBatch.input_config: input_config is required.\n"
        )
    items, input_config, input_file = _read_source(call, model, config)
    if not items:
        raise errors.invalid_argument(
            "* EmbedContentBatch.input_config: the batch contains no requests.\n"
        )
    est_tokens = embed.estimate_tokens([item.text for item in items])
    call.state.admit(model, est_tokens)
    display_name = pick(batch, "display_name")
    job = call.state.create_job(
        model=model, items=items,
        display_name=display_name if isinstance(display_name, str) else None,
        key=call.key, input_config=input_config, input_file=input_file, est_tokens=est_tokens,
    )
    if call.state.dice.chance(call.state.faults.create_lost_rate):
        call.state.injected["lost_create"] += 1
        raise errors.server_error(503)
    return _operation(call, job)


async def get(call: Call) -> web.StreamResponse:
    """A job as an Operation."""
    return _operation(call, call.state.job(call.params["id"]))


async def list_batches(call: Call) -> web.StreamResponse:
    """A page of jobs, newest first, as `{"operations": [...]}`."""
    query = call.request.query
    size = page_size(query.get("pageSize"), default=10, maximum=100)
    page, token = paginate(call.state.listing(), lambda job: job.seq, query.get("pageToken"), size)
    now = call.state.clock.now()
    body: dict[str, Any] = {}
    if page:
        body["operations"] = [job.operation(now, call.wall) for job in page]
    if token:
        body["nextPageToken"] = token
    return call.respond(body)


async def cancel(call: Call) -> web.StreamResponse:
    """`batches/{id}:cancel`."""
    call.state.cancel(call.params["id"])
    return json_response({})


async def delete(call: Call) -> web.StreamResponse:
    """Forget a job (its output file stays)."""
    job = call.state.job(call.params["id"])
    del call.state.jobs[job.id]
    return json_response({})
