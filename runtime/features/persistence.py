"""A service's persistence of responses (`(natsmicro.kv_store)`, `(natsmicro.object_store)`): the
keys of each call (`keys.py`), a REQUIRED write before the answer and the others behind it, bounded
(`Persister`); a chunked download's blob copied to the object store as it streams (`BlobCopy`). The
stores themselves are `stores.py`'s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import betterproto2
from nats.aio.client import Client as NATS

from ..core.errors import ErrorCode, RpcError
from ..core.logs import RateLimitedLog
from ..schema.spec import KvStoreSpec, MethodSpec, ObjectStoreSpec, PersistPolicy, ServiceSpec
from ..streaming.deadline import Deadline
from .keys import render_key
from .stores import DEFAULT_TIMEOUT, Bytes, ObjectBucket, ObjectWriter, Stores, store_error

log = logging.getLogger("betterproto_nats.persistence")
_failures = RateLimitedLog(log)

MAX_PENDING_WRITES = 1000  # background (best-effort) writes a service holds at most ...
MAX_PENDING_BYTES = 64 * 1024 * 1024  # ... and bytes of their bodies and blob buffers
BLOB_BUFFER = 8 * 1024 * 1024  # a download's blob may run this far ahead of its copy to the store


class Persister:
    """A service's background writes (best effort): at most `max_pending` at a time holding at most
    `max_bytes`, one after another per key (so a key ends with the last answer's value); beyond the
    bounds a write is dropped, never queued without bound. Every failed or dropped write is logged
    (rate-limited) and counted per method, for `$SRV` STATS: the caller was answered OK, so nothing
    else would tell."""

    def __init__(self, max_pending: int = MAX_PENDING_WRITES, max_bytes: int = MAX_PENDING_BYTES) -> None:
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.tasks: set[asyncio.Task[None]] = set()
        self.held = 0  # bytes the pending writes hold
        self.dropped = 0
        self.failed = 0
        self.failures: Counter[str] = Counter()  # failed writes by method ("package.Service/Method")
        self.drops: Counter[str] = Counter()  # dropped writes by method
        self.closed = False
        self._last: dict[str, asyncio.Task[None]] = {}

    def submit(self, order: str, size: int, write: Callable[[], Awaitable[None]], what: str, method: str = "") -> bool:
        """Run `write` in the background after earlier writes of `order`; False when it was dropped."""
        if self.closed or len(self.tasks) >= self.max_pending or self.held + size > self.max_bytes:
            why = "the service is stopping" if self.closed else f"{len(self.tasks)} writes holding {self.held} bytes are pending"
            self.drop(method, what, why)
            return False
        self.held += size
        run = self._run(self._last.get(order), write, size, what, order, method)
        task = asyncio.create_task(run, name=f"betterproto-nats store {what}")
        self.tasks.add(task)
        self._last[order] = task
        task.add_done_callback(self.tasks.discard)
        return True

    def drop(self, method: str, what: str, why: str) -> None:
        """A best-effort write that will not happen (no room, stopping, a blob copy left behind)."""
        self.dropped += 1
        self.drops[method] += 1
        _failures.warning("best-effort write dropped after the call was answered: %s (%s)", what, why)

    async def _run(
        self, previous: asyncio.Task[None] | None, write: Callable[[], Awaitable[None]], size: int, what: str, order: str, method: str
    ) -> None:
        try:
            if previous is not None:
                await asyncio.wait({previous})
            await write()
        except Exception as error:  # noqa: BLE001 - best effort: logged and counted, the call was answered
            self.failed += 1
            self.failures[method] += 1
            _failures.warning(
                "best-effort write failed after the call was answered: %s: %s", what, store_error(error, "write").message
            )
        finally:
            self.held -= size
            if self._last.get(order) is asyncio.current_task():
                del self._last[order]

    async def close(self, timeout: float) -> None:
        """Take no more writes; wait up to `timeout` for those pending, cancel the rest."""
        self.closed = True
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning("%d background writes were cancelled at stop", len(pending))


class BlobCopy:
    """A chunked download's blob on its way into the object store, behind the download: pieces wait
    in a buffer of at most `limit` bytes while one background write stores them; a copy that falls
    further behind, or whose download fails, is abandoned (its chunks removed) — never the download."""

    def __init__(
        self,
        open_bucket: Callable[[], Awaitable[ObjectBucket]],
        name: str,
        what: str,
        limit: int = BLOB_BUFFER,
        left_behind: Callable[[str], None] | None = None,
    ) -> None:
        self.open_bucket = open_bucket
        self.left_behind = left_behind  # told why, when the copy is abandoned although the download went on
        self.name = name
        self.what = what
        self.limit = limit
        self.pieces: deque[bytes] = deque()
        self.buffered = 0
        self.outcome: bool | None = None  # True: the download completed; False: abandoned
        self.why = ""
        self._ready = asyncio.Event()

    def feed(self, piece: Bytes) -> None:
        """The next piece of the blob (copied: the handler may reuse its buffer)."""
        if self.outcome is not None:
            return
        if self.buffered + len(piece) > self.limit:
            self.finish(False, f"the store fell more than {self.limit} bytes behind the download")
            if self.left_behind is not None:
                self.left_behind(self.why)
            return
        self.pieces.append(bytes(piece))
        self.buffered += len(piece)
        self._ready.set()

    def finish(self, complete: bool, why: str = "the download failed") -> None:
        """The download ended: store the object (`complete`) or abandon it."""
        if self.outcome is None:
            self.outcome, self.why = complete, why
            if not complete:
                self.pieces.clear()
            self._ready.set()

    async def run(self) -> None:
        writer: ObjectWriter | None = None
        try:
            writer = (await self.open_bucket()).writer(self.name)
            while True:
                while self.pieces:
                    piece = self.pieces.popleft()
                    self.buffered -= len(piece)
                    await writer.write(piece)
                if self.outcome is False:
                    log.info("abandoned %s: %s", self.what, self.why)
                    await writer.abort()
                    return
                if self.outcome is True:
                    await writer.commit()
                    return
                self._ready.clear()
                await self._ready.wait()
        except BaseException:
            if writer is not None:
                await asyncio.shield(writer.abort())
            raise


@dataclass(frozen=True)
class StoreKeys:
    """Where one call's response goes: its KV key and object name (None: not stored there)."""

    kv: str | None = None
    obj: str | None = None


class Persistence:
    """A service's persistence: its JetStream stores, the keys of each call, the writes that hold the
    answer (REQUIRED) and those that do not (`Persister`)."""

    def __init__(
        self,
        nc: NATS,
        *,
        domain: str | None = None,
        prefix: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_pending: int = MAX_PENDING_WRITES,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self.stores = Stores(nc, domain, prefix, timeout)
        self.persister = Persister(max_pending, max_pending_bytes)

    async def check(self, spec: ServiceSpec) -> None:
        """At serve(): JetStream answers (and supports per-message TTLs when an option needs them)."""
        needs_ttl = any(m.kv_store is not None and not m.kv_store.client_only and m.kv_store.message_ttls for m in spec.methods)
        await self.stores.check(needs_ttl)

    def keys(self, method: MethodSpec[Any, Any], request: betterproto2.Message, name: str) -> StoreKeys:
        """The call's keys, before its handler runs (INVALID_ARGUMENT for a request that gives no valid key)."""
        kv, obj = method.kv_store, method.object_store
        return StoreKeys(
            kv=render_key(kv.key, request, name) if kv is not None and not kv.client_only else None,
            obj=render_key(obj.key, request, name) if obj is not None and not obj.client_only else None,
        )

    async def store(self, method: MethodSpec[Any, Any], keys: StoreKeys, body: bytes, deadline: Deadline | None, name: str) -> None:
        """Store a unary call's encoded response: a REQUIRED KV write now (INTERNAL when it fails),
        the rest in the background."""
        kv, obj = method.kv_store, method.object_store
        if kv is not None and keys.kv is not None:
            what = f"KV bucket {kv.bucket!r}, key {keys.kv!r}"
            if kv.policy is PersistPolicy.REQUIRED:
                timeout = self.stores.timeout if deadline is None else min(self.stores.timeout, deadline.remaining())
                try:
                    async with asyncio.timeout(timeout):
                        await self.write_kv(kv, keys.kv, body)
                except Exception as error:
                    failed = store_error(error, f"could not store the response ({what})")
                    raise RpcError(ErrorCode.INTERNAL, failed.message, method=name) from None
            else:
                key = keys.kv
                write = functools.partial(self.write_kv, kv, key, body)
                self.persister.submit(f"kv {kv.bucket} {key}", len(body), write, f"{name} response to {what}", name)
        if obj is not None and keys.obj is not None:
            key = keys.obj
            what = f"{name} response to object store {obj.bucket!r}, object {key!r}"
            self.persister.submit(f"obj {obj.bucket} {key}", len(body), functools.partial(self.put_object, obj, key, body), what, name)

    async def write_kv(self, spec: KvStoreSpec, key: str, body: bytes) -> None:
        bucket = await self.stores.kv(spec, create=True)
        assert bucket is not None
        await bucket.write(key, body, spec.write_mode, spec.key_ttl)

    async def put_object(self, spec: ObjectStoreSpec, key: str, body: bytes) -> None:
        bucket = await self.stores.objects(spec, create=True)
        assert bucket is not None
        await bucket.put(key, body)

    def copy_blob(self, method: MethodSpec[Any, Any], keys: StoreKeys, name: str) -> BlobCopy | None:
        """A copy of a chunked download's blob to its object store, or None (not stored, or no room)."""
        spec = method.object_store
        if spec is None or keys.obj is None:
            return None

        async def open_bucket() -> ObjectBucket:
            bucket = await self.stores.objects(spec, create=True)
            assert bucket is not None
            return bucket

        what = f"{name} blob to object store {spec.bucket!r}, object {keys.obj!r}"
        copy = BlobCopy(open_bucket, keys.obj, what, left_behind=functools.partial(self.persister.drop, name, what))
        return copy if self.persister.submit(f"obj {spec.bucket} {keys.obj}", copy.limit, copy.run, what, name) else None

    def figures(self, method: str) -> dict[str, int]:
        """What `$SRV` STATS reports of a method's best-effort writes (in its endpoint's `data`)."""
        persister = self.persister
        return {"persist_failed": persister.failures[method], "persist_dropped": persister.drops[method]}

    async def close(self, timeout: float) -> None:
        await self.persister.close(timeout)
