"""The end of an attempt: retry failed items, dead-letter exhausted ones, complete the batch."""

from __future__ import annotations

from typing import Any, Literal

import structlog
from nats.aio.msg import Msg

from consumers import failpoints, metrics
from consumers.app import App, utcnow
from consumers.batch import letters, reuse
from consumers.batch.inputs import Input, next_attempt
from consumers.status import Status
from events import subjects
from events.payloads import Completed, DeadItem, ErrorDetail, Item
from events.publisher import publish

log = structlog.get_logger("batchyard")


async def finish_attempt(app: App, msg: Msg, inp: Input, attempt: int,
                         failures: dict[str, ErrorDetail], *, stage: str,
                         job_name: str | None, path: str | None,
                         whole_job_failed: bool = False, member: bool = False,
                         ) -> Status:
    """Settle one attempt of a batch; returns the batch's new status.

    Publishes happen before the row changes, each with a deterministic Nats-Msg-Id,
    and the row changes only from this attempt's state: a crash anywhere in here is
    redone by redelivery without duplicating anything.
    """
    batch_id = inp.request.batch_id
    spared = await reuse.spread(app, inp, failures) if inp.dups else 0
    failed = [item for item in inp.all_items if item.id in failures]
    row = await app.store.get(batch_id)
    reused = (int(row["items_reused"]) if row else 0) + spared
    # Each attempt carries exactly the items still missing, so what is not failed now
    # has been embedded by this attempt or an earlier one.
    total = int(row["items_total"]) if row else len(inp.items)
    embedded = total - len(failed)
    if path is not None and len(failed) < len(inp.items):
        await app.store.record_path(batch_id, path)
    # Counted in the same guarded update that moves the row on, so that a re-run of
    # this attempt (a crash before that update) does not count the failure twice.
    counted: dict[str, Any] = ({"job_failures": (row["job_failures"] if row else 0) + 1}
                               if whole_job_failed else {})
    if failed and attempt + 1 < app.settings.max_item_attempts:
        nxt = await next_attempt(app, inp, failed, attempt + 1)
        await publish(app.js, subjects.SUBMIT, nxt, subjects.submit_id(batch_id, attempt + 1))
        failpoints.hit("finish.before_row")
        await app.store.move(
            batch_id, "pending_submission", on_attempt=attempt, from_="submitted",
            attempt=attempt + 1, items_embedded=embedded, job_name=None,
            input_file=None, last_error=_summary(failures), items_reused=reused, **counted)
        metrics.ITEMS.labels("retried").inc(len(failed))
        log.info("attempt.retrying", items=len(failed), next_attempt=attempt + 1)
        return "pending_submission"

    if failed:
        await _dead_items(app, msg, inp, failed, failures, attempt, whole_job_failed,
                          batch_id if member else None)
    dead = len(failed)
    status: Literal["succeeded", "partial", "failed"] = (
        "succeeded" if not dead else ("failed" if embedded == 0 else "partial"))
    now = utcnow()
    if status != "failed":
        done = Completed(batch_id=batch_id, attempt=attempt, job_name=job_name,
                         status=status, items_total=total, items_embedded=embedded,
                         items_failed=dead, items_reused=reused, completed_at=now)
        await publish(app.js, subjects.COMPLETED, done,
                      subjects.completed_id(batch_id, attempt))
    await app.store.move(
        batch_id, status, on_attempt=attempt, items_embedded=embedded, items_failed=dead,
        items_reused=reused, last_error=_summary(failures) if failures else None,
        completed_at=now, **counted)
    metrics.ITEMS.labels("embedded").inc(len(inp.all_items) - dead)
    if row is not None:
        metrics.BATCH_LATENCY.observe((now - row["created_at"]).total_seconds())
    log.info("batch.finished", status=status, items_embedded=embedded, items_failed=dead)
    return status


async def _dead_items(app: App, msg: Msg, inp: Input, failed: list[Item],
                      failures: dict[str, ErrorDetail], attempt: int,
                      whole_job_failed: bool, member: str | None) -> None:
    replay = await next_attempt(app, inp, failed, attempt + 1)
    items = [DeadItem(id=item.id, error=failures[item.id]) for item in failed]
    reason = "job_failed" if whole_job_failed else "item_attempts_exhausted"
    first = failures[failed[0].id]
    await letters.dead_letter(
        app, msg, stage=msg.subject.removeprefix("batch."), reason=reason, error=first,
        batch_id=inp.request.batch_id, payload=replay, items=items, attempts=attempt + 1,
        member=member)
    metrics.ITEMS.labels("dead").inc(len(failed))


def _summary(failures: dict[str, ErrorDetail]) -> str:
    if not failures:
        return ""
    first = next(iter(failures.values()))
    return f"{len(failures)} items failed; first: {first.status or first.code}: {first.message}"
