"""One JSON document under one KV key, read with its revision and written by
compare-and-set, so concurrent pods agree on a single winner for each change."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

T = TypeVar("T")


class KvDoc(Generic[T]):
    def __init__(self, kv: KeyValue, key: str, typ: type[T]):
        self.kv = kv
        self.key = key
        self._decode = msgspec.json.Decoder(typ)

    def decode(self, data: bytes) -> T:
        return self._decode.decode(data)

    async def read(self) -> tuple[T | None, int]:
        """The current value and its revision (0 when there is none); unreadable is None."""
        try:
            entry = await self.kv.get(self.key)
        except KeyNotFoundError:
            return None, 0
        try:
            return self._decode.decode(entry.value or b""), int(entry.revision or 0)
        except msgspec.DecodeError:
            return None, int(entry.revision or 0)

    async def write(self, value: T, revision: int) -> bool:
        """Write if the revision is still `revision`; True when this write won."""
        data = msgspec.json.encode(value)
        try:
            if revision:
                await self.kv.update(self.key, data, last=revision)
            else:
                await self.kv.create(self.key, data)
        except KeyWrongLastSequenceError:
            return False
        return True
