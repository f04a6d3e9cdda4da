"""The API's routes: method and path pattern to endpoint name and handler."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from . import api_batches, api_files, api_models
from .call import Handler

_PARTS = {
    "{version}": r"(?P<version>v1|v1beta|v1alpha)",
    "{id}": r"(?P<id>[^/:]+)",
    "{model}": r"(?P<model>[^/:]+)",
}


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for part, regex in _PARTS.items():
        pattern = pattern.replace(re.escape(part), regex)
    # Any path prefix of the base URL is kept in front of the version.
    return re.compile(r"(?P<prefix>(?:/[^/]+)*?)" + pattern)


@dataclass(frozen=True)
class Route:
    """One endpoint. `keyed` is False for upload chunks, which the session id authorises."""

    method: str
    pattern: re.Pattern[str]
    endpoint: str
    handler: Handler
    keyed: bool = True
    needs_query: str | None = None


def _route(method: str, template: str, endpoint: str, handler: Handler, *,
           keyed: bool = True, needs_query: str | None = None) -> Route:
    return Route(method, _compile(template), endpoint, handler, keyed, needs_query)


ROUTES: tuple[Route, ...] = (
    _route("POST", "/upload/{version}/files", "files.upload_chunk", api_files.upload_chunk,
           keyed=False, needs_query="upload_id"),
    _route("POST", "/upload/{version}/files", "files.upload", api_files.upload_start),
    _route("GET", "/{version}/files", "files.list", api_files.list_files),
    _route("GET", "/{version}/files/{id}:download", "files.download", api_files.download),
    _route("GET", "/download/{version}/files/{id}:download", "files.download",
           api_files.download),
    _route("GET", "/{version}/files/{id}", "files.get", api_files.get),
    _route("DELETE", "/{version}/files/{id}", "files.delete", api_files.delete),
    _route("POST", "/{version}/models/{model}:asyncBatchEmbedContent", "batches.create",
           api_batches.create),
    _route("GET", "/{version}/batches", "batches.list", api_batches.list_batches),
    _route("GET", "/{version}/batches/{id}", "batches.get", api_batches.get),
    _route("POST", "/{version}/batches/{id}:cancel", "batches.cancel", api_batches.cancel),
    _route("DELETE", "/{version}/batches/{id}", "batches.delete", api_batches.delete),
    _route("GET", "/{version}/models", "models.list", api_models.list_models),
    _route("GET", "/{version}/models/{model}", "models.get", api_models.get),
    _route("POST", "/{version}/models/{model}:batchEmbedContents", "models.batchEmbedContents",
           api_models.batch_embed),
    _route("POST", "/{version}/models/{model}:embedContent", "models.embedContent",
           api_models.embed_content),
)


def match(method: str, path: str, query: Mapping[str, str]) -> tuple[Route, dict[str, str]] | None:
    """The route serving `method path?query` and the path's named parts, if any."""
    for route in ROUTES:
        if route.method != method:
            continue
        if route.needs_query is not None and route.needs_query not in query:
            continue
        found = route.pattern.fullmatch(path)
        if found is not None:
            return route, {name: value for name, value in found.groupdict().items()
                           if value is not None}
    return None
