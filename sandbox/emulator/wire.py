"""JSON on the wire: encoding, responses, timestamps, field names, page tokens."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from . import errors

JSON = "application/json"
_encoder = msgspec.json.Encoder()


def dumps(obj: Any, *, nan: bool = False) -> bytes:
    """Encode `obj`; with `nan`, non-finite floats are written as NaN/Infinity literals."""
    if nan:
        # msgspec writes NaN as null, which a float list cannot hold; Python's json
        # (and so the SDK's json.loads) reads the NaN literal back as a float.
        return json.dumps(obj, separators=(",", ":")).encode()
    return _encoder.encode(obj)


def json_response(
    obj: Any, *, status: int = 200, headers: dict[str, str] | None = None, nan: bool = False
) -> web.Response:
    """A response with a JSON body and Content-Type application/json."""
    return web.Response(
        body=dumps(obj, nan=nan), status=status, headers=headers, content_type=JSON
    )


def error_response(error: errors.ApiError) -> web.Response:
    """The JSON answer for `error`, with its extra headers."""
    return json_response(error.body(), status=error.code, headers=error.headers)


def timestamp(wall: float) -> str:
    """RFC 3339 UTC with microseconds, as Google's JSON mapping writes it."""
    moment = dt.datetime.fromtimestamp(wall, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def pick(obj: dict[str, Any], name: str, default: Any = None) -> Any:
    """Field `name` (snake_case) of a request object, spelled snake_case or camelCase."""
    if name in obj:
        return obj[name]
    return obj.get(_camel(name), default)


def decode_object(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (empty means `{}`)."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise errors.invalid_argument("Invalid JSON payload received. Unexpected token.") from None
    if not isinstance(value, dict):
        raise errors.invalid_argument(
            "Invalid JSON payload received. Expected an object at the top level."
        )
    return value


def page_token(seq: int) -> str:
    """An opaque token naming the position after the item numbered `seq`."""
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode().rstrip("=")


def read_page_token(token: str | None) -> int | None:
    """The position a page token names, or None for the first page."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        tag, _, seq = text.partition(":")
        if tag == "after":
            return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        pass
    raise errors.invalid_argument("Invalid page token.")


def page_size(value: str | None, *, default: int, maximum: int) -> int:
    """The pageSize query parameter, clamped as the API does."""
    if value is None or value == "":
        return default
    try:
        size = int(value)
    except ValueError:
        raise errors.invalid_argument(
            f"Invalid value at 'page_size' (TYPE_INT32), \"{value}\""
        ) from None
    if size <= 0:
        return default
    return min(size, maximum)


def paginate(
    items: list[Any], seq: Callable[[Any], int], token: str | None, size: int
) -> tuple[list[Any], str | None]:
    """One page of `items` (listing order, `seq` strictly decreasing) and the next token."""
    after = read_page_token(token)
    rest = items if after is None else [item for item in items if seq(item) < after]
    page = rest[:size]
    next_token = page_token(seq(page[-1])) if len(rest) > size else None
    return page, next_token
