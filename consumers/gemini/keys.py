"""The API key: read from GEMINI_API_KEY or GEMINI_API_KEY_FILE, never shown."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from consumers.errors import AuthError


def fingerprint(key: str) -> str:
    """First 12 hex characters of sha256 of the key (CONTRACT §3)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class KeySource:
    """The current key; a key file is re-read when its mtime, size or inode changes.

    Kubernetes updates a mounted Secret by swapping a symlink, so the file is stat'ed
    through the link on every read (at most once per `recheck` seconds).
    """

    def __init__(self, key: str | None = None, path: str | None = None, recheck: float = 1.0):
        self._path = Path(path) if path else None
        self._key = key.strip() if key else None
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._recheck = recheck

    def current(self) -> str:
        """The key now; AuthError when there is none."""
        if self._path is not None:
            now = time.monotonic()
            if now - self._checked >= self._recheck:
                self._checked = now
                self._reload()
        if not self._key:
            raise AuthError("no API key configured", code=403, status="PERMISSION_DENIED")
        return self._key

    def _reload(self) -> None:
        assert self._path is not None
        try:
            st = os.stat(self._path)
        except OSError:
            return  # a Secret being swapped: keep the key we had
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            text = self._path.read_text().strip()
            if text:
                self._key, self._stamp = text, stamp

    def refresh(self) -> None:
        """Re-read the file at once (a KEY_HEALTH fingerprint we do not have was seen)."""
        self._checked = 0.0
        self._stamp = None

    @property
    def fingerprint(self) -> str:
        try:
            return fingerprint(self.current())
        except AuthError:
            return "none"

    def __repr__(self) -> str:
        return f"KeySource(fingerprint={self.fingerprint})"
