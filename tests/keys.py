"""Keys and parked messages, for the tests of the auth path in every room."""

from __future__ import annotations

from events import jetstream as defs
from events import subjects
from tests.harness import Stack

NEW_KEY = "AIzaSyBatchyardTestKeyRotated0000000002"
BAD_KEY = "AIzaSyBatchyardTestKeyAlsoBad00000000003"


async def everything(stack: Stack, **env: str) -> None:
    """Two of every pod."""
    for _ in range(2):
        await stack.pod("submit", "poll", **env)
        await stack.pod("recovery", **env)
        await stack.pod("key-health", **env)


async def parked(stack: Stack) -> int:
    """Messages on BATCH_PARKED."""
    nc = await stack.nc()
    try:
        return (await nc.jetstream().stream_info(defs.BATCH_PARKED)).state.messages
    finally:
        await nc.close()


async def n_parked(stack: Stack, n: int) -> bool:
    return await parked(stack) >= n


async def rotate(stack: Stack, key: str) -> None:
    """Write `key` to the pods' key file and announce key.rotated."""
    stack.key_file.write_text(key + "\n")
    nc = await stack.nc()
    await nc.jetstream().publish(subjects.KEY_ROTATED, b"")
    await nc.close()
