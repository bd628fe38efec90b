"""Calls to any method a `Catalog` knows, with serialized messages in and out, through the runtime's
own client path (flow control, deadlines, cancellation, refusals absorbed): each method gets a
`ClientBase` whose `ServiceSpec` passes bodies through (`PassThrough`), so no generated code is
needed and nothing of the protocol is implemented twice."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Mapping, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS

from ..calling import base
from ..calling.base import ClientBase
from ..core.errors import ErrorCode, RpcError
from ..core.headers import BLOB_SIZE, clip, parse_uint
from ..encoding.codec import Codec
from ..features.chunks import write_atomically
from ..net.transport import Transport
from ..schema.spec import Cardinality, MethodSpec, ServiceSpec
from . import jsonmap
from .catalog import Catalog, MethodInfo

Progress = Callable[[int, "int | None"], Any]  # (bytes done, total or None)
_CARDINALITY = {
    "unary": Cardinality.UNARY,
    "server": Cardinality.SERVER_STREAM,
    "client": Cardinality.CLIENT_STREAM,
    "bidi": Cardinality.BIDI,
}
# What a chunk message may need beyond its bytes (tag, length, the stream's headers).
CHUNK_OVERHEAD = 1024


class PassThrough(Codec):
    """Bodies that are bytes already: nothing to encode or decode."""

    def __init__(self) -> None:
        super().__init__(False)

    def encode(self, message: Any) -> bytes:
        return bytes(message)

    def decoder(self, message_type: Any, method: str | None = None) -> Callable[[bytes], Any]:
        return bytes

    def decode(self, message_type: Any, data: bytes, method: str | None = None) -> Any:
        return bytes(data)


PASS_THROUGH = PassThrough()


class DynamicClient:
    """Calls by `MethodInfo` (or a name the catalog resolves: the newest version's method) with
    protobuf-binary bodies in the method's own schema. Methods of `(natsmicro.service).json` services
    are sent and read as proto3 JSON on the wire, converted here."""

    def __init__(
        self,
        nc: NATS | Transport,
        catalog: Catalog,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.nc = nc
        self.catalog = catalog
        self.headers = dict(headers or {})
        self.timeout = timeout
        # By everything a method's client is made of: two versions of a method may differ in any of it.
        self._clients: dict[tuple[Any, ...], tuple[ClientBase, MethodSpec[Any, Any]]] = {}

    def resolve(self, method: MethodInfo | str) -> MethodInfo:
        return self.catalog.method(method) if isinstance(method, str) else method

    def _client(self, method: MethodInfo, shape: str) -> tuple[ClientBase, MethodSpec[Any, Any]]:
        if method.shape != shape:
            raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{method.full_name} is a {method.shape} method, not {shape}", method=method.full_name)
        endpoint_options = method.options.get("endpoint", {})
        queue_group_disabled = bool(endpoint_options.get("queue_group_disabled"))
        max_inflight = int(method.options.get("stream", {}).get("max_inflight") or 0)
        key = (method.full_name, method.subject, method.shape, method.timeout, queue_group_disabled, max_inflight)
        found = self._clients.get(key)
        if found is None:
            prefix, _, endpoint = method.subject.rpartition(".")
            spec: MethodSpec[Any, Any] = MethodSpec(
                name=method.name,
                py_name=endpoint,
                endpoint=endpoint,
                cardinality=_CARDINALITY[method.shape],
                request=cast(Any, bytes),
                response=cast(Any, bytes),
                timeout=method.timeout,
                queue_group_disabled=queue_group_disabled,
                max_inflight=max_inflight,
            )
            service = ServiceSpec(
                proto_name=method.service,
                name=method.service.rpartition(".")[2],
                subject_prefix=prefix,
                methods=(spec,),
                body_codec=PASS_THROUGH,
            )
            client_class = type("DynamicNatsClient", (ClientBase,), {"_nats_service": service})
            found = self._clients[key] = (client_class(self.nc, timeout=self.timeout), spec)
        return found

    def _headers(self, headers: Mapping[str, str] | None) -> dict[str, str] | None:
        merged = {**self.headers, **(headers or {})}
        return merged or None

    def _out(self, method: MethodInfo, data: bytes) -> bytes:
        """A request body as the wire wants it."""
        if not method.json:
            return data
        return jsonmap.dumps(jsonmap.decode(method.input, data)).encode()

    def _in(self, method: MethodInfo, body: bytes) -> bytes:
        """A response body as protobuf binary."""
        if not method.json:
            return body
        return jsonmap.encode(method.output, jsonmap.loads(body) if body else {})

    async def _outs(self, method: MethodInfo, requests: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for request in requests:
            yield self._out(method, request)

    # --- The four shapes ------------------------------------------------------------------------

    async def unary(
        self,
        method: MethodInfo | str,
        request: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> bytes:
        info = self.resolve(method)
        client, spec = self._client(info, "unary")
        pending = base.unary(
            client, spec, cast(Any, self._out(info, request)),
            timeout=timeout, headers=self._headers(headers), response_headers=response_headers,
        )  # fmt: skip
        return self._in(info, cast(bytes, await pending))

    async def server_stream(
        self,
        method: MethodInfo | str,
        request: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The responses as they arrive; `response_headers` gets the first message's headers."""
        info = self.resolve(method)
        client, spec = self._client(info, "server")
        call = base.server_stream(client, spec, cast(Any, self._out(info, request)), timeout=timeout, headers=self._headers(headers))
        async with call as stream:
            first = True
            async for body in stream:
                if first and response_headers is not None:
                    response_headers.update(stream.headers)
                first = False
                yield self._in(info, cast(bytes, body))

    async def client_stream(
        self,
        method: MethodInfo | str,
        requests: AsyncIterable[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> bytes:
        info = self.resolve(method)
        client, spec = self._client(info, "client")
        async with base.client_stream(client, spec, None, timeout=timeout, headers=self._headers(headers)) as stream:
            async for request in self._outs(info, requests):
                await stream.send(request)
            response = await stream.close_and_recv()
            if response_headers is not None:
                response_headers.update(stream.headers)
        return self._in(info, cast(bytes, response))

    async def bidi(
        self,
        method: MethodInfo | str,
        requests: AsyncIterable[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Requests sent as `requests` gives them, responses yielded as they arrive."""
        info = self.resolve(method)
        client, spec = self._client(info, "bidi")
        call = base.bidi(client, spec, cast(Any, self._outs(info, requests)), timeout=timeout, headers=self._headers(headers))
        answers = cast(AsyncGenerator[Any, None], call.__aiter__())  # (an async generator: it has aclose)
        try:
            async for body in answers:
                yield self._in(info, cast(bytes, body))
        finally:  # closed now, not when the garbage collector finalizes it: the call lets go of its stream
            await answers.aclose()

    # --- Chunked methods ((natsmicro.chunked_io)) -------------------------------------------------

    def upload_chunk_size(self, method: MethodInfo, requested: int = 0) -> int:
        """Bytes of one chunk of an upload over this client's connection (`upload_chunk_size`)."""
        return upload_chunk_size(method, getattr(self.nc, "max_payload", 0), requested)

    async def download(
        self,
        method: MethodInfo | str,
        request: bytes,
        path: str | os.PathLike[str],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> int:
        """A chunked download into a file (written atomically); the bytes written. `progress` gets
        the bytes so far and the total the service announced (`Nats-Blob-Size`), if any."""
        info = self.resolve(method)
        take = chunk_reader(info)
        first_headers: dict[str, str] = {}

        async def pieces() -> AsyncIterator[memoryview]:
            done = 0
            async for body in self.server_stream(info, request, headers=headers, timeout=timeout, response_headers=first_headers):
                piece = take(body)
                done += len(piece)
                if progress is not None:
                    progress(done, parse_uint(first_headers.get(BLOB_SIZE)))
                yield memoryview(piece)

        return await write_atomically(path, pieces())

    async def upload(
        self,
        method: MethodInfo | str,
        path: str | os.PathLike[str],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        chunk_size: int = 0,
        progress: Progress | None = None,
    ) -> bytes:
        """A chunked upload of a file; the response. Chunks of the method's size unless `chunk_size`,
        within the connection's max_payload."""
        info = self.resolve(method)
        make = chunk_writer(info)
        size = self.upload_chunk_size(info, chunk_size)
        total = Path(path).stat().st_size

        async def chunks() -> AsyncIterator[bytes]:
            done = 0
            with open(path, "rb") as source:
                while piece := await asyncio.to_thread(source.read, size):
                    done += len(piece)
                    yield make(piece)
                    if progress is not None:
                        progress(done, total)

        return await self.client_stream(info, chunks(), headers=headers, timeout=timeout)


def upload_chunk_size(method: MethodInfo, max_payload: int, requested: int = 0) -> int:
    """Bytes of one chunk of an upload: `requested`, else the method's size, within what one message
    carries on a connection whose server allows `max_payload` bytes (0: NATS's default, 1 MiB), with
    room for the message's framing and headers; a JSON service's chunk goes out as base64 (4 bytes
    for 3)."""
    room = (max_payload if max_payload > 0 else 1024 * 1024) - CHUNK_OVERHEAD
    if method.json:
        room = room * 3 // 4
    return max(1, min(requested or method.chunk_size, room))


def _chunk_field(method: MethodInfo, descriptor: Any) -> FieldDescriptor:
    field = descriptor.fields_by_name.get(method.chunk_field)
    if field is None or field.type != FieldDescriptor.TYPE_BYTES:
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{method.full_name}: {descriptor.full_name} has no bytes field {method.chunk_field!r}")
    return cast(FieldDescriptor, field)


def chunk_reader(method: MethodInfo) -> Callable[[bytes], bytes]:
    """A chunked download's message body -> its bytes; DATA_LOSS when the service sent one that does
    not decode."""
    field = _chunk_field(method, method.output)
    message_class = jsonmap.message_class(method.output)

    def take(body: bytes) -> bytes:
        try:
            return bytes(getattr(message_class.FromString(body), field.name))
        except (DecodeError, ValueError) as error:
            raise RpcError(ErrorCode.DATA_LOSS, f"a chunk of {method.full_name} does not decode: {clip(str(error), 200)}") from None

    return take


def chunk_writer(method: MethodInfo) -> Callable[[bytes], bytes]:
    """Bytes -> a chunked upload's message body."""
    field = _chunk_field(method, method.input)
    message_class = jsonmap.message_class(method.input)

    def make(data: bytes) -> bytes:
        body: bytes = message_class(**{field.name: data}).SerializeToString()
        return body

    return make
