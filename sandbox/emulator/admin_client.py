"""An aiohttp client of the admin API, shared by the in-process and subprocess emulators."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp


class AdminError(Exception):
    """The admin API refused a call."""


class AdminClient:
    """Async helpers for /_emulator/: keys, faults, state, clock."""

    url: str

    def __init__(self, url: str = "") -> None:
        self.url = url
        self._session: aiohttp.ClientSession | None = None

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._session.request(method, f"{self.url}/_emulator/{path}",
                                         json=body) as response:
            if response.status != 200:
                raise AdminError(f"{method} /_emulator/{path}: {response.status} "
                                 f"{await response.text()}")
            return await response.json()

    async def set_key(self, key: str, state: str) -> None:
        """Add or change a key: valid, expired, invalid or revoked."""
        await self._call("PUT", f"keys/{quote(key, safe='')}", {"state": state})

    async def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace the whole fault set (unnamed faults back to defaults); returns it."""
        result: dict[str, Any] = await self._call("PUT", "faults", faults)
        return result

    async def faults(self) -> dict[str, Any]:
        """The current fault set."""
        result: dict[str, Any] = await self._call("GET", "faults")
        return result

    async def state(self) -> dict[str, Any]:
        """Keys, call counts per key, files and jobs."""
        result: dict[str, Any] = await self._call("GET", "state")
        return result

    async def advance(self, seconds: float) -> float:
        """Move the job clock `seconds` ahead; returns the new emulator time."""
        result = await self._call("POST", "advance", {"seconds": seconds})
        return float(result["now"])

    async def close_admin(self) -> None:
        """Close the admin HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
