"""A JetStream client for persisted responses: `Stores` (one connection's bucket handles), `KvBucket`
and `ObjectBucket` / `ObjectWriter`, in the layout nats.go and nats-py use, so Go and Python readers
see the same entries. The server's writes (`persistence.py`) and the client helpers (`stored.py`)
both go through it.

Layout: KV bucket `b` is the stream `KV_b` on `$KV.b.>`, a key `k` the subject `$KV.b.k`; object store
`b` is the stream `OBJ_b`, an object's chunks on `$O.b.C.<nuid>` and its description (JSON) on
`$O.b.M.<base64url(name)>`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, TypeVar, Union

import nats.errors
import nats.js.errors as js_errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.object_store import ObjectStore
from nats.nuid import NUID

from ..core.errors import ErrorCode, RpcError
from ..schema.spec import KvStoreSpec, ObjectStoreSpec, WriteMode

log = logging.getLogger("betterproto_nats.persistence")

DEFAULT_TIMEOUT = 5.0  # seconds a JetStream operation may take (nats-py's default)
OBJECT_CHUNK = 128 * 1024  # chunk size of objects written from one body (nats-py's and nats.go's default)
MAX_OBJECT_RESPONSE = 64 * 1024 * 1024  # a stored unary response read back whole is at most this big

_KV_OPERATION = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"  # nats-server 2.11+: a marker the server placed (expiry, purge)
_WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's "wrong last sequence" error codes
_STREAM_IN_USE = 10058  # "stream name already in use with a different configuration"
_DIGEST = "SHA-256="

Bytes = Union[bytes, bytearray, memoryview]
B = TypeVar("B")


class JetStreamUnavailable(RuntimeError):
    """`serve()` of a service that stores responses, on a connection without (suitable) JetStream."""


# --- JetStream errors ------------------------------------------------------------------------------


def store_error(error: BaseException, what: str, method: str | None = None) -> RpcError:
    """An exception of nats-py's JetStream API as an RpcError that says what failed and why."""
    if isinstance(error, RpcError):
        return error
    if isinstance(error, js_errors.ServiceUnavailableError):
        why = "JetStream is not available (not enabled for this server or account, or in another domain)"
        return RpcError(ErrorCode.UNAVAILABLE, f"{what}: {why}", method=method)
    if isinstance(error, js_errors.NoStreamResponseError):
        why = "no JetStream stream took the write (the bucket was deleted, or JetStream is off)"
        return RpcError(ErrorCode.UNAVAILABLE, f"{what}: {why}", method=method)
    if isinstance(error, (nats.errors.TimeoutError, asyncio.TimeoutError)):
        return RpcError(ErrorCode.UNAVAILABLE, f"{what}: JetStream did not answer in time", method=method)
    if isinstance(error, js_errors.APIError):
        return RpcError(ErrorCode.INTERNAL, f"{what}: JetStream error {error.err_code}: {error.description}", method=method)
    if isinstance(error, nats.errors.Error):
        return RpcError(ErrorCode.UNAVAILABLE, f"{what}: NATS connection: {error}", method=method)
    return RpcError(ErrorCode.INTERNAL, f"{what}: {type(error).__name__}: {error}", method=method)


def _wrong_last_sequence(error: Exception) -> bool:
    return isinstance(error, js_errors.APIError) and error.err_code in _WRONG_LAST_SEQUENCE


def is_removed(headers: Mapping[str, str] | None) -> bool:
    """A KV entry that marks its key deleted or purged (by a client, or by the server on expiry)."""
    if not headers:
        return False
    return headers.get(_KV_OPERATION) in ("DEL", "PURGE") or _MARKER_REASON in headers

# --- buckets ---------------------------------------------------------------------------------------


def _ttl_headers(ttl: float | None) -> dict[str, str]:
    """The per-message TTL header (nats-server 2.11+; whole seconds, as the server keeps them)."""
    return {api.Header.MSG_TTL: str(int(ttl))} if ttl else {}


def _user_metadata(config: api.StreamConfig) -> dict[str, str]:
    return {k: v for k, v in (config.metadata or {}).items() if not k.startswith("_nats.")}


class Stores:
    """The JetStream stores of one connection (and domain or API prefix): bucket handles, opened or
    created once and shared by every call."""

    def __init__(self, nc: NATS, domain: str | None = None, prefix: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        options: dict[str, Any] = {"timeout": timeout}
        if domain:
            options["domain"] = domain
        if prefix:
            options["prefix"] = prefix
        self.js: JetStreamContext = nc.jetstream(**options)
        self.where = f" (JetStream domain {domain!r})" if domain else f" (JetStream API prefix {prefix!r})" if prefix else ""
        self.timeout = timeout
        self._kv: dict[str, KvBucket] = {}
        self._objects: dict[str, ObjectBucket] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._warned: set[str] = set()

    async def check(self, needs_message_ttl: bool) -> None:
        """JetStream answers on this connection (and supports per-message TTLs when needed)."""
        try:
            info = await self.js.account_info()
        except Exception as error:  # noqa: BLE001 - every failure means the same here
            raise JetStreamUnavailable(
                f"{store_error(error, 'this connection' + self.where).message}. Enable JetStream (nats-server -js, "
                "or for the account), or serve(..., persist=False) to serve without storing responses"
            ) from None
        level = info.api.level if info.api is not None else None
        if needs_message_ttl and not level:
            raise JetStreamUnavailable(
                "key_ttl, purge_ttl and limit_marker_ttl need per-message TTLs (nats-server 2.11 or newer); "
                f"this server's JetStream API level is {level or 0}"
            )

    def forget(self, stream: str) -> None:
        """Open the bucket afresh next time (it vanished, or was replaced)."""
        self._kv.pop(stream, None)
        self._objects.pop(stream, None)

    async def _cached(self, cache: dict[str, B], stream: str, open_bucket: Callable[[], Awaitable[B | None]]) -> B | None:
        """A bucket handle from `cache`, opened once (concurrent first uses wait for one opening)."""
        bucket = cache.get(stream)
        if bucket is None:
            async with self._opening.setdefault(stream, asyncio.Lock()):
                bucket = cache.get(stream)
                if bucket is None:
                    bucket = await open_bucket()
                    if bucket is not None:
                        cache[stream] = bucket
        return bucket

    async def kv(self, spec: KvStoreSpec, create: bool) -> KvBucket | None:
        """The bucket of `spec`: created from the options when missing and `create`, else None."""
        stream = f"KV_{spec.bucket}"

        async def open_bucket() -> KvBucket | None:
            config = await self._open(stream, self._kv_config(spec) if create else None, f"KV bucket {spec.bucket!r}")
            if config is None:
                return None
            self._check_kv(spec, config, create)
            return KvBucket(self, spec.bucket, bool(config.allow_direct))

        return await self._cached(self._kv, stream, open_bucket)

    async def objects(self, spec: ObjectStoreSpec, create: bool) -> ObjectBucket | None:
        """The object store of `spec`: created when missing and `create`, else None."""
        stream = f"OBJ_{spec.bucket}"

        async def open_bucket() -> ObjectBucket | None:
            what = f"object store {spec.bucket!r}"
            config = await self._open(stream, self._object_config(spec) if create else None, what)
            if config is None:
                return None
            if f"$O.{spec.bucket}.M.>" not in (config.subjects or ()):
                raise RpcError(ErrorCode.INTERNAL, f"{what}: stream {stream} exists but is not an object store")
            return ObjectBucket(self, spec.bucket, bool(config.allow_direct))

        return await self._cached(self._objects, stream, open_bucket)

    async def _open(self, stream: str, create: api.StreamConfig | None, what: str) -> api.StreamConfig | None:
        """The stream's configuration; created from `create` when missing (None: report missing)."""
        try:
            try:
                return (await self.js.stream_info(stream)).config
            except js_errors.NotFoundError:
                if create is None:
                    return None
            try:
                info = await self.js.add_stream(create)
            except js_errors.APIError as raced:  # another instance created it first, differently
                if raced.err_code != _STREAM_IN_USE:
                    raise
                info = await self.js.stream_info(stream)
            else:
                log.info("created %s%s", what, self.where)
            return info.config
        except RpcError:
            raise
        except Exception as error:
            raise store_error(error, f"cannot open {what}{self.where}") from None

    def _kv_config(self, spec: KvStoreSpec) -> api.StreamConfig:
        """A KV bucket's stream as nats.go creates one, with the options' settings."""
        return api.StreamConfig(
            name=f"KV_{spec.bucket}",
            description=spec.description or None,
            subjects=[f"$KV.{spec.bucket}.>"],
            max_msgs_per_subject=spec.history,
            max_msgs=-1,
            max_bytes=-1,
            max_msg_size=-1,
            max_age=spec.ttl or 0,
            max_consumers=-1,
            discard=api.DiscardPolicy.NEW,
            duplicate_window=min(spec.ttl, 120.0) if spec.ttl else 120.0,
            allow_rollup_hdrs=True,
            deny_delete=True,
            allow_direct=True,
            storage=api.StorageType.FILE,
            num_replicas=1,
            compression=api.StoreCompression.S2 if spec.compression else None,
            metadata=dict(spec.metadata) or None,
            allow_msg_ttl=True if spec.message_ttls else None,
            subject_delete_marker_ttl=spec.limit_marker_ttl,
        )

    def _object_config(self, spec: ObjectStoreSpec) -> api.StreamConfig:
        """An object store's stream as nats.go creates one, with the options' settings."""
        return api.StreamConfig(
            name=f"OBJ_{spec.bucket}",
            description=spec.description or None,
            subjects=[f"$O.{spec.bucket}.C.>", f"$O.{spec.bucket}.M.>"],
            max_age=spec.ttl or 0,
            max_bytes=-1,
            storage=api.StorageType.FILE,
            num_replicas=1,
            discard=api.DiscardPolicy.NEW,
            allow_rollup_hdrs=True,
            allow_direct=True,
            compression=api.StoreCompression.S2 if spec.compression else None,
        )

    def _check_kv(self, spec: KvStoreSpec, config: api.StreamConfig, writer: bool) -> None:
        """An existing bucket is used as it is (never changed); one the writer (the server) cannot work
        with is an error, and a setting that differs from the options is logged once."""
        what = f"KV bucket {spec.bucket!r}"
        if (config.max_msgs_per_subject or 0) < 1 or f"$KV.{spec.bucket}.>" not in (config.subjects or ()):
            raise RpcError(ErrorCode.INTERNAL, f"{what}: stream {config.name} exists but is not a KV bucket")
        if not writer:
            return
        if spec.message_ttls and not config.allow_msg_ttl:
            raise RpcError(
                ErrorCode.INTERNAL,
                f"{what} does not allow per-message TTLs, which key_ttl, purge_ttl and limit_marker_ttl need "
                f"(nats-server 2.11+; enable allow_msg_ttl on stream {config.name}, or recreate the bucket)",
            )
        if spec.bucket in self._warned:
            return
        wanted = self._kv_config(spec)

        def setting(config: api.StreamConfig, name: str) -> object:
            value = getattr(config, name)
            return None if value in (None, 0, "", "none", api.StoreCompression.NONE) else value

        differs = [
            f"{name} {setting(config, name)!r} (options: {setting(wanted, name)!r})"
            for name in ("max_msgs_per_subject", "max_age", "description", "compression", "subject_delete_marker_ttl")
            if setting(config, name) != setting(wanted, name)
        ]
        if _user_metadata(config) != dict(spec.metadata):
            differs.append(f"metadata {_user_metadata(config)!r} (options: {dict(spec.metadata)!r})")
        if differs:
            self._warned.add(spec.bucket)
            log.warning("%s exists with other settings; it is used as it is: %s", what, "; ".join(differs))


class KvBucket:
    """One KV bucket: writes in the options' modes with their TTL, reads that see markers as absence."""

    def __init__(self, stores: Stores, bucket: str, direct: bool) -> None:
        self.stores = stores
        self.js = stores.js
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.prefix = f"$KV.{bucket}."
        self.direct = direct

    async def _publish(self, key: str, body: bytes, headers: dict[str, str]) -> int:
        try:
            ack = await self.js.publish(self.prefix + key, body, headers=headers or None, stream=self.stream)
        except js_errors.NoStreamResponseError:
            self.stores.forget(self.stream)  # deleted under us: recreated on the next write
            raise
        return ack.seq

    async def write(self, key: str, body: bytes, mode: WriteMode, ttl: float | None = None) -> int:
        """Store `body` under `key`; returns its revision. Compare-and-set creates the key or updates
        the revision it read just before; create-only fails when the key holds a value. A conflict
        raises RpcError (INTERNAL) naming it; TTL applies to every write."""
        ttl_headers = _ttl_headers(ttl)
        if mode is WriteMode.LAST_WRITE_WINS:
            return await self._publish(key, body, ttl_headers)
        last = 0
        for _ in range(3):  # create; over a delete marker; or update (CAS): bounded retries
            try:
                return await self._publish(key, body, {**ttl_headers, api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)})
            except js_errors.APIError as error:
                if not _wrong_last_sequence(error):
                    raise
            latest = await self.latest(key)
            if latest is not None and not is_removed(latest.headers) and mode is WriteMode.CREATE_ONLY:
                raise RpcError(ErrorCode.INTERNAL, f"key {key!r} already exists (create-only)")
            new_last = 0 if latest is None else latest.seq or 0
            if last and new_last != last:
                break  # changed since we read it: that is what compare-and-set refuses
            last = new_last
        raise RpcError(ErrorCode.INTERNAL, f"key {key!r} changed while it was written (compare-and-set)")

    async def latest(self, key: str) -> api.RawStreamMsg | None:
        """The key's latest entry, markers included; None when it has none."""
        try:
            return await self.js.get_msg(self.stream, subject=self.prefix + key, direct=self.direct)
        except js_errors.NotFoundError:
            return None

    async def get(self, key: str) -> api.RawStreamMsg | None:
        """The key's current value, or None when it has none (never written, deleted, purged, expired)."""
        entry = await self.latest(key)
        return None if entry is None or is_removed(entry.headers) else entry

    async def purge(self, key: str, ttl: float | None) -> None:
        """Remove every revision of `key`, leaving a purge marker (with `ttl`, it expires too)."""
        headers = {_KV_OPERATION: "PURGE", api.Header.ROLLUP: "sub", **_ttl_headers(ttl)}
        await self._publish(key, b"", headers)


class ObjectBucket:
    """One object store: objects written piece by piece and read chunk by chunk, in nats.go's layout
    (so its readers and nats-py's read ours, and ours theirs)."""

    def __init__(self, stores: Stores, bucket: str, direct: bool) -> None:
        self.stores = stores
        self.js = stores.js
        self.bucket = bucket
        self.stream = f"OBJ_{bucket}"
        self.direct = direct
        self.store = ObjectStore(name=bucket, stream=self.stream, js=self.js)

    async def info(self, name: str) -> api.ObjectInfo | None:
        """The object's description, or None when there is none (or it was deleted)."""
        try:
            return await self.store.get_info(name)
        except js_errors.NotFoundError:
            return None

    def writer(self, name: str) -> ObjectWriter:
        return ObjectWriter(self, name)

    async def put(self, name: str, data: bytes) -> None:
        """Store `data` as object `name` (replacing what was there)."""
        writer = self.writer(name)
        try:
            for start in range(0, len(data), OBJECT_CHUNK):
                await writer.write(data[start : start + OBJECT_CHUNK])
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise

    async def read(self, info: api.ObjectInfo, method: str | None = None) -> AsyncIterator[bytes]:
        """The object's bytes chunk by chunk (one get each: memory stays one chunk), checked against its
        size and digest (DATA_LOSS when they disagree). Driven by the stored chunks, not the
        description's counts, so a wrong description cannot make it loop or grow."""
        size = info.size or 0
        subject = f"$O.{self.bucket}.C.{info.nuid}"
        digest = hashlib.sha256()
        seq, got = 1, 0
        while got < size:
            try:
                msg = await self.js.get_msg(self.stream, seq=seq, subject=subject, direct=self.direct, next=True)
            except js_errors.NotFoundError:
                break  # fewer bytes than described
            data = msg.data or b""
            got += len(data)
            if got > size or not msg.seq:
                break
            digest.update(data)
            seq = msg.seq + 1
            yield data
        expected = (info.digest or "").removeprefix(_DIGEST).removeprefix(_DIGEST.lower())
        try:
            matches = digest.digest() == base64.urlsafe_b64decode(expected)
        except ValueError:
            matches = False
        if got != size or not matches:
            raise RpcError(ErrorCode.DATA_LOSS, f"object {info.name!r} in {self.bucket!r} does not match its size and digest", method=method)

    async def delete(self, name: str) -> bool:
        """Delete object `name`; False when there was none."""
        try:
            await self.store.delete(name)
        except js_errors.NotFoundError:
            return False
        return True


class ObjectWriter:
    """One object being written: chunks first (on a fresh subject), then its description, which makes
    it visible and replaces the previous object of that name; `abort` removes the chunks."""

    def __init__(self, bucket: ObjectBucket, name: str) -> None:
        self.bucket = bucket
        self.name = name
        self.nuid = NUID().next().decode()
        self.subject = f"$O.{bucket.bucket}.C.{self.nuid}"
        self.digest = hashlib.sha256()
        self.size = 0
        self.chunks = 0
        self.largest = 0

    async def write(self, piece: Bytes) -> None:
        if not piece:
            return
        await self.bucket.js.publish(self.subject, bytes(piece), stream=self.bucket.stream)
        self.digest.update(piece)
        self.size += len(piece)
        self.chunks += 1
        self.largest = max(self.largest, len(piece))

    async def commit(self) -> None:
        bucket = self.bucket
        previous = await bucket.info(self.name)
        info = api.ObjectInfo(
            name=self.name,
            bucket=bucket.bucket,
            nuid=self.nuid,
            size=self.size,
            chunks=self.chunks,
            mtime=datetime.now(timezone.utc).isoformat(),
            digest=_DIGEST + base64.urlsafe_b64encode(self.digest.digest()).decode(),
            options=api.ObjectMetaOptions(max_chunk_size=self.largest or OBJECT_CHUNK),
        )
        meta = f"$O.{bucket.bucket}.M.{base64.urlsafe_b64encode(self.name.encode()).decode()}"
        await bucket.js.publish(meta, json.dumps(info.as_dict()).encode(), headers={api.Header.ROLLUP: "sub"}, stream=bucket.stream)
        if previous is not None and previous.nuid and previous.nuid != self.nuid:
            await bucket.js.purge_stream(bucket.stream, subject=f"$O.{bucket.bucket}.C.{previous.nuid}")

    async def abort(self) -> None:
        """Remove the chunks written so far (best effort: the object never became visible)."""
        if self.chunks:
            try:
                await self.bucket.js.purge_stream(self.bucket.stream, subject=self.subject)
            except Exception as error:  # noqa: BLE001
                log.warning("could not remove the chunks of an abandoned object %r: %s", self.name, error)
