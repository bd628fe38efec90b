"""The client helpers of persisted methods: responses the service stored, read back without calling it.

Generated clients call these once per helper (`get_<method>_cached`, `watch_<method>_cached`,
`get_<method>_history`, `purge_<method>_cached` for `(natsmicro.kv_store)`; `get_<method>_stored`,
`delete_<method>_stored` for `(natsmicro.object_store)`), keyed by the method's template over the
request, as the server keys them. Everything they raise is an RpcError.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, AsyncGenerator, Awaitable, Callable, Generator, Generic, TypeVar

import betterproto2
import nats.js.errors as js_errors
from nats.js import api
from nats.js.kv import KeyValue

from ..core.errors import ErrorCode, RpcError
from ..features.chunks import BlobReader, BlobReceiving
from ..features.keys import render_key
from ..features.stores import MAX_OBJECT_RESPONSE, KvBucket, ObjectBucket, store_error
from ..schema.spec import MethodSpec
from .base import ClientBase
from .pending import Pending

Req = TypeVar("Req", bound=betterproto2.Message)
Resp = TypeVar("Resp", bound=betterproto2.Message)
T = TypeVar("T")


@dataclass(frozen=True)
class KvEntry(Generic[Resp]):
    """One revision of a stored response: its value, or None for a delete or purge (`operation`)."""

    key: str
    revision: int
    value: Resp | None
    operation: str  # "PUT", "DEL" or "PURGE"
    created: datetime | None = None


class _Helper(Generic[Req, Resp]):
    """What every helper call starts from: its method, store spec, key and error wrapping."""

    def __init__(self, client: ClientBase, method: MethodSpec[Req, Resp], request: Req, kind: str) -> None:
        self.client = client
        self.method = method
        self.name = client._nats_service.full_name(method)
        spec = method.kv_store if kind == "kv" else method.object_store
        if spec is None:
            raise TypeError(f"{self.name} has no (natsmicro.{kind}_store) option")
        self.key = render_key(spec.key, request, self.name)
        self.codec = client._nats_service.codec

    async def run(self, what: str, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except Exception as error:
            raise store_error(error, f"{what} {self.key!r}", self.name) from None

    def decode(self, data: bytes | None) -> Resp:
        """A stored body; one that does not decode is DATA_LOSS (the store, not the caller, is wrong)."""
        try:
            return self.codec.decode(self.method.response, data or b"", self.name)
        except RpcError as bad:
            raise RpcError(ErrorCode.DATA_LOSS, f"the value stored under {self.key!r}: {bad.message}", method=self.name) from None

    async def kv(self) -> KvBucket | None:
        spec = self.method.kv_store
        assert spec is not None
        return await self.client._nats_stores(self.method).kv(spec, create=False)

    async def objects(self) -> ObjectBucket | None:
        spec = self.method.object_store
        assert spec is not None
        return await self.client._nats_stores(self.method).objects(spec, create=False)


def _pending(helper: Callable[[], _Helper[Any, Any]], what: str, work: Callable[[_Helper[Any, Any]], Awaitable[T]]) -> Pending[T]:
    async def run() -> T:
        call = helper()  # a request that gives no valid key raises INVALID_ARGUMENT here
        return await call.run(what, lambda: work(call))

    return Pending(run, what)


def kv_get(client: ClientBase, method: MethodSpec[Req, Resp], request: Req) -> Pending[Resp | None]:
    """The response stored for `request`, or None (never stored, deleted, purged, expired, no bucket)."""

    async def work(call: _Helper[Any, Any]) -> Resp | None:
        bucket = await call.kv()
        entry = None if bucket is None else await bucket.get(call.key)
        return None if entry is None else call.decode(entry.data)

    return _pending(lambda: _Helper(client, method, request, "kv"), "reading key", work)


def kv_history(client: ClientBase, method: MethodSpec[Req, Resp], request: Req) -> Pending[list[KvEntry[Resp]]]:
    """Every revision the bucket keeps for `request`'s key, oldest first."""

    async def work(call: _Helper[Any, Any]) -> list[KvEntry[Resp]]:
        bucket = await call.kv()
        if bucket is None:
            return []
        try:
            entries = await _handle(bucket).history(call.key)
        except js_errors.NoKeysError:
            return []
        return [_entry(call, entry) for entry in entries]

    return _pending(lambda: _Helper(client, method, request, "kv"), "reading the history of key", work)


def kv_purge(client: ClientBase, method: MethodSpec[Req, Resp], request: Req) -> Pending[None]:
    """Remove the response stored for `request` and its history (with `purge_ttl`, the marker expires)."""

    async def work(call: _Helper[Any, Any]) -> None:
        bucket = await call.kv()
        spec = call.method.kv_store
        if bucket is not None and spec is not None:
            await bucket.purge(call.key, spec.purge_ttl)

    return _pending(lambda: _Helper(client, method, request, "kv"), "purging key", work)


def _handle(bucket: KvBucket) -> KeyValue:
    """nats-py's KeyValue for the same bucket (its watchers read the same layout)."""
    return KeyValue(name=bucket.bucket, stream=bucket.stream, pre=bucket.prefix, js=bucket.js, direct=bucket.direct)


def _entry(call: _Helper[Any, Resp], entry: KeyValue.Entry) -> KvEntry[Resp]:
    operation = entry.operation or "PUT"
    value = call.decode(entry.value) if operation == "PUT" else None
    created = entry.created if isinstance(entry.created, datetime) else None  # nats-py fills in a datetime
    return KvEntry(key=entry.key, revision=entry.revision or 0, value=value, operation=operation, created=created)


class KvWatch(Generic[Resp]):
    """The stored response for one request as it changes: `async with client.watch_x_cached(req) as
    updates: async for entry in updates: ...` — first the current value (if any), then every change.
    Leaving the block stops the watch."""

    def __init__(self, helper: Callable[[], _Helper[Any, Resp]]) -> None:
        self._helper = helper
        self._call: _Helper[Any, Resp] | None = None
        self._watcher: Any = None

    def __await__(self) -> Generator[Any, None, KvWatch[Resp]]:
        return self._open().__await__()

    async def _open(self) -> KvWatch[Resp]:
        call = self._call = self._helper()

        async def start() -> Any:
            bucket = await call.kv()
            if bucket is None:
                raise RpcError(ErrorCode.NOT_FOUND, f"the KV bucket of {call.name} does not exist (nothing stored yet)", method=call.name)
            return await _handle(bucket).watch(call.key)

        self._watcher = await call.run("watching key", start)
        return self

    async def __aenter__(self) -> KvWatch[Resp]:
        return await self._open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:
                await watcher.stop()
            except Exception:  # noqa: BLE001 - the connection may be gone; nothing is held then
                pass

    def __aiter__(self) -> KvWatch[Resp]:
        return self

    async def __anext__(self) -> KvEntry[Resp]:
        watcher, call = self._watcher, self._call
        if watcher is None or call is None:
            raise TypeError("open the watch first: `async with client.watch_..._cached(request) as updates:`")
        while True:
            entry = await watcher.__anext__()
            if entry is not None:  # None: nats-py's "caught up" marker
                return _entry(call, entry)


def kv_watch(client: ClientBase, method: MethodSpec[Req, Resp], request: Req) -> KvWatch[Resp]:
    return KvWatch(lambda: _Helper(client, method, request, "kv"))


class StoredBlob(BlobReceiving):
    """A blob in the object store, read chunk by chunk as it is consumed (never whole unless asked):
    `iter_bytes()`, `recv_to_file(path)`, `recv_to_writer(w)`, `recv_bytes()`; `size` in bytes."""

    def __init__(self, bucket: ObjectBucket, info: api.ObjectInfo, name: str) -> None:
        self._blob = _ObjectPieces(bucket, info, name)
        self.info = info
        self.size = info.size or 0


class _ObjectPieces(BlobReader):
    def __init__(self, bucket: ObjectBucket, info: api.ObjectInfo, name: str) -> None:
        self.bucket = bucket
        self.info = info
        self.name = name

    async def _pieces(self) -> AsyncGenerator[memoryview, None]:
        try:
            async for data in self.bucket.read(self.info, self.name):
                yield memoryview(data)
        except RpcError:
            raise
        except Exception as error:
            raise store_error(error, f"reading object {self.info.name!r}", self.name) from None

    def _total(self) -> int | None:
        return self.info.size


def _open_object(call: _Helper[Any, Any]) -> Awaitable[tuple[ObjectBucket, api.ObjectInfo] | None]:
    async def find() -> tuple[ObjectBucket, api.ObjectInfo] | None:
        bucket = await call.objects()
        info = None if bucket is None else await bucket.info(call.key)
        return None if bucket is None or info is None else (bucket, info)

    return find()


def object_get(client: ClientBase, method: MethodSpec[Req, Resp], request: Req) -> Pending[Resp | None]:
    """The response stored as an object for `request`, or None."""

    async def work(call: _Helper[Any, Any]) -> Resp | None:
        found = await _open_object(call)
        if found is None:
            return None
        bucket, info = found
        if (info.size or 0) > MAX_OBJECT_RESPONSE:
            raise RpcError(
                ErrorCode.RESOURCE_EXHAUSTED, f"object {call.key!r} holds {info.size} bytes, more than a response may", method=call.name
            )
        body = b"".join([piece async for piece in bucket.read(info, call.name)])
        response: Resp = call.decode(body)
        return response

    return _pending(lambda: _Helper(client, method, request, "object"), "reading object", work)


def object_open(client: ClientBase, method: MethodSpec[Req, Resp], request: Req) -> Pending[StoredBlob | None]:
    """The blob stored for `request` (a chunked download's), to be read as it streams; None when absent."""

    async def work(call: _Helper[Any, Any]) -> StoredBlob | None:
        found = await _open_object(call)
        return None if found is None else StoredBlob(found[0], found[1], call.name)

    return _pending(lambda: _Helper(client, method, request, "object"), "opening object", work)


def object_delete(client: ClientBase, method: MethodSpec[Req, Resp], request: Req) -> Pending[bool]:
    """Delete the object stored for `request`; False when there was none."""

    async def work(call: _Helper[Any, Any]) -> bool:
        bucket = await call.objects()
        return False if bucket is None else await bucket.delete(call.key)

    return _pending(lambda: _Helper(client, method, request, "object"), "deleting object", work)

