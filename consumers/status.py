"""A batch's status and the moves between statuses: the one table every change obeys.

`Store.move` guards each change with the table's statuses for its target (narrowed,
where a step expects less, to a subset that is checked against the table). The module
sits at the top of consumers/, not in batch/, because store/ needs it and store/ may
not import batch/.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from events.payloads import Stage

# The same set as the CHECK constraint on batchyard.batches.status (tests keep them equal).
Status = Literal["pending_submission", "submitting", "submitted", "auth_failed",
                 "succeeded", "partial", "failed", "dead", "cancelled"]

STATUSES: frozenset[Status] = frozenset(get_args(Status))
INITIAL: Status = "pending_submission"  # a batch's row is created in it
# No message will move the batch again; only an operator's re-drive or resubmit does.
FINISHED: frozenset[Status] = frozenset({"succeeded", "partial", "failed", "dead", "cancelled"})
# The attempt still has messages that will settle it (auth_failed is never terminal).
LIVE: frozenset[Status] = STATUSES - FINISHED
# An attempt whose job may exist or be made right now: a later attempt waits for it.
RUNNING: frozenset[Status] = frozenset({"submitting", "submitted"})
# A pack member still in its pack: joined, its job made, or the pack's poll parked
# (a member of a refused pack goes back to pending_submission, on its own).
PACKED: frozenset[Status] = frozenset({"submitting", "submitted", "auth_failed"})
# When a stage's message is dead-lettered, a batch in one of these dies with it: the
# message was the one working on that attempt.
DIES_WITH: dict[Stage, frozenset[Status]] = {
    "submit": frozenset({"pending_submission", "submitting"}),
    "poll": frozenset({"submitted"}),
}
# Where the replay of a message parked at a stage puts its batch back (the poll stage
# keeps the job name, so the running job is polled again).
UNPARKED_TO: dict[Stage, Status] = {"submit": "pending_submission", "poll": "submitted"}

# For each status, the statuses a batch may enter it from, and why.
ENTERED_FROM: dict[Status, frozenset[Status]] = {
    "pending_submission": frozenset({
        "submitting",  # held for room; or a member of a refused pack goes round alone
        "submitted",  # failed items go round as the next attempt
        "auth_failed",  # a message parked at submit is replayed
        *FINISHED,  # an operator re-drive or resubmit opens the next attempt
    }),
    # The submit step takes the row of its message's attempt whatever it says; under
    # the batch's claim its own checks decide: pending_submission for a new attempt,
    # submitting or submitted (no job yet) when a crash is resumed, auth_failed for a
    # parked message redelivered, a finished status when a re-driven attempt's
    # message is handled before its row moved on.
    "submitting": STATUSES,
    "submitted": frozenset({
        "submitting",  # the job was made, or the online path embedded the batch
        "submitted",  # a resumed sharded attempt, every shard's job made again
        "auth_failed",  # a message parked at poll is replayed
    }),
    # An attempt ends: from submitting with no job (everything reused, or online), from
    # submitted when its jobs end.
    "succeeded": frozenset({"submitting", "submitted"}),
    "partial": frozenset({"submitting", "submitted"}),
    "failed": frozenset({"submitting", "submitted"}),
    # A bad key parks whatever step was live; a parked message redelivered parks again.
    "auth_failed": LIVE,
    # The message working on the attempt is dead-lettered (see DIES_WITH).
    "dead": DIES_WITH["submit"] | DIES_WITH["poll"],
    # An operator cancels a batch that has not finished.
    "cancelled": LIVE,
}


def allowed_from(to: Status, only: Status | Collection[Status] | None = None,
                 ) -> frozenset[Status]:
    """The statuses a batch may move to `to` from: the table's, or `only` when a step
    expects less. Raises ValueError for a status the table does not know, or for an
    `only` the table does not allow."""
    if to not in ENTERED_FROM:
        raise ValueError(f"unknown batch status {to!r}")
    allowed = ENTERED_FROM[to]
    if only is None:
        return allowed
    narrowed: frozenset[Status] = frozenset([only] if isinstance(only, str) else only)
    if not narrowed:
        raise ValueError(f"a move to {to!r} from no status would never happen")
    if not narrowed <= allowed:
        raise ValueError(f"a batch may not move to {to!r} from {sorted(narrowed - allowed)}"
                         f" (the table allows {sorted(allowed)})")
    return narrowed
