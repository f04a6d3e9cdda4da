"""One API call as a handler sees it: the request, the project state, the path's parts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import catalogue, errors
from .catalogue import Model
from .state import EmulatorState
from .wire import Mask, decode_object, field_mask, json_response

MAX_BODY_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class Call:
    """A routed API call; `params` holds the path's version, prefix, id or model."""

    request: web.Request
    state: EmulatorState
    params: dict[str, str]
    key: str
    mask: Mask | None = None

    @staticmethod
    def mask_of(request: web.Request) -> Mask | None:
        """The partial response asked for, if any; a bad one is the API's 400 before any
        work is done."""
        spec = request.headers.get("X-Goog-FieldMask") or request.query.get("fields")
        return field_mask(spec) if spec else None

    def respond(self, obj: Any, **kwargs: Any) -> web.Response:
        """A JSON answer with only the fields the call asked for."""
        return json_response(obj, mask=self.mask, **kwargs)

    @property
    def version(self) -> str:
        """The API version in the path: v1, v1beta or v1alpha."""
        return self.params["version"]

    @property
    def origin(self) -> str:
        """Scheme, Host and path prefix the caller reached the emulator by."""
        return f"{self.request.scheme}://{self.request.host}{self.params['prefix']}"

    def wall(self, moment: float) -> float:
        """Unix time of emulator time `moment`."""
        return self.state.clock.wall(moment)

    def model(self, method: str) -> Model:
        """The model in the path, or the API's 404 naming `method`."""
        name = f"models/{self.params['model']}"
        model = catalogue.find(name)
        if model is None:
            raise errors.model_not_found(name, self.version, method)
        return model

    async def body(self) -> bytes:
        """The raw body; one over MAX_BODY_BYTES is the API's 400."""
        try:
            return await self.request.read()
        except web.HTTPRequestEntityTooLarge:
            raise errors.payload_too_large(MAX_BODY_BYTES) from None

    async def json(self) -> dict[str, Any]:
        """The body as a JSON object."""
        return decode_object(await self.body())


Handler = Callable[[Call], Awaitable[web.StreamResponse]]
