"""The private API that generated code (version 1 of it) imports as `_nats`.

Generated modules use only the names below. A newer runtime keeps this module working unchanged so
that code generated earlier still runs; a generator needing other names gets a new `_api_v2` module.
"""

from __future__ import annotations

from typing import Any

from collections.abc import AsyncIterable as AsyncIterable
from collections.abc import AsyncIterator as AsyncIterator
from collections.abc import Iterable as Iterable
from collections.abc import Mapping as Mapping

from .calling.base import ClientBase as ClientBase
from .calling.views import BidiStream as BidiStream
from .calling.pending import BidiStreamCall as BidiStreamCall
from .calling.views import ClientStream as ClientStream
from .calling.pending import DownloadCall as DownloadCall
from .calling.views import DownloadStream as DownloadStream
from .calling.views import ServerStream as ServerStream
from .calling.pending import ServerStreamCall as ServerStreamCall
from .calling.views import UploadStream as UploadStream
from .core.errors import ErrorCode as ErrorCode
from .encoding.protobuf import *  # noqa: F403 - the generated codecs' functions: exactly protobuf.__all__
from .encoding.protobuf import unset
from .schema.service_base import ServiceBase as ServiceBase
from .schema.spec import Cardinality as Cardinality
from .schema.spec import ChunkSpec as ChunkSpec
from .schema.spec import MethodSpec as MethodSpec
from .schema.spec import ServiceSpec as ServiceSpec
from .serving.request_streams import RequestStream as RequestStream
from .serving.request_streams import UploadRequests as UploadRequests

API_VERSION = 1


def __getattr__(name: str) -> Any:
    """`UNSET`, betterproto 2.0.0b7's PLACEHOLDER, for code generated for those messages: looked up
    when asked for, as the runtime does not import betterproto 2.0.0b7."""
    if name == "UNSET":
        return unset()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
