"""JSON on the wire: encoding, responses, timestamps, field names, page tokens."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from . import errors

JSON = "application/json"
_encoder = msgspec.json.Encoder()


def dumps(obj: Any) -> bytes:
    """Encode `obj` (a non-finite float goes as the string "NaN", as proto3 JSON has it)."""
    return _encoder.encode(obj)


def json_response(
    obj: Any, *, status: int = 200, headers: dict[str, str] | None = None,
    mask: Mask | None = None,
) -> web.Response:
    """A response with a JSON body and Content-Type application/json; `mask` keeps only
    the fields a partial-response request selected."""
    if mask is not None:
        obj = masked(obj, mask)
    return web.Response(
        body=dumps(obj), status=status, headers=headers, content_type=JSON
    )


# The fields one selection keeps, each with what it keeps of its value; {} keeps it whole.
Mask = dict[str, "Mask"]
_MASK_NAME = re.compile(r"[\w@*]+")
_MASK_TOKEN = re.compile(r"[\w@*]+|[^\s\w@*]")
_MASK_DEPTH = 16


def field_mask(spec: str) -> Mask:
    """A partial-response selection, as the `fields` parameter or the X-Goog-FieldMask
    header gives it: `a,b.c,d(e,f)`; `/` also separates, `*` is every field."""
    tokens = _MASK_TOKEN.findall(spec)
    mask, pos = _selection(tokens, 0, 0, spec)
    if pos != len(tokens):
        raise _bad_mask(spec)
    return mask


def _selection(tokens: list[str], pos: int, depth: int, spec: str) -> tuple[Mask, int]:
    if depth > _MASK_DEPTH:
        raise _bad_mask(spec)
    mask: Mask = {}
    while True:
        node = mask
        while True:  # a path: name, then `.name` or `/name`
            if pos >= len(tokens) or not _MASK_NAME.fullmatch(tokens[pos]):
                raise _bad_mask(spec)
            node = node.setdefault(_camel(tokens[pos]), {})
            pos += 1
            if pos < len(tokens) and tokens[pos] in "./":
                pos += 1
                continue
            break
        if pos < len(tokens) and tokens[pos] == "(":
            inner, pos = _selection(tokens, pos + 1, depth + 1, spec)
            if pos >= len(tokens) or tokens[pos] != ")":
                raise _bad_mask(spec)
            node.update(inner)
            pos += 1
        if pos < len(tokens) and tokens[pos] == ",":
            pos += 1
            continue
        return mask, pos


def _bad_mask(spec: str) -> errors.ApiError:
    return errors.invalid_argument(f"Invalid field selection {spec[:200]}")


def masked(value: Any, mask: Mask) -> Any:
    """`value` with only the fields `mask` selects (lists: in each element)."""
    if not mask:
        return value
    if isinstance(value, list):
        return [masked(v, mask) for v in value]
    if not isinstance(value, dict):
        return value
    if "*" in mask:
        return {k: masked(v, mask["*"]) for k, v in value.items()}
    return {k: masked(value[k], sub) for k, sub in mask.items() if k in value}


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
