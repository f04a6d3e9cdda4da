"""The Gemini boundary: every call goes through here, and every error it meets is
classified once (consumers/gemini/classify.py)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from google import genai
from google.genai import _transformers as genai_names
from google.genai import types

from consumers import logs, metrics
from consumers.errors import PermanentError
from consumers.gemini.classify import classify, outcome
from consumers.gemini.jobs import Job, _job, _raw_job
from consumers.gemini.keys import KeySource
from consumers.settings import Settings

_FIELD_MASK = "X-Goog-FieldMask"
# What a poll reads of a job to learn whether it is over: all but the inlined results.
_STATE_ONLY = "name,metadata(displayName,state,batchStats,output.responsesFile)"
TRANSFER_TIMEOUT = 1800.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
               "all_proxy")


class Gemini:
    """google-genai's async client for the current key, with classified errors."""

    def __init__(self, settings: Settings, keys: KeySource,
                 may_call: Callable[[str], Awaitable[None]] | None = None):
        self._settings = settings
        self._keys = keys
        self._client: genai.Client | None = None
        self._client_key: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._may_call = may_call

    @property
    def fingerprint(self) -> str:
        return self._keys.fingerprint

    async def _aio(self, guarded: bool = True) -> Any:
        key = self._keys.current()
        if guarded and self._may_call is not None:
            await self._may_call(self._keys.fingerprint)
        if self._client is None or key != self._client_key:
            old = self._client
            logs.add_secret(key)
            self._client = genai.Client(api_key=key, http_options=types.HttpOptions(
                base_url=self._settings.gemini_base_url,
                api_version=self._settings.gemini_api_version,
                timeout=int(self._settings.gemini_timeout * 1000),
                aiohttp_client=self._session(),
            ))
            self._client_key = key
            if old is not None:
                await old.aio.aclose()
        return self._client.aio

    def _session(self) -> aiohttp.ClientSession:
        """The HTTP session every key's client shares (it holds no key; the headers of
        each request do), made as the SDK makes its own but trusting the environment only
        when a proxy is set in it: a session that trusts it reads ~/.netrc and the proxy
        variables in a worker thread before every request."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                trust_env=any(os.environ.get(name) for name in _PROXY_VARS),
                read_bufsize=2**22)
        return self._http

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aio.aclose()
            self._client = None
        if self._http is not None:
            await self._http.close()  # the SDK leaves a session it was given to its owner
            self._http = None

    @asynccontextmanager
    async def _call(self, endpoint: str) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            err = classify(exc)
            metrics.GEMINI_CALLS.labels(endpoint, outcome(err)).inc()
            raise err from None
        metrics.GEMINI_CALLS.labels(endpoint, "ok").inc()

    def _long(self) -> dict[str, Any]:
        return {"http_options": {"timeout": int(TRANSFER_TIMEOUT * 1000)}}

    async def check_key(self, model: str) -> None:
        """The cheap call the key health check makes (models.get), even with a bad key."""
        async with self._call("models.get"):
            await (await self._aio(guarded=False)).models.get(model=model)

    async def upload_jsonl(self, data: bytes, display_name: str) -> str:
        """Upload one input file; returns its name (`files/...`)."""
        async with self._call("files.upload"):
            f = await (await self._aio()).files.upload(
                file=io.BytesIO(data),
                config={"mime_type": "application/jsonl", "display_name": display_name,
                        **self._long()})
        if not f.name:
            raise PermanentError("upload returned no file name")
        return str(f.name)

    async def delete_file(self, name: str) -> None:
        async with self._call("files.delete"):
            await (await self._aio()).files.delete(name=name)

    async def create_job(self, model: str, display_name: str, *, file_name: str | None = None,
                         texts: list[str] | None = None, keys: list[str] | None = None,
                         config: dict[str, Any] | None = None) -> Job:
        """Create an embeddings batch job from an uploaded file or inlined texts, each
        inlined request carrying `metadata.key` from `keys` when given (the API reorders
        inlined responses and echoes the metadata: results are matched by it).

        Inlined texts go as the body `batches.create_embeddings` would send, through the
        SDK's own API client: its request building validates every text with pydantic,
        most of a submit pod's CPU for large batches.
        """
        async with self._call("batches.create"):
            aio = await self._aio()
            if file_name is not None:
                job = await aio.batches.create_embeddings(
                    model=model, src={"file_name": file_name},
                    config={"display_name": display_name})
                return _job(job)
            extra = {_CAMEL[k]: v for k, v in (config or {}).items() if v is not None}
            requests: list[dict[str, Any]] = [
                {"request": {"content": {"parts": [{"text": t}], "role": "user"}, **extra}}
                for t in texts or ()]
            if keys is not None:
                for request, key in zip(requests, keys, strict=True):
                    request["metadata"] = {"key": key}
            body = {"batch": {"displayName": display_name,
                              "inputConfig": {"requests": {"requests": requests}}}}
            path = f"{genai_names.t_model(aio._api_client, model)}:asyncBatchEmbedContent"
            resp = await aio._api_client.async_request("post", path, body, None)
            return _raw_job(resp.body, "")

    async def get_job(self, name: str, *, results: bool = True) -> Job:
        """The job's state and, once it has them and `results` is asked, its inlined
        results.

        The request goes through the SDK's own API client (same URL, headers, retries and
        errors as `batches.get`); its answer is read by `_raw_job` instead of the SDK's
        json.loads and pydantic models, since a finished job's inlined results are
        megabytes of JSON. The field mask (a partial response, which every Google API
        serves) leaves out the Operation's `response`, a second copy of those results,
        and without `results` the inlined results too.
        """
        async with self._call("batches.get"):
            aio = await self._aio()
            path = f"batches/{genai_names.t_batch_job_name(aio._api_client, name)}"
            mask = "name,metadata" if results else _STATE_ONLY
            options = {**self._long()["http_options"], "headers": {_FIELD_MASK: mask}}
            resp = await aio._api_client.async_request("get", path, {}, options)
            return _raw_job(resp.body, name)

    async def cancel_job(self, name: str) -> None:
        async with self._call("batches.cancel"):
            await (await self._aio()).batches.cancel(name=name)

    async def find_job(self, display_name: str, max_pages: int = 50) -> Job | None:
        """The job with this display_name, if any (crash adoption), within `max_pages`."""
        return (await self.find_jobs({display_name}, max_pages)).get(display_name)

    async def find_jobs(self, display_names: set[str], max_pages: int = 50) -> dict[str, Job]:
        """The jobs with these display_names, by name, from one walk of the listing (in
        whatever order the API lists), within `max_pages`."""
        found: dict[str, Job] = {}
        async with self._call("batches.list"):
            pager = await (await self._aio()).batches.list(config={"page_size": 100})
            async for job in _listed(pager, max_pages):
                if job.display_name in display_names and job.display_name not in found:
                    found[job.display_name] = _job(job)
                    if len(found) == len(display_names):
                        break
        return found

    async def list_files(self, max_pages: int = 100) -> list[tuple[str, str]]:
        """The project's files as (name, display_name), up to `max_pages`."""
        async with self._call("files.list"):
            pager = await (await self._aio()).files.list(config={"page_size": 100})
            return [(str(f.name), f.display_name or "")
                    async for f in _listed(pager, max_pages) if f.name]

    async def download(self, file_name: str, write: Callable[[bytes], Awaitable[None]]) -> None:
        """Stream a results file to `write`, chunk by chunk (never files.get: 42-char ids)."""

        class _Writer:
            async def write(self, chunk: bytes) -> None:
                await write(chunk)

        async with self._call("files.download"):
            await (await self._aio()).files.download(
                file=file_name, config=self._long(), destination=_Writer())

    async def embed(self, model: str, texts: list[str],
                    config: dict[str, Any] | None = None) -> list[list[float] | None]:
        """Online embeddings (batchEmbedContents) for up to 100 texts, one request each.

        The body is the one `models.embed_content` sends for a list of texts on
        gemini-embedding-001, sent through the SDK's own API client, on every model: on
        gemini-embedding-2 (multimodal to the SDK) that call joins the texts into one
        Content of several parts, which is one vector (GEMINI_API.md §9.3). The answer is
        read as that call reads it and returned as it is: the caller checks its count.
        """
        async with self._call("models.embed_content"):
            aio = await self._aio()
            name = genai_names.t_model(aio._api_client, model)
            extra = {_CAMEL[k]: v for k, v in (config or {}).items() if v is not None}
            body = {"requests": [{"model": name, "content": {"parts": [{"text": t}],
                                                             "role": "user"}, **extra}
                                 for t in texts]}
            resp = await aio._api_client.async_request(
                "post", f"{name}:batchEmbedContents", body, None)
            data = json.loads(resp.body) if resp.body else {}
            got = types.EmbedContentResponse._from_response(
                response={"embeddings": data.get("embeddings")}, kwargs={})
        return [e.values for e in (got.embeddings or [])]


async def _listed(pager: Any, max_pages: int) -> AsyncIterator[Any]:
    """Every entry of an SDK pager, page after page, up to `max_pages`."""
    for _ in range(max_pages):
        for entry in pager.page:
            yield entry
        try:
            await pager.next_page()
        except IndexError:
            return


_CAMEL = {"task_type": "taskType", "output_dimensionality": "outputDimensionality",
          "title": "title"}
