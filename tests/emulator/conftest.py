"""Fixtures for the emulator's tests: an in-process emulator and SDK clients of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from google import genai
from google.genai import types

from sandbox.emulator import Emulator

KEY = "test-key-1"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    """A fresh emulator on the test's loop with one valid key, KEY."""
    async with Emulator(keys=[KEY]) as emulator:
        yield emulator


ClientFactory = Callable[..., genai.Client]


@pytest.fixture
async def make_client(emu: Emulator) -> AsyncIterator[ClientFactory]:
    """Build SDK clients of `emu` (v1beta unless told); all are closed after the test."""
    clients: list[genai.Client] = []

    def build(key: str = KEY, *, api_version: str = "v1beta", timeout: int = 30000,
              headers: dict[str, str] | None = None) -> genai.Client:
        client = genai.Client(
            api_key=key,
            http_options=types.HttpOptions(
                base_url=emu.url, api_version=api_version, timeout=timeout, headers=headers
            ),
        )
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.aio.aclose()
        client.close()


@pytest.fixture
def client(make_client: ClientFactory) -> genai.Client:
    """An SDK client of `emu` with KEY, v1beta; use `client.aio` for async calls."""
    return make_client()
