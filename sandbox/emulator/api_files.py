"""The Files API: resumable upload, get, list, delete, download."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from . import errors
from .call import Call
from .wire import json_response, page_size, paginate, pick

log = logging.getLogger("sandbox.emulator")

CHUNK_GRANULARITY = 8 * 1024 * 1024
_MAX_ID = 40


def _header_int(call: Call, name: str) -> int | None:
    value = call.request.headers.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.invalid_argument(f"Invalid {name} header: {value!r}.") from None


async def upload_start(call: Call) -> web.StreamResponse:
    """Open a resumable upload; the session URL comes back in `x-goog-upload-url`."""
    headers = call.request.headers
    if headers.get("X-Goog-Upload-Protocol", "").lower() != "resumable":
        raise errors.invalid_argument("Only the resumable upload protocol is supported.")
    if headers.get("X-Goog-Upload-Command", "").lower() != "start":
        raise errors.invalid_argument("Upload command must be 'start' to begin an upload.")
    body = await call.json()
    file = pick(body, "file") or {}
    if not isinstance(file, dict):
        raise errors.invalid_argument("* CreateFileRequest.file: must be an object.\n")
    total = _header_int(call, "X-Goog-Upload-Header-Content-Length")
    if total is None:
        size = pick(file, "size_bytes")
        total = int(size) if isinstance(size, (int, str)) and str(size).isdigit() else None
    if total is None or total < 0:
        raise errors.invalid_argument("X-Goog-Upload-Header-Content-Length is required.")
    mime_type = (
        pick(file, "mime_type")
        or headers.get("X-Goog-Upload-Header-Content-Type")
        or "application/octet-stream"
    )
    name = file.get("name")
    display_name = pick(file, "display_name")
    if not isinstance(name, str | None) or not isinstance(display_name, str | None):
        raise errors.invalid_argument("* CreateFileRequest.file: name and display_name must be"
                                      " strings.\n")
    session = call.state.files.start_upload(
        name=name, display_name=display_name,
        mime_type=str(mime_type), total=total, key=call.key,
    )
    url = (f"{call.origin}/upload/{call.version}/files"
           f"?upload_id={session.id}&upload_protocol=resumable")
    return json_response({}, headers={
        "x-goog-upload-url": url,
        "x-goog-upload-control-url": url,
        "x-goog-upload-chunk-granularity": str(CHUNK_GRANULARITY),
        "X-Goog-Upload-Status": "active",
    })


async def upload_chunk(call: Call) -> web.StreamResponse:
    """Take one chunk of an upload session (no API key: the session id authorises)."""
    try:
        return await _upload_chunk(call)
    except errors.ApiError as error:
        # Without the status header the SDK re-sends the chunk for ~7 s before failing.
        error.headers["X-Goog-Upload-Status"] = "final"
        raise
    except TimeoutError:
        raise
    except Exception as exc:
        log.exception("emulator.upload_chunk_failed")
        failure = errors.server_error(500)
        failure.headers["X-Goog-Upload-Status"] = "final"
        raise failure from exc


async def _upload_chunk(call: Call) -> web.StreamResponse:
    files = call.state.files
    session_id = call.request.query["upload_id"]
    commands = {part.strip().lower() for part in
                call.request.headers.get("X-Goog-Upload-Command", "").split(",")}
    if commands == {"query"}:
        session = files.sessions.get(session_id)
        if session is None:
            raise errors.not_found("Upload session not found or expired.")
        return json_response({}, headers={
            "X-Goog-Upload-Status": "active",
            "X-Goog-Upload-Size-Received": str(len(session.received)),
        })
    if not commands <= {"upload", "finalize"} or not commands:
        raise errors.invalid_argument("X-Goog-Upload-Command must be upload and/or finalize.")
    offset = _header_int(call, "X-Goog-Upload-Offset")
    if offset is None:
        raise errors.invalid_argument("X-Goog-Upload-Offset is required.")
    session = files.sessions.get(session_id)
    if session is not None:
        # Chunks carry no key; they are counted under the key that opened the session.
        call.state.count(session.key, "files.upload_chunk")
    chunk = await call.body()
    stored = files.append(session_id, offset, chunk, finalize="finalize" in commands,
                          now=call.state.clock.now())
    if stored is None:
        return json_response({}, headers={"X-Goog-Upload-Status": "active"})
    body = {"file": stored.to_json(call.origin, call.version, call.wall(stored.created))}
    return call.respond(body, headers={"X-Goog-Upload-Status": "final"})


def _short_id(call: Call, request_type: str) -> str:
    file_id = call.params["id"]
    if len(file_id) > _MAX_ID:
        raise errors.file_id_too_long(request_type)
    return file_id


async def get(call: Call) -> web.StreamResponse:
    """A file's metadata."""
    stored = call.state.files.get(_short_id(call, "GetFileRequest"))
    return call.respond(stored.to_json(call.origin, call.version, call.wall(stored.created)))


async def delete(call: Call) -> web.StreamResponse:
    """Delete a file."""
    files = call.state.files
    stored = files.get(_short_id(call, "DeleteFileRequest"))
    del files.files[stored.id]
    return json_response({})


async def list_files(call: Call) -> web.StreamResponse:
    """A page of files, newest first."""
    query = call.request.query
    size = page_size(query.get("pageSize"), default=10, maximum=100)
    page, token = paginate(call.state.files.listing(), lambda f: f.seq,
                           query.get("pageToken"), size)
    body: dict[str, object] = {}
    if page:
        body["files"] = [f.to_json(call.origin, call.version, call.wall(f.created)) for f in page]
    if token:
        body["nextPageToken"] = token
    return call.respond(body)


async def download(call: Call) -> web.StreamResponse:
    """A file's bytes (`?alt=media`); ids over 40 characters are allowed here."""
    stored = call.state.files.get(call.params["id"])
    if call.request.query.get("alt", "media") != "media":
        raise errors.invalid_argument("Only alt=media is supported for downloads.")
    latency = call.state.faults.download_latency_ms
    if latency:
        await asyncio.sleep(latency / 1000)
    return web.Response(body=stored.data, content_type=stored.mime_type)
