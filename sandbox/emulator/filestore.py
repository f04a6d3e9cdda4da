"""Stored files and resumable upload sessions."""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .wire import timestamp

MAX_FILE_BYTES = 2 * 1024**3
FILE_LIFETIME_S = 48 * 3600
_ID_CHARS = string.ascii_lowercase + string.digits
_VALID_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def random_id(length: int) -> str:
    """`length` random lowercase alphanumerics."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(length))


@dataclass
class StoredFile:
    """A file's metadata and bytes; times are emulator-clock seconds."""

    id: str
    seq: int
    display_name: str | None
    mime_type: str
    data: bytes
    source: str
    created: float
    key: str
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        # The API writes the hex digest, base64-encoded.
        self.sha256 = base64.b64encode(hashlib.sha256(self.data).hexdigest().encode()).decode()

    @property
    def name(self) -> str:
        """`files/<id>`."""
        return f"files/{self.id}"

    def to_json(self, origin: str, version: str, wall: float) -> dict[str, Any]:
        """The File resource; `origin` is scheme, host and path prefix of the caller."""
        created = timestamp(wall)
        body: dict[str, Any] = {"name": self.name}
        if self.display_name:
            body["displayName"] = self.display_name
        body |= {
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": created,
            "updateTime": created,
            "expirationTime": timestamp(wall + FILE_LIFETIME_S),
            "sha256Hash": self.sha256,
            "uri": f"{origin}/{version}/{self.name}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.source == "GENERATED":
            body["downloadUri"] = f"{origin}/download/{version}/{self.name}:download?alt=media"
        return body


@dataclass
class UploadSession:
    """A resumable upload in progress."""

    id: str
    file_id: str
    display_name: str | None
    mime_type: str
    total: int
    key: str
    received: bytearray = field(default_factory=bytearray)


class FileStore:
    """Every file of the project (all keys share them) and open upload sessions."""

    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}
        self.sessions: dict[str, UploadSession] = {}
        self._seq = itertools.count(1)

    def _new_id(self) -> str:
        while (file_id := random_id(12)) in self.files:
            pass
        return file_id

    def start_upload(
        self, *, name: str | None, display_name: str | None, mime_type: str, total: int, key: str
    ) -> UploadSession:
        """Open an upload session for a file of `total` bytes."""
        if total > MAX_FILE_BYTES:
            raise errors.invalid_argument(
                f"File size {total} bytes exceeds the maximum of {MAX_FILE_BYTES} bytes."
            )
        if name is None:
            file_id = self._new_id()
        else:
            file_id = name.removeprefix("files/")
            if not _VALID_ID.match(file_id):
                raise errors.invalid_argument(
                    f"* CreateFileRequest.file.name: Invalid file name {name!r}: a file ID"
                    " must be 1-40 characters of lowercase letters, digits or dashes.\n"
                )
            if file_id in self.files:
                raise errors.ApiError(409, "ALREADY_EXISTS", f"File {name} already exists.")
        session = UploadSession(random_id(40), file_id, display_name, mime_type, total, key)
        self.sessions[session.id] = session
        return session

    def append(
        self, session_id: str, offset: int, chunk: bytes, *, finalize: bool, now: float
    ) -> StoredFile | None:
        """Add a chunk at `offset`; on `finalize`, store and return the file."""
        session = self.sessions.get(session_id)
        if session is None:
            raise errors.not_found("Upload session not found or expired.")
        if offset != len(session.received):
            raise errors.invalid_argument(
                f"Invalid upload offset {offset}; {len(session.received)} bytes were received."
            )
        if offset + len(chunk) > session.total:
            del self.sessions[session_id]
            raise errors.invalid_argument(
                f"Upload exceeds the declared size of {session.total} bytes."
            )
        session.received += chunk
        if not finalize:
            return None
        del self.sessions[session_id]
        if len(session.received) != session.total:
            raise errors.invalid_argument(
                f"Upload finalized with {len(session.received)} of {session.total} bytes."
            )
        if session.file_id in self.files:
            raise errors.ApiError(
                409, "ALREADY_EXISTS", f"File files/{session.file_id} already exists."
            )
        stored = StoredFile(
            session.file_id, next(self._seq), session.display_name, session.mime_type,
            bytes(session.received), "UPLOADED", now, session.key,
        )
        self.files[stored.id] = stored
        return stored

    def add_generated(self, file_id: str, data: bytes, *, now: float, key: str) -> StoredFile:
        """Store a file the service produced (a batch's output)."""
        stored = StoredFile(
            file_id, next(self._seq), None, "application/jsonl", data, "GENERATED", now, key
        )
        self.files[file_id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile:
        """The file, or the 403 the API gives for a missing one."""
        stored = self.files.get(file_id)
        if stored is None:
            raise errors.file_not_found(file_id)
        return stored

    def listing(self) -> list[StoredFile]:
        """All files, newest first."""
        return sorted(self.files.values(), key=lambda f: f.seq, reverse=True)
