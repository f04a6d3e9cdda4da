"""Subject names and Nats-Msg-Id builders (CONTRACT §3)."""

from __future__ import annotations

from typing import Final

SUBMIT: Final = "batch.submit"
POLL: Final = "batch.poll"
COMPLETED: Final = "batch.completed"
DEAD: Final = "batch.dead"
AUTH_FAILED: Final = "batch.auth_failed"
KEY_ROTATED: Final = "key.rotated"
KEY_VALID: Final = "key.valid"
KEY_INVALID: Final = "key.invalid"


def submit_id(batch_id: str, attempt: int) -> str:
    return f"submit:{batch_id}:{attempt}"


def poll_id(batch_id: str, attempt: int, shard: int = 0) -> str:
    base = f"poll:{batch_id}:{attempt}"
    return f"{base}#{shard}" if shard else base


def completed_id(batch_id: str, attempt: int) -> str:
    # With the attempt: a re-driven batch finishing inside the duplicate window is
    # announced again.
    return f"completed:{batch_id}:{attempt}"


def parked_id(seq: int) -> str:
    return f"parked:{seq}"


def replay_id(seq: int) -> str:
    return f"replay:{seq}"


def dead_id(seq: int) -> str:
    return f"dead:{seq}"


def held_id(seq: int) -> str:
    return f"held:{seq}"


def display_name(batch_id: str, attempt: int, shard: int = 0) -> str:
    """The Gemini job display_name for one attempt (and shard) of a batch."""
    base = f"{batch_id}:{attempt}"
    return f"{base}#{shard}" if shard else base


def pack_poll_id(pack_id: str) -> str:
    return f"poll:pack:{pack_id}"
