"""The private API that generated code (version 1 of it) imports as `_nats`.

Generated modules use only the names below. A newer runtime keeps this module working unchanged so
that code generated earlier still runs; a generator needing other names gets a new `_api_v2` module.
"""

from __future__ import annotations

from collections.abc import AsyncIterable as AsyncIterable
from collections.abc import AsyncIterator as AsyncIterator
from collections.abc import Iterable as Iterable
from collections.abc import Mapping as Mapping

from .client import BidiStream as BidiStream
from .client import BidiStreamCall as BidiStreamCall
from .client import ClientBase as ClientBase
from .client import ClientStream as ClientStream
from .client import DownloadCall as DownloadCall
from .client import DownloadStream as DownloadStream
from .client import ServerStream as ServerStream
from .client import ServerStreamCall as ServerStreamCall
from .client import UploadStream as UploadStream
from .errors import ErrorCode as ErrorCode
from .responders import RequestStream as RequestStream
from .responders import UploadRequests as UploadRequests
from .service_base import ServiceBase as ServiceBase
from .spec import Cardinality as Cardinality
from .spec import ChunkSpec as ChunkSpec
from .spec import MethodSpec as MethodSpec
from .spec import ServiceSpec as ServiceSpec
from .wire import *  # noqa: F403 - the generated codecs' functions: exactly wire.__all__

API_VERSION = 1
