"""Creating a Batch API job once (CONTRACT §11): a creation is not idempotent, so a try
whose answer was lost is looked up by display_name before another is made."""

from __future__ import annotations

import structlog

from consumers.app import App
from consumers.batch.inputs import INLINE_MAX_BYTES, Input
from consumers.batch.sweep import forget_file
from consumers.errors import AuthError, PermanentError, RetryableError
from consumers.gemini.jobs import Job

log = structlog.get_logger("batchyard.submit")  # the submit role and its sealer call it


async def create_job(app: App, inp: Input, name: str, *, adopt: bool,
                     ) -> tuple[Job, str | None]:
    """Create a job named `name` for `inp`'s items, or adopt the one an earlier try
    created (`adopt`: its answer may have been lost): the job and its input file, if
    one was uploaded."""
    if adopt:
        found = await app.gemini.find_job(name)
        if found is not None:
            log.info("job.adopted", job_name=found.name)
            return found, None
    # The bound spares encoding a file the usual small batch will not need. Past
    # BATCHYARD_INLINE_MAX_ITEMS requests a job goes by file: the inlined answer of a
    # large job is megabytes in one response (its results are matched by key either way).
    few = len(inp.items) <= app.settings.inline_max_items
    inline = few and inp.max_jsonl_bytes() <= INLINE_MAX_BYTES
    if inline or (few and len(data := inp.jsonl()) <= INLINE_MAX_BYTES):
        job = await app.gemini.create_job(
            inp.model, name, texts=[i.text for i in inp.items],
            keys=[i.id for i in inp.items], config=inp.embed_config())
        return job, None
    file_name = await app.gemini.upload_jsonl(data if few else inp.jsonl(), name)
    try:
        job = await app.gemini.create_job(inp.model, name, file_name=file_name)
    except RetryableError as exc:
        if exc.quota:  # answered: no job reads the file
            await forget_file(app, file_name)
        raise  # else a job may read it: the sweep deletes it once that job is over
    except (PermanentError, AuthError):
        await forget_file(app, file_name)
        raise
    return job, file_name
