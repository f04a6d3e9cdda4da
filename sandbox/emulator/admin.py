"""The test-only admin API under /_emulator/: keys, faults, state, clock, health."""

from __future__ import annotations

import math

import msgspec
from aiohttp import web

from . import errors, faults
from .state import EmulatorState
from .wire import decode_object, json_response

STATE = web.AppKey("state", EmulatorState)


async def _object(request: web.Request) -> dict[str, object]:
    return decode_object(await request.read())


async def put_key(request: web.Request) -> web.StreamResponse:
    """PUT /_emulator/keys/{key} `{"state": ...}`: add or change a key."""
    key = request.match_info["key"]
    state = (await _object(request)).get("state")
    request.app[STATE].set_key(key, str(state))
    return json_response({"state": state})


async def put_faults(request: web.Request) -> web.StreamResponse:
    """PUT /_emulator/faults: replace the whole fault set."""
    project = request.app[STATE]
    try:
        fault_set = faults.parse(await request.read(), pending_s=project.pending_s,
                                 running_s=project.running_s)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise errors.invalid_argument(str(error)) from None
    project.set_faults(fault_set)
    return json_response(faults.to_json(fault_set))


async def get_faults(request: web.Request) -> web.StreamResponse:
    """GET /_emulator/faults: the current fault set."""
    return json_response(faults.to_json(request.app[STATE].faults))


async def get_state(request: web.Request) -> web.StreamResponse:
    """GET /_emulator/state: keys, call counts, files and jobs."""
    project = request.app[STATE]
    project.tick()
    return json_response(project.snapshot())


async def advance(request: web.Request) -> web.StreamResponse:
    """POST /_emulator/advance `{"seconds": N}`: move the job clock forward."""
    seconds = (await _object(request)).get("seconds")
    if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds) or seconds < 0):
        raise errors.invalid_argument("seconds must be a non-negative number")
    project = request.app[STATE]
    now = project.clock.advance(float(seconds))
    project.tick()
    return json_response({"now": now})


async def healthz(request: web.Request) -> web.StreamResponse:
    """GET /_emulator/healthz: 200 once serving."""
    return json_response({"status": "ok"})


def add_routes(app: web.Application) -> None:
    """Register the admin routes on `app`."""
    app.router.add_put("/_emulator/keys/{key}", put_key)
    app.router.add_put("/_emulator/faults", put_faults)
    app.router.add_get("/_emulator/faults", get_faults)
    app.router.add_get("/_emulator/state", get_state)
    app.router.add_post("/_emulator/advance", advance)
    app.router.add_get("/_emulator/healthz", healthz)
