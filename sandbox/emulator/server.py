"""The aiohttp application, the per-call pipeline, and the in-process `Emulator`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from . import admin, errors, router
from .admin_client import AdminClient
from .call import MAX_BODY_BYTES, Call
from .state import EmulatorState
from .wire import error_response

log = logging.getLogger("sandbox.emulator")

DEFAULT_DEADLINE_S = 60.0
DEADLINE_MARGIN_S = 0.25
_DEFAULT_MODEL = "models/gemini-embedding-001"


def _deadline(request: web.Request) -> float:
    # The SDK sends X-Server-Timeout (whole seconds, rounded up) when the client has a
    # timeout; answering a little before it lets the client see the 504.
    try:
        client_s = float(request.headers["X-Server-Timeout"])
    except (KeyError, ValueError):
        return DEFAULT_DEADLINE_S
    return max(0.1, min(DEFAULT_DEADLINE_S, client_s - DEADLINE_MARGIN_S))


async def _serve(route: router.Route, call: Call) -> web.StreamResponse:
    project = call.state
    latency = project.faults.latency_ms
    if latency:
        await asyncio.sleep(latency / 1000)
    if not call.key:
        raise errors.missing_key()
    key_error = errors.for_key_state(project.key_state(call.key))
    if key_error is not None:
        raise key_error
    model = call.params.get("model")
    fault = project.call_fault(f"models/{model}" if model else _DEFAULT_MODEL)
    if fault is not None:
        raise fault
    project.tick()
    return await route.handler(call)


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Every API path: route, count, authorise, inject faults, handle within a deadline."""
    project = request.app[admin.STATE]
    found = router.match(request.method, request.path, request.query)
    if found is None:
        raise errors.method_not_found()
    route, params = found
    project.tick()
    key = ""
    if route.keyed:
        key = request.headers.get("x-goog-api-key") or request.query.get("key") or ""
        project.count(key, route.endpoint)
    call = Call(request, project, params, key, Call.mask_of(request))
    try:
        async with asyncio.timeout(_deadline(request)):
            if not route.keyed:
                return await route.handler(call)
            return await _serve(route, call)
    except TimeoutError:
        error = errors.server_error(504)
        if not route.keyed:
            error.headers["X-Goog-Upload-Status"] = "final"
        raise error from None


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer every failure as a JSON error body with Content-Type application/json."""
    try:
        return await handler(request)
    except errors.ApiError as error:
        return error_response(error)
    except web.HTTPRequestEntityTooLarge:
        return error_response(errors.payload_too_large(MAX_BODY_BYTES))
    except web.HTTPException as error:
        if error.status == 404 or error.status == 405:
            return error_response(errors.method_not_found())
        return error_response(errors.ApiError(error.status, "UNKNOWN", error.reason))
    except Exception:
        log.exception("emulator.handler_failed path=%s", request.path)
        return error_response(errors.server_error(500))


def build_app(project: EmulatorState) -> web.Application:
    """The emulator's aiohttp application over `project`."""
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_BODY_BYTES)
    app[admin.STATE] = project
    admin.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


class PathAccessLogger(AbstractAccessLogger):
    """Access log lines with the path only: a `?key=` query never reaches the log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.3fs", request.method, request.path, response.status, time)


def _key_states(keys: Iterable[str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(keys, Mapping):
        return dict(keys)
    return {key: "valid" for key in keys}


class Emulator(AdminClient):
    """The emulator served on this event loop: `async with Emulator() as emu: emu.url`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keys: Iterable[str] | Mapping[str, str] = (),
        job_pending_s: float = 0.5,
        job_running_s: float = 1.0,
        access_log: bool = False,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.project = EmulatorState(
            keys=_key_states(keys), pending_s=job_pending_s, running_s=job_running_s
        )
        self._access_log = access_log
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Listen; returns the base URL for `HttpOptions(base_url=...)`."""
        runner = web.AppRunner(
            build_app(self.project),
            access_log=log if self._access_log else None,
            access_log_class=PathAccessLogger,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        self.url = f"http://{host}:{self.port}"
        return self.url

    async def stop(self) -> None:
        """Close the admin session and stop listening."""
        await self.close_admin()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
